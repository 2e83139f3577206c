"""Benchmark monitord's drift detectors against river: throughput and detection quality.

Issue 3 asks for two things measured in one run, next to river's counterparts:

1. updates per second for every detector type (windows 500, 2,000 and 8,000 where the
   detector has a window), with the IKS targets: at least 20x river's rate at window 500,
   and a cost per update that grows at most 1.5x from window 500 to 8,000;
2. detection quality over many seeds (median delay, false alarms per 1,000 samples,
   missed detections) on a 0.5 sigma mean shift, a variance change and a Bernoulli error
   rate change, plus long clean streams for the false-alarm targets.

Run from the repository root::

    .venv/bin/python benchmarks/detectors.py                  # full run (a few minutes)
    .venv/bin/python benchmarks/detectors.py --quick          # smoke run (about a minute)
    .venv/bin/python benchmarks/detectors.py --output out.md  # also write the tables
    .venv/bin/python benchmarks/detectors.py --results benchmarks/RESULTS.md
                                                              # replace its "## Drift detectors" section
    .venv/bin/python benchmarks/detectors.py --speed          # issue 18's speed table alone (minutes)
    .venv/bin/python benchmarks/detectors.py --speed --results benchmarks/RESULTS.md
                                                              # replace its "## Detector speed" section

Every measurement runs in a forked child with a time limit, so that a detector that
raises, hangs or crawls shows up as a cell in the tables instead of stopping the run.
Detector classes are imported (and numba code compiled) in the parent first, so children
inherit compiled code and timings exclude compilation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import math
import multiprocessing
import os
import platform
import sys
import time
import traceback
import warnings
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import cpu_model  # noqa: E402

#: Detector types of monitord-drift, in table order.
OUR_TYPES = ("pht", "iks", "nm_ddm", "ddm", "eddm", "hddm_a", "hddm_w")
#: Types whose cost depends on a window: benchmarked at every window of the plan.
WINDOWED = ("iks", "nm_ddm")
#: Types that watch an error stream (0/1 correctness): fed Bernoulli data.
ERROR_STREAM = ("ddm", "eddm", "hddm_a", "hddm_w")
#: river's counterpart of each type (None: river has none).
RIVER_NAMES = {
    "pht": "river.drift.PageHinkley",
    "iks": "river.stats.KolmogorovSmirnov",
    "nm_ddm": None,
    "ddm": "river.drift.binary.DDM",
    "eddm": "river.drift.binary.EDDM",
    "hddm_a": "river.drift.binary.HDDMA",
    "hddm_w": "river.drift.binary.HDDMW",
}
#: IKS settings of the issue's quality targets.
IKS_TARGET_PARAMS = {"window": 500, "reference_size": 500, "alpha": 0.001}
#: Micro-batch size of the daemon-like throughput and quality runs.
BATCH = 256


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; ``--quick`` shrinks them so a smoke run takes about a minute."""

    windows: tuple[int, ...] = (500, 2_000, 8_000)
    seconds: float = 1.5  # timed seconds per throughput measurement
    repeats: int = 3  # best of this many measurements (the machine may be shared)
    seeds: int = 20
    pre: int = 5_000  # clean samples before the change
    post: int = 5_000  # changed samples after it
    reference_size: int = 500  # fixed clean reference for detectors that take one
    clean_iks: int = 100_000  # clean samples per stream for the IKS/PHT false-alarm run
    clean_streams: int = 20
    nm_ddm_setup_windows: tuple[int, ...] = (100, 500)
    river_ph_clean: int = 50_000  # the river PageHinkley false-alarm claim
    throughput_timeout: float = 90.0
    quality_timeout: float = 300.0


QUICK = Plan(
    windows=(500, 2_000),
    seconds=0.2,
    repeats=1,
    seeds=3,
    pre=2_000,
    post=2_000,
    clean_iks=20_000,
    clean_streams=2,
    nm_ddm_setup_windows=(100,),
    river_ph_clean=50_000,
    throughput_timeout=60.0,
    quality_timeout=120.0,
)


# -- running a measurement in isolation ----------------------------------------------------


@dataclass
class Outcome:
    """What an isolated call gave: a value, or why there is none (error, timeout, crash)."""

    value: Any = None
    problem: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem is None


def _child(send: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        send.send(("ok", fn(*args)))
    except BaseException as error:  # noqa: BLE001 - reported as a table cell
        where = traceback.extract_tb(error.__traceback__)[-1]
        send.send(("error", f"{type(error).__name__}: {error} ({Path(where.filename).name}:{where.lineno})"))
    finally:
        send.close()


def isolated(fn: Callable[..., Any], *args: Any, timeout: float) -> Outcome:
    """Run ``fn(*args)`` in a forked child, killed after ``timeout`` seconds.

    Why a child: the detectors are young code; one that loops forever or crashes the
    interpreter must cost one cell of the tables, not the run.
    """
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    started = time.perf_counter()
    process = context.Process(target=_child, args=(send, fn, args), daemon=True)
    process.start()
    send.close()
    outcome = Outcome()
    try:
        if receive.poll(timeout):
            status, value = receive.recv()
            if status == "ok":
                outcome.value = value
            else:
                outcome.problem = value
        else:
            outcome.problem = f"timed out (> {timeout:.0f} s)"
    except EOFError:
        process.join(5)
        outcome.problem = f"child died (exit code {process.exitcode})"
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        receive.close()
    outcome.seconds = time.perf_counter() - started
    return outcome


# -- building detectors ---------------------------------------------------------------------


def our_class(type_name: str) -> type:
    """monitord-drift's class for ``type_name`` (imported lazily, as the daemon does)."""
    from monitord_drift.plugin import detector_class

    return detector_class(type_name)


def accepted_params(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword parameters of ``cls``'s constructor, by name."""
    return dict(inspect.signature(cls.__init__).parameters)


def reference_size_of(cls: type, params: dict[str, Any]) -> int:
    """The reference size ``cls`` would use with ``params`` (its default if not given)."""
    if "reference_size" in params:
        return int(params["reference_size"])
    default = accepted_params(cls).get("reference_size")
    if default is not None and isinstance(default.default, int):
        return default.default
    return 500


def build_ours(type_name: str, params: dict[str, Any], reference: np.ndarray | None) -> Any:
    """An instance of our detector; parameters it does not take are an error, not ignored."""
    cls = our_class(type_name)
    unknown = set(params) - set(accepted_params(cls))
    if unknown:
        raise TypeError(f"{type_name} takes no parameter(s) {sorted(unknown)}")
    given = reference if getattr(cls, "needs_reference", True) else None
    return cls(**params, reference=given)


def throughput_params(type_name: str, window: int | None) -> dict[str, Any]:
    """Parameters of our detector in the throughput rows.

    IKS: a reference as large as the window, as river's KolmogorovSmirnov (two samples of
    equal size). NM-DDM: the smallest reference it accepts (1.5 x window) and a short
    calibration (B = 100 windows, which needs alpha_drift >= 0.01): calibration costs
    O(B * window^2) once, at construction, and is reported as setup time; it does not
    change the cost of an update, which is what these rows measure.
    """
    if window is None:
        return {}
    if type_name == "nm_ddm":
        return {"window": window, "reference_size": math.ceil(1.5 * window) + 1,
                "alpha_warning": 0.05, "alpha_drift": 0.01, "calibration_windows": 100}
    return {"window": window, "reference_size": window}


def describe(params: dict[str, Any]) -> str:
    """``k=v, ...`` for a table cell, or "defaults"."""
    return ", ".join(f"{key}={value}" for key, value in params.items()) or "defaults"


def river_detector(type_name: str) -> Any:
    """river's counterpart of ``type_name`` with river's defaults."""
    from river import drift

    factories: dict[str, Callable[[], Any]] = {
        "pht": drift.PageHinkley,
        "ddm": drift.binary.DDM,
        "eddm": drift.binary.EDDM,
        "hddm_a": drift.binary.HDDMA,
        "hddm_w": drift.binary.HDDMW,
    }
    return factories[type_name]()


class RiverSlidingKS:
    """river's incremental KS used as IKS is: a fixed reference against a sliding window.

    river's ``KolmogorovSmirnov`` keeps two samples of equal size and moves both at each
    ``update(x, y)`` / ``revert(x, y)``, so sliding the window means reverting the
    (reference value, oldest window value) pair and updating with (the same reference
    value, the new value): four treap operations per sample. The decision is river's own
    ``_test_ks_threshold`` with ``_ca(alpha)``, i.e. c(alpha) = sqrt(-ln(alpha)/2) (river
    drops the /2 inside the log that the paper and ours use). ``drift_detected`` is True
    only where the decision rises, as our detectors count events.
    """

    def __init__(self, reference: np.ndarray, alpha: float = 0.001) -> None:
        from river.stats import KolmogorovSmirnov

        self.ks = KolmogorovSmirnov()
        self.reference = reference.tolist()
        self.size = len(self.reference)
        self.window: deque[float] = deque()
        self.next_reference = 0
        self.ca = KolmogorovSmirnov._ca(alpha)
        self.rejecting = False
        self.drift_detected = False

    def update(self, x: float) -> None:
        if len(self.window) < self.size:
            self.ks.update(self.reference[len(self.window)], x)
            self.window.append(x)
            if len(self.window) < self.size:
                return
        else:
            kept = self.reference[self.next_reference]
            self.next_reference = (self.next_reference + 1) % self.size
            self.ks.revert(kept, self.window.popleft())
            self.ks.update(kept, x)
            self.window.append(x)
        rejecting = self.ks._test_ks_threshold(self.ca)
        self.drift_detected = rejecting and not self.rejecting
        self.rejecting = rejecting


# -- data -------------------------------------------------------------------------------------


def rng_for(*keys: int) -> np.random.Generator:
    """A generator seeded by several integers, so that streams never share draws."""
    return np.random.default_rng(np.random.SeedSequence(list(keys)))


@dataclass(frozen=True)
class Scenario:
    """A stream that changes once: ``pre`` clean samples, then ``post`` changed ones."""

    key: int
    title: str
    clean: Callable[[np.random.Generator, int], np.ndarray]
    changed: Callable[[np.random.Generator, int], np.ndarray]
    ours: tuple[str, ...]
    river: tuple[str, ...]

    def draw(self, seed: int, pre: int, post: int, reference_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(independent clean reference, stream); the change is at index ``pre``."""
        rng = rng_for(self.key, seed)
        reference = self.clean(rng, reference_size)
        stream = np.concatenate([self.clean(rng, pre), self.changed(rng, post)])
        return reference, stream


def _normal(mean: float, sd: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: rng.normal(mean, sd, n)


def _bernoulli(p: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: (rng.random(n) < p).astype(np.float64)


SCENARIOS = (
    Scenario(1, "N(0,1) → N(0.5,1): 0.5σ mean shift", _normal(0, 1), _normal(0.5, 1),
             ("pht", "iks", "nm_ddm"), ("pht", "iks")),
    Scenario(2, "N(0,1) → N(0,2): variance 1 → 2", _normal(0, 1), _normal(0, math.sqrt(2)),
             ("pht", "iks", "nm_ddm"), ("pht", "iks")),
    Scenario(3, "Bernoulli 0.16 → 0.30: error rate", _bernoulli(0.16), _bernoulli(0.30),
             ("ddm", "eddm", "hddm_a", "hddm_w", "pht", "iks", "nm_ddm"),
             ("ddm", "eddm", "hddm_a", "hddm_w", "pht", "iks")),
)

#: Parameters of our detectors in the quality runs (defaults otherwise).
QUALITY_PARAMS: dict[str, dict[str, Any]] = {"iks": dict(IKS_TARGET_PARAMS)}


def throughput_data(type_name: str, size: int, salt: int = 0) -> np.ndarray:
    """A clean stream for throughput: N(0,1), or Bernoulli(0.16) for error-stream types.

    ``salt`` 1 draws the reference, independent of the monitored stream (salt 0).
    """
    rng = rng_for(99, OUR_TYPES.index(type_name), salt)
    if type_name in ERROR_STREAM:
        return (rng.random(size) < 0.16).astype(np.float64)
    return rng.standard_normal(size)


# -- throughput -----------------------------------------------------------------------------


def rate(step: Callable[[], int], seconds: float, repeats: int,
         clock: Callable[[], float] = time.perf_counter) -> float:
    """Best updates/s over ``repeats`` runs of ``step`` (each returns updates done) for ``seconds``.

    The best, not the mean: on a shared machine the other processes only ever slow a run
    down, so the fastest run is the closest to the code's own cost. ``clock`` may be
    ``time.process_time``: the CPU time of this (single-threaded) process, which waiting
    for a core shared with other work does not count.
    """
    best = 0.0
    for _ in range(repeats):
        done, started = 0, clock()
        while True:
            done += step()
            elapsed = clock() - started
            if elapsed >= seconds:
                break
        best = max(best, done / elapsed)
    return best


def cycling_step(length: int, batch: int, feed: Callable[[int, int], None], start: int = 0) -> Callable[[], int]:
    """A ``rate`` step feeding items ``[position, position + batch)`` of ``length``, from
    ``start`` on, wrapping round to 0 at the end."""
    position = start

    def step() -> int:
        nonlocal position
        if position + batch > length:
            position = 0
        feed(position, position + batch)
        position += batch
        return batch

    return step


def ours_rate(type_name: str, window: int | None, batch: int, plan: Plan) -> dict[str, float]:
    """Our detector's updates/s, fed ``batch`` values per ``update`` call after a warm-up."""
    cls = our_class(type_name)
    params = throughput_params(type_name, window)
    data = throughput_data(type_name, 1 << 20)
    reference = throughput_data(type_name, reference_size_of(cls, params), salt=1)
    started = time.perf_counter()
    detector = build_ours(type_name, params, reference)
    setup = time.perf_counter() - started
    warm = max(2 * (window or 0), 2 * batch, 1_000)
    for start in range(0, warm, batch):
        detector.update(data[start:start + batch])
    step = cycling_step(len(data), batch, lambda a, b: detector.update(data[a:b]), start=warm)
    return {"rate": rate(step, plan.seconds, plan.repeats), "setup": setup}


def river_rate(type_name: str, plan: Plan) -> dict[str, float]:
    """river's counterpart's updates/s, one value per ``update`` (river's only way)."""
    detector = river_detector(type_name)
    values = throughput_data(type_name, 1 << 16)
    values = [bool(v) for v in values] if type_name in ERROR_STREAM else values.tolist()
    step = cycling_step(len(values), 256, lambda a, b: feed_river(detector, values[a:b]))
    return {"rate": rate(step, plan.seconds, plan.repeats)}


def feed_river(detector: Any, values: list[Any]) -> None:
    """One value per ``update``, the decision read after each (river's only way; both cost)."""
    for value in values:
        detector.update(value)
        detector.drift_detected  # noqa: B018 - reading the decision is part of the cost


def river_ks_rate(window: int, plan: Plan) -> dict[str, float]:
    """river's KolmogorovSmirnov sliding a window of ``window`` against a same-size reference."""
    data = throughput_data("iks", 1 << 18).tolist()
    detector = RiverSlidingKS(throughput_data("iks", window, salt=1))
    for value in data[:2 * window]:
        detector.update(value)

    def feed(first: int, end: int) -> None:
        for value in data[first:end]:
            detector.update(value)

    step = cycling_step(len(data), 64, feed, start=2 * window)
    return {"rate": rate(step, plan.seconds, plan.repeats)}


def ks_2samp_rate(window: int, plan: Plan) -> dict[str, float]:
    """``scipy.stats.ks_2samp`` recomputed after every new sample (defaults: method auto)."""
    from scipy.stats import ks_2samp

    data = throughput_data("iks", 1 << 16)
    reference = throughput_data("iks", window, salt=1)
    ring = data[:window].copy()
    slot, position = 0, window

    def step() -> int:
        nonlocal slot, position
        if position >= len(data):
            position = 0
        ring[slot] = data[position]
        slot, position = (slot + 1) % window, position + 1
        ks_2samp(reference, ring).pvalue < 0.001  # noqa: B015 - the decision is part of the cost
        return 1

    with warnings.catch_warnings():
        # "Exact calculation unsuccessful. Switching to method=asymp": the default's cost.
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"rate": rate(step, plan.seconds, plan.repeats)}


@dataclass
class Row:
    """One throughput measurement: who, at which window, fed how, and how fast."""

    type_name: str
    window: int | None
    implementation: str
    batch: int
    outcome: Outcome
    river_key: tuple[str, int | None] | None = None  # the row this one is compared with


def throughput_rows(plan: Plan, broken: dict[str, str], log: Callable[[str], None]) -> list[Row]:
    """Every throughput measurement of the plan, ours and river's, in table order."""
    rows: list[Row] = []

    def measure(row: Row, fn: Callable[..., Any], *args: Any) -> None:
        if row.implementation == "monitord" and row.type_name in broken:
            row.outcome = Outcome(problem=broken[row.type_name])
        else:
            row.outcome = isolated(fn, *args, timeout=plan.throughput_timeout)
        rows.append(row)
        shown = f"{row.outcome.value['rate']:,.0f}/s" if row.outcome.ok else row.outcome.problem
        log(f"  {row.type_name:7} window={row.window} {row.implementation} batch={row.batch}: {shown}")

    for type_name in OUR_TYPES:
        windows: Sequence[int | None] = plan.windows if type_name in WINDOWED else (None,)
        for window in windows:
            key = (type_name, window)
            batches = (BATCH, 1) if type_name == "iks" else (BATCH,)
            for batch in batches:
                measure(Row(type_name, window, "monitord", batch, Outcome(), key), ours_rate,
                        type_name, window, batch, plan)
            if type_name == "iks":
                measure(Row(type_name, window, "river.stats.KolmogorovSmirnov", 1, Outcome()),
                        river_ks_rate, window, plan)
                measure(Row(type_name, window, "scipy.stats.ks_2samp", 1, Outcome()),
                        ks_2samp_rate, window, plan)
            elif RIVER_NAMES[type_name]:
                measure(Row(type_name, window, RIVER_NAMES[type_name], 1, Outcome()),
                        river_rate, type_name, plan)
    return rows


def river_rate_for(rows: list[Row], type_name: str, window: int | None) -> float | None:
    """The river counterpart's rate measured for ``type_name`` at ``window``, if any."""
    for row in rows:
        if (row.type_name == type_name and row.window == window and row.implementation.startswith("river")
                and row.outcome.ok):
            return row.outcome.value["rate"]
    return None


def throughput_table(rows: list[Row]) -> str:
    """Markdown: one row per measurement, with ours/river where river has a counterpart."""
    lines = [
        "| detector | window | implementation | settings | values per call | setup s | updates/s | µs/update "
        "| ours ÷ river |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        window = f"{row.window:,}" if row.window else "—"
        settings = describe(throughput_params(row.type_name, row.window)) if row.implementation == "monitord" else (
            "river defaults" if row.implementation.startswith("river.drift") else "")
        head = f"| {row.type_name} | {window} | {row.implementation} | {settings} | {row.batch} |"
        if not row.outcome.ok:
            lines.append(f"{head} | {row.outcome.problem} | | |")
            continue
        speed = row.outcome.value["rate"]
        setup = row.outcome.value.get("setup")
        ratio = ""
        if row.implementation == "monitord":
            river = river_rate_for(rows, row.type_name, row.window)
            ratio = f"{speed / river:,.1f}×" if river else "no counterpart"
        lines.append(f"{head} {'' if setup is None else f'{setup:.3f}'} | {speed:,.0f} | {1e6 / speed:,.2f} | "
                     f"{ratio} |")
    return "\n".join(lines)


def nm_ddm_setup(params: dict[str, Any]) -> float:
    """Seconds to build NM-DDM with ``params`` (its calibration dominates)."""
    cls = our_class("nm_ddm")
    reference = throughput_data("nm_ddm", reference_size_of(cls, params), salt=1)
    started = time.perf_counter()
    build_ours("nm_ddm", params, reference)
    return time.perf_counter() - started


def nm_ddm_setup_table(plan: Plan, broken: dict[str, str], log: Callable[[str], None]) -> str:
    """Markdown: NM-DDM's construction time with its default calibration (B = 20,000).

    Why a table of its own: calibration costs O(B * window^2) at construction (and again
    on every adopted reference), which the throughput rows leave out.
    """
    lines = ["| window | reference | settings | setup s |", "|---:|---:|---|---:|"]
    for window in plan.nm_ddm_setup_windows:
        params = {} if window == 100 else {"window": window, "reference_size": math.ceil(1.5 * window) + 1}
        size = params.get("reference_size", 500)
        if "nm_ddm" in broken:
            outcome = Outcome(problem=broken["nm_ddm"])
        else:
            outcome = isolated(nm_ddm_setup, params, timeout=plan.throughput_timeout)
        log(f"  nm_ddm setup window={window}: {outcome.value if outcome.ok else outcome.problem}")
        cell = f"{outcome.value:.2f}" if outcome.ok else outcome.problem
        lines.append(f"| {window:,} | {size:,} | {describe(params)} (B = 20,000) | {cell} |")
    return "\n".join(lines)


def iks_speed_summary(rows: list[Row], plan: Plan) -> str:
    """The issue's two IKS speed targets, checked on this run's numbers."""
    def ours(window: int, batch: int) -> float | None:
        for row in rows:
            if (row.type_name, row.window, row.implementation, row.batch) == ("iks", window, "monitord", batch):
                return row.outcome.value["rate"] if row.outcome.ok else None
        return None

    small, large = plan.windows[0], plan.windows[-1]
    river = river_rate_for(rows, "iks", small)
    lines = []
    for batch in (BATCH, 1):
        fast, slow = ours(small, batch), ours(large, batch)
        if fast and river:
            ratio = fast / river
            lines.append(f"- IKS, {batch} per call: {ratio:,.1f}× river's KolmogorovSmirnov at window {small:,} "
                         f"(target ≥ 20×: {'met' if ratio >= 20 else 'MISSED'})")
        if fast and slow:
            growth = fast / slow
            lines.append(f"- IKS, {batch} per call: cost per update grows {growth:.2f}× from window {small:,} "
                         f"to {large:,} (target ≤ 1.5×: {'met' if growth <= 1.5 else 'MISSED'})")
    return "\n".join(lines) if lines else "- IKS speed targets: no measurement (see the table)"


# -- speed in the daemon's batches (issue 18) -------------------------------------------------

#: Values per ``update`` in the speed table: what the monitor applies per stream entry.
SPEED_BATCH = 64
#: Issue 18's goals for types without a river counterpart, in updates/s in batches of 64.
SPEED_GOALS = {"nm_ddm": 120_000}
#: The goal of the detectors added in issue 18 (and any type this file does not know).
NEW_TYPE_GOAL = 50_000
#: river's counterparts in the speed table (IKS: river's KolmogorovSmirnov slid as IKS slides).
SPEED_RIVER = {**{name: RIVER_NAMES[name] for name in ("pht", "ddm", "eddm", "hddm_a", "hddm_w")},
               "iks": "river.stats.KolmogorovSmirnov"}


def speed_types() -> list[str]:
    """Every detector type the drift plugin registers: one added later shows up by itself."""
    from monitord_drift.plugin import DETECTOR_TYPES

    return list(DETECTOR_TYPES)


def speed_data(type_name: str, size: int, salt: int = 0) -> np.ndarray:
    """Clean input of the signal each type watches in the daemon.

    Error stream (0/1 at 16 %) for the error detectors, class indices 0-9 for
    ``class_mix``, two N(0,1) columns for NM-DDM (the default set's activation mean and
    spread), eight for any other multivariate type (the embedding), N(0,1) otherwise.
    """
    rng = rng_for(98, zlib.crc32(type_name.encode()), salt)
    if type_name in ERROR_STREAM or type_name == "bernoulli_cusum":
        return (rng.random(size) < 0.16).astype(np.float64)
    if type_name == "class_mix":
        return rng.integers(0, 10, size).astype(np.float64)
    if our_class(type_name).signals_per_sample is None:
        return rng.standard_normal((size, 2 if type_name == "nm_ddm" else 8))
    return rng.standard_normal(size)


def speed_rate(type_name: str, batch: int, plan: Plan) -> dict[str, float]:
    """Our detector with its default settings, fed ``batch`` values per call, in CPU time."""
    cls = our_class(type_name)
    data = speed_data(type_name, 1 << 17)
    reference = speed_data(type_name, reference_size_of(cls, {}), salt=1)
    detector = build_ours(type_name, {}, reference)
    warm = max(2_000, 4 * batch)
    for start in range(0, warm, SPEED_BATCH):
        detector.update(data[start:start + SPEED_BATCH])
    step = cycling_step(len(data), batch, lambda a, b: detector.update(data[a:b]), start=warm)

    return {"rate": rate(step, plan.seconds, plan.repeats, clock=time.process_time)}


def river_speed(type_name: str, plan: Plan) -> dict[str, float]:
    """river's counterpart with its defaults, one value per call (river's only way), in CPU time."""
    if type_name == "iks":
        window = int(accepted_params(our_class("iks"))["window"].default)
        detector: Any = RiverSlidingKS(throughput_data("iks", window, salt=1))
        values: list[Any] = throughput_data("iks", 1 << 16).tolist()
    else:
        detector = river_detector(type_name)
        raw = speed_data(type_name, 1 << 16)
        values = [bool(v) for v in raw] if type_name in ERROR_STREAM else raw.tolist()
    step = cycling_step(len(values), SPEED_BATCH, lambda a, b: feed_river(detector, values[a:b]))

    for _ in range(20):  # river's KolmogorovSmirnov must fill its window first
        step()
    return {"rate": rate(step, plan.seconds, plan.repeats, clock=time.process_time)}


def speed_table(plan: Plan, broken: dict[str, str], log: Callable[[str], None]) -> str:
    """Markdown: per type, updates/s one at a time and in batches of 64, river's rate, the goal."""
    lines = [
        f"| detector | 1 per call, updates/s | {SPEED_BATCH} per call, updates/s | river's counterpart "
        f"| river, 1 per call, updates/s | ours in {SPEED_BATCH}s ÷ river | issue 18 goal | met |",
        "|---|---:|---:|---|---:|---:|---|---|",
    ]

    def cell(outcome: Outcome) -> str:
        return f"{outcome.value['rate']:,.0f}" if outcome.ok else outcome.problem or "?"

    for type_name in speed_types():
        outcomes = []
        for batch in (1, SPEED_BATCH):
            if type_name in broken:
                outcomes.append(Outcome(problem=broken[type_name]))
            else:
                outcomes.append(isolated(speed_rate, type_name, batch, plan, timeout=plan.throughput_timeout))
        river_name = SPEED_RIVER.get(type_name)
        river = isolated(river_speed, type_name, plan, timeout=plan.throughput_timeout) if river_name else None
        batched = outcomes[1].value["rate"] if outcomes[1].ok else None
        if river_name:
            goal_text = "≥ river"
            goal = river.value["rate"] if river and river.ok else None
        else:
            goal = SPEED_GOALS.get(type_name, NEW_TYPE_GOAL)
            goal_text = f"≥ {goal:,}/s"
        ratio = f"{batched / river.value['rate']:.2f}×" if batched and river and river.ok else "—"
        met = "—" if batched is None or goal is None else ("yes" if batched >= goal else "**no**")
        lines.append(f"| {type_name} | {cell(outcomes[0])} | {cell(outcomes[1])} | {river_name or '—'} | "
                     f"{cell(river) if river else '—'} | {ratio} | {goal_text} | {met} |")
        log(f"  speed {type_name}: {cell(outcomes[0])} / {cell(outcomes[1])}; river {cell(river) if river else '-'}")
    return "\n".join(lines)


SPEED_NOTE = f"""\
Every type with its default settings, on clean input of the signal it watches in the daemon
(0/1 errors at 16 % for the error detectors, class indices for `class_mix`, two N(0,1) signals
for NM-DDM, N(0,1) otherwise), after a warm-up; best of the runs. Rates count the CPU time
of the measuring process (`time.process_time`), so that waiting for a core shared with other
work is not charged to the detector; caches shared with that work still slow it, so the
ratios to river, measured in the same run, are what compare. river's counterparts take one
value per call with river's defaults; IKS's is river's KolmogorovSmirnov slid as IKS slides
(window = reference = IKS's default 500). Goals (issue 18): at least river's per-sample rate
in batches of {SPEED_BATCH}; NM-DDM ≥ 120,000 updates/s; types added in issue 18 ≥ 50,000."""


# -- quality --------------------------------------------------------------------------------


def ours_drift_indices(detector: Any, stream: np.ndarray, batch: int = BATCH) -> list[int]:
    """Stream indices of our detector's drift events, fed in daemon-like micro-batches."""
    found = []
    for start in range(0, len(stream), batch):
        for event in detector.update(stream[start:start + batch]):
            if event.level == "drift":
                found.append(start + event.index)
    return found


def river_drift_indices(detector: Any, stream: np.ndarray, binary: bool) -> list[int]:
    """Stream indices where a river detector reports ``drift_detected``."""
    values = [bool(v) for v in stream] if binary else stream.tolist()
    found = []
    for index, value in enumerate(values):
        detector.update(value)
        if detector.drift_detected:
            found.append(index)
    return found


#: One quality cell: the stream, our type name, the implementation and what it gave.
Cell = tuple["Scenario", str, str, Outcome]


@dataclass
class Quality:
    """Detections of one detector over all seeds of one scenario."""

    delays: list[int] = field(default_factory=list)
    false_alarms: int = 0
    missed: int = 0
    seeds: int = 0


def quality_run(scenario: Scenario, type_name: str, implementation: str, plan: Plan) -> Quality:
    """Run one detector over every seed of ``scenario``; the change is at index ``plan.pre``."""
    result = Quality()
    for seed in range(plan.seeds):
        params = QUALITY_PARAMS.get(type_name, {}) if implementation == "monitord" else {}
        size = reference_size_of(our_class(type_name), params) if implementation == "monitord" else plan.reference_size
        reference, stream = scenario.draw(seed, plan.pre, plan.post, size)
        if implementation == "monitord":
            indices = ours_drift_indices(build_ours(type_name, params, reference), stream)
        elif type_name == "iks":
            indices = river_drift_indices(RiverSlidingKS(reference, IKS_TARGET_PARAMS["alpha"]), stream, False)
        else:
            detector = river_detector(type_name)
            indices = river_drift_indices(detector, stream, type_name in ERROR_STREAM)
        result.seeds += 1
        result.false_alarms += sum(1 for index in indices if index < plan.pre)
        after = [index - plan.pre for index in indices if index >= plan.pre]
        if after:
            result.delays.append(after[0])
        else:
            result.missed += 1
    return result


def describe_params(type_name: str, implementation: str) -> str:
    """The settings a quality row ran with, for the table."""
    if implementation != "monitord":
        if type_name == "iks":
            return "window 500 = reference 500, α=0.001, river's c(α)"
        return "river defaults"
    return describe(QUALITY_PARAMS.get(type_name, {}))


def quality_table(results: list[Cell], plan: Plan) -> str:
    """Markdown: median delay (with quartiles), false alarms per 1,000, missed detections."""
    lines = [
        "| stream | detector | implementation | settings | median delay (IQR) | false alarms / 1,000 | missed |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for scenario, type_name, implementation, outcome in results:
        head = f"| {scenario.title} | {type_name} | {implementation} | {describe_params(type_name, implementation)} |"
        if not outcome.ok:
            lines.append(f"{head} {outcome.problem} | | |")
            continue
        quality: Quality = outcome.value
        if quality.delays:
            q1, median, q3 = np.percentile(quality.delays, [25, 50, 75])
            delay = f"{median:,.0f} ({q1:,.0f}–{q3:,.0f})"
        else:
            delay = "—"
        per_thousand = 1000 * quality.false_alarms / (quality.seeds * plan.pre)
        lines.append(f"{head} {delay} | {per_thousand:.3f} | {quality.missed}/{quality.seeds} |")
    return "\n".join(lines)


def quality_results(plan: Plan, broken: dict[str, str], log: Callable[[str], None]) -> list[Cell]:
    """Every (scenario, detector, implementation) quality cell of the plan."""
    results = []
    for scenario in SCENARIOS:
        cells = [(t, "monitord") for t in scenario.ours] + [(t, RIVER_NAMES[t]) for t in scenario.river]
        cells.sort(key=lambda cell: (OUR_TYPES.index(cell[0]), cell[1] != "monitord"))
        for type_name, implementation in cells:
            if implementation == "monitord" and type_name in broken:
                outcome = Outcome(problem=broken[type_name])
            else:
                outcome = isolated(quality_run, scenario, type_name, implementation, plan,
                                   timeout=plan.quality_timeout)
            results.append((scenario, type_name, implementation, outcome))
            log(f"  {scenario.title[:24]:24} {type_name:7} {implementation}: "
                f"{'ok' if outcome.ok else outcome.problem} ({outcome.seconds:.1f} s)")
    return results


#: Drift events closer than this to the previous one belong to the same alarm episode.
EPISODE_GAP = 500


def episodes(indices: Sequence[int], gap: int = EPISODE_GAP) -> int:
    """Alarm episodes: runs of drift events with less than ``gap`` samples between them.

    Why: a detector whose statistic hovers at its threshold rises to drift many times in
    a row; the daemon raises one alert per episode, so both counts matter.
    """
    return sum(1 for i, index in enumerate(indices) if i == 0 or index - indices[i - 1] >= gap)


def clean_false_alarms(type_name: str, implementation: str, params: dict[str, Any], length: int,
                       streams: int) -> list[tuple[int, int]]:
    """(drift events, episodes) per clean N(0,1) stream of ``length`` (reference: an independent clean sample)."""
    counts = []
    for seed in range(streams):
        rng = rng_for(7, seed)
        if implementation == "monitord":
            size = reference_size_of(our_class(type_name), params)
            reference = rng.standard_normal(size)
            detector = build_ours(type_name, params, reference)
            indices = ours_drift_indices(detector, rng.standard_normal(length))
        else:
            indices = river_drift_indices(river_detector(type_name), rng.standard_normal(length), False)
        counts.append((len(indices), episodes(indices)))
    return counts


def clean_table(plan: Plan, broken: dict[str, str], log: Callable[[str], None]) -> str:
    """Markdown: false alarms on long clean streams (the issue's IKS, PHT and river claims)."""
    runs = [
        ("iks", "monitord", dict(IKS_TARGET_PARAMS), plan.clean_iks, "0 per stream"),
        ("pht", "monitord", {}, plan.clean_iks, "≤ 0.1 per 1,000"),
        ("pht", "river.drift.PageHinkley", {}, plan.river_ph_clean, "issue says ~33 per 50,000"),
    ]
    lines = [
        "| detector | implementation | settings | streams × samples | drift events per stream (min / median / max) "
        f"| streams with any | per 1,000 | episodes (gap ≥ {EPISODE_GAP}) in all | target |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for type_name, implementation, params, length, target in runs:
        head = f"| {type_name} | {implementation} | {describe(params)} | {plan.clean_streams} × {length:,} |"
        if implementation == "monitord" and type_name in broken:
            outcome = Outcome(problem=broken[type_name])
        else:
            outcome = isolated(clean_false_alarms, type_name, implementation, params, length, plan.clean_streams,
                               timeout=plan.quality_timeout)
        log(f"  clean {type_name} {implementation}: {outcome.value if outcome.ok else outcome.problem} "
            f"({outcome.seconds:.1f} s)")
        if not outcome.ok:
            lines.append(f"{head} {outcome.problem} | | | | {target} |")
            continue
        counts = [events for events, _ in outcome.value]
        per_thousand = 1000 * sum(counts) / (len(counts) * length)
        lines.append(f"{head} {min(counts)} / {np.median(counts):g} / {max(counts)} | "
                     f"{sum(1 for c in counts if c)}/{len(counts)} | {per_thousand:.3f} | "
                     f"{sum(e for _, e in outcome.value)} | {target} |")
    return "\n".join(lines)


def quality_summary(results: list[Cell]) -> str:
    """The issue's delay targets (0.5σ shift, median ≤ 300) for PHT and IKS."""
    lines = []
    for scenario, type_name, implementation, outcome in results:
        if scenario.key != 1 or implementation != "monitord" or type_name not in ("pht", "iks"):
            continue
        if not outcome.ok or not outcome.value.delays:
            lines.append(f"- {type_name}: no delay measured on the 0.5σ shift (target median ≤ 300: MISSED)")
            continue
        median = float(np.median(outcome.value.delays))
        lines.append(f"- {type_name}: median delay {median:,.0f} on the 0.5σ shift "
                     f"(target ≤ 300: {'met' if median <= 300 else 'MISSED'})")
    return "\n".join(lines)


# -- machine and report ---------------------------------------------------------------------


def versions() -> str:
    """Versions of what the numbers depend on."""
    import numba
    import river
    import scipy

    return (f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
            f"numba {numba.__version__}, river {river.__version__}")


def machine_line(load_before: tuple[float, float, float]) -> str:
    """CPU, cores, versions, date and load: enough to tell whether numbers are comparable."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu_model()}, {os.cpu_count()} cores ({usable} usable), {platform.system()} "
            f"{platform.release()}; {versions()}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
            f"load average at start {load_before[0]:.2f}, at end {os.getloadavg()[0]:.2f}")


def warm_up(log: Callable[[str], None]) -> dict[str, str]:
    """Import and exercise every detector once in this process; return the types that fail.

    Compiling here (numba) means forked children start with compiled code, and a
    detector that cannot even be built is reported once rather than in every cell.
    """
    import river.drift  # noqa: F401 - imported once here, not in every child
    import river.stats  # noqa: F401
    import scipy.stats  # noqa: F401

    broken: dict[str, str] = {}
    for type_name in speed_types():
        started = time.perf_counter()
        try:
            cls = our_class(type_name)
            params: dict[str, Any] = {}
            reference = speed_data(type_name, reference_size_of(cls, params), salt=1)
            detector = build_ours(type_name, params, reference)
            data = speed_data(type_name, 1_500)
            detector.update(data[:1_000])
            for value in data[1_000:1_010]:
                detector.update(np.array([value]))
            detector.state  # noqa: B018 - reading the state must work too
        except Exception as error:  # noqa: BLE001 - reported in the tables
            where = traceback.extract_tb(error.__traceback__)[-1]
            broken[type_name] = f"fails: {type(error).__name__}: {error} ({Path(where.filename).name}:{where.lineno})"
            log(f"  {type_name}: {broken[type_name]}")
            continue
        log(f"  {type_name}: ready in {time.perf_counter() - started:.2f} s (import, compile, first updates)")
    return broken


def report(plan: Plan, quick: bool, log: Callable[[str], None]) -> str:
    """Run everything and return the markdown fragment."""
    load_before = os.getloadavg()
    started = time.perf_counter()
    log("warming up (imports, numba compilation)")
    broken = warm_up(log)
    log("speed (issue 18)")
    speed = speed_table(plan, broken, log)
    log("throughput")
    rows = throughput_rows(plan, broken, log)
    setup = nm_ddm_setup_table(plan, broken, log)
    log("quality")
    results = quality_results(plan, broken, log)
    log("clean streams")
    clean = clean_table(plan, broken, log)
    minutes = (time.perf_counter() - started) / 60
    windows = ", ".join(f"{w:,}" for w in plan.windows)
    return f"""\
**Machine:** {machine_line(load_before)}. Run: `benchmarks/detectors.py{' --quick' if quick else ''}`, \
{minutes:.1f} minutes in all.

### Speed in the daemon's batches (issue 18)

{SPEED_NOTE}

{speed}

### Throughput

Clean streams (N(0,1); Bernoulli(0.16) for the error-stream detectors), measured after a warm-up,
best of {plan.repeats} runs of {plan.seconds:g} s each. Ours are fed {BATCH} values per `update` call (the
daemon's micro-batches); IKS also 1 per call, the per-call cost. river's detectors take one value per
call. IKS and NM-DDM run at windows {windows} (settings column). IKS gets a reference as large as the
window, like river's KolmogorovSmirnov, which keeps two equal-size samples and slides by reverting and
re-adding one reference value with each window value; `ks_2samp` is recomputed on the full window after
every sample (scipy defaults). NM-DDM gets the smallest reference it accepts (1.5 × window) and a short
calibration (B = 100 windows, hence alpha_drift = 0.01): calibration is a one-off cost at construction,
shown as setup time, and does not change the cost of an update. PHT and the DDM family have no window:
one row each, default settings (PHT standardises against a clean reference of its default size).
NM-DDM has no river counterpart. ours ÷ river divides by river's rate at the same window.

{throughput_table(rows)}

{iks_speed_summary(rows, plan)}

NM-DDM's construction time with its default calibration (B = 20,000 reference windows, O(B · window²)):

{setup}

### Detection quality

{plan.seeds} seeds per stream; each stream is {plan.pre:,} clean samples then {plan.post:,} changed ones (change at
index {plan.pre:,}). Detectors that take a reference get a fixed one: an independent clean sample of their
reference size drawn with the seed (500 unless stated), not the start of the stream. Ours are fed
{BATCH} values per call. Delay: samples from the change to the first drift event at or after it, over the
seeds that detected. False alarms: drift events before the change, per 1,000 pre-change samples.
Missed: no drift event in the {plan.post:,} changed samples. Only "drift" events count, not warnings.

{quality_table(results, plan)}

{quality_summary(results)}

river's KolmogorovSmirnov on the Bernoulli stream: its treap orders tied values by sample (all reference
copies of a value before the window's), so on 0/1 data its D is the reference's share of zeros (≈ 0.84)
whatever the window holds: it rejects from the first full window, never falls back, and so shows one
early false alarm and no new drift event after the change.

### False alarms on long clean N(0,1) streams

Each stream has its own independent clean reference (drawn first, same seed); ours are fed {BATCH} values
per call. An episode is a run of drift events less than {EPISODE_GAP} samples apart (the daemon alerts once
per episode).

{clean}
"""


def replace_section(path: Path, section: str, heading: str = "## Drift detectors") -> None:
    """Put ``section`` under ``heading`` in ``path``, leaving every other section as it was."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    new = section if section.endswith("\n") else section + "\n"
    if start is None:
        path.write_text(text.rstrip("\n") + "\n\n" + new)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + new + ("\n" + tail if tail else ""))


def results_section(fragment: str, busy_note: str | None) -> str:
    """The "## Drift detectors" section of RESULTS.md: how to run, then this run's tables."""
    note = f"\n> {busy_note}\n" if busy_note else ""
    return f"""## Drift detectors

`benchmarks/detectors.py` measures monitord-drift's detectors next to river's counterparts in one run:
throughput (updates per second) and detection quality (delay, false alarms, missed detections).
From the repository root:

```
.venv/bin/python benchmarks/detectors.py                      # full run, prints the tables
.venv/bin/python benchmarks/detectors.py --quick              # smoke run, about a minute
.venv/bin/python benchmarks/detectors.py --results benchmarks/RESULTS.md   # full run, rewrites this section
```

`--output FILE` writes the tables alone as a markdown fragment. Every measurement runs in a forked
child with a time limit, so a detector that raises or hangs shows as a cell, not a failed run.
{note}
{fragment}"""


def speed_report(plan: Plan, log: Callable[[str], None]) -> str:
    """The speed table alone, with the machine it ran on."""
    load_before = os.getloadavg()
    log("warming up (imports, numba compilation)")
    broken = warm_up(log)
    log("speed (issue 18)")
    table = speed_table(plan, broken, log)
    return f"""\
**Machine:** {machine_line(load_before)}. Run: `benchmarks/detectors.py --speed`.

{SPEED_NOTE}

{table}
"""


def speed_section(fragment: str, busy_note: str | None) -> str:
    """The "## Detector speed (issue 18)" section of RESULTS.md."""
    note = f"\n> {busy_note}\n" if busy_note else ""
    return f"""{SPEED_HEADING}

`benchmarks/detectors.py --speed` measures every detector type's updates per second one value
per call and in the monitor's batches of {SPEED_BATCH}, beside river's counterpart measured in the same
run (two to five minutes; the full run includes this table too).
{note}
{fragment}"""


SPEED_HEADING = "## Detector speed (issue 18)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (about a minute)")
    parser.add_argument("--output", type=Path, help="write the markdown tables to this file")
    parser.add_argument("--results", type=Path,
                        help="replace the '## Drift detectors' section of this file (e.g. benchmarks/RESULTS.md)")
    parser.add_argument("--note", help="a line to show above the tables in --results (e.g. 'shared machine')")
    parser.add_argument("--speed", action="store_true",
                        help="only the speed table (issue 18); with --results, replaces its own section")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.speed:
        fragment = speed_report(plan, log)
        print(fragment)
        if args.output:
            args.output.write_text(fragment)
        if args.results:
            replace_section(args.results, speed_section(fragment, args.note), SPEED_HEADING)
        return 0
    fragment = report(plan, args.quick, log)
    print(fragment)
    if args.output:
        args.output.write_text(fragment)
    if args.results:
        replace_section(args.results, results_section(fragment, args.note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
