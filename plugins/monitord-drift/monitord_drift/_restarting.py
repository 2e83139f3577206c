"""What the detectors that restart after a drift share (PHT, Bernoulli CUSUM, the DDM family).

Their papers restart the statistic at the sample where drift is declared. A batch may hold
several drifts. The CUSUM scans a chunk vectorised from its current state, stops at the
first drift, restarts, and scans the rest (:func:`run_batch`); chunks start small after a
restart and double while no drift turns up, so a batch with many drifts costs little more
than one with none. PHT and the DDM family run one compiled loop over the batch instead
(``pht_kernels``, ``ddm_kernels``, ``hddm_kernels``): in the daemon's batches of 64 the
fixed cost of the numpy calls made them slower than river's per-sample loop.

What a detector reports at a sample where it runs no test (too few samples since a
restart, or for EDDM a sample that is not an error) is the level it had before: ``ok``
after the start, ``drift`` during the ``min_samples`` samples that follow a drift, so that
a dashboard scraping between batches sees the drift. The level follows the test again
from the first sample where it runs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import numpy as np

from .base import LEVEL_CODES, SampleError

if TYPE_CHECKING:
    from monitord.detectors import DriftEvent

    from .base import DriftDetector

#: Level code of a sample where no test ran: the level carries over.
CARRY = -1

_FIRST_CHUNK = 256
_LARGEST_CHUNK = 1 << 16


class Scan(NamedTuple):
    """What a detector found in the samples it consumed from the front of a chunk."""

    #: Level code per sample (0 ok, 1 warning, 2 drift) or :data:`CARRY`.
    codes: np.ndarray
    statistic: np.ndarray
    warning_threshold: np.ndarray | float
    threshold: np.ndarray | float
    #: Whether the scan stopped at a drift and restarted the statistic.
    restarted: bool
    #: Per sample, whether a change found there moves back toward the reference; becomes
    #: ``DriftEvent.toward_reference``. None: the detector cannot tell, or no sample of the
    #: scan is at a level (so it holds no event).
    toward: np.ndarray | None = None


def run_batch(detector: DriftDetector, values: np.ndarray, scan: Callable[[np.ndarray], Scan]) -> list[DriftEvent]:
    """Feed ``values`` to ``scan`` chunk by chunk; return the level rises as events.

    ``scan`` consumes at least one sample from the front of the chunk it is given (it may
    stop early: at a drift, or where its own bookkeeping needs a boundary) and leaves the
    detector's state after the last sample consumed.
    """
    scans: list[Scan] = []
    position, chunk = 0, _FIRST_CHUNK
    while position < len(values):
        found = scan(values[position : position + chunk])
        consumed = len(found.codes)
        if consumed == 0:  # pragma: no cover - a scan always consumes
            raise RuntimeError("a detector scan consumed no samples")
        scans.append(found)
        position += consumed
        chunk = _FIRST_CHUNK if found.restarted else min(2 * chunk, _LARGEST_CHUNK)
    if not scans:
        return []
    codes = np.concatenate([found.codes for found in scans]).astype(np.int8, copy=False)
    codes = carry_levels(codes, LEVEL_CODES[detector.level])
    statistic = np.concatenate([found.statistic for found in scans])
    thresholds = {
        1: _joined([found.warning_threshold for found in scans], [len(found.codes) for found in scans]),
        2: _joined([found.threshold for found in scans], [len(found.codes) for found in scans]),
    }
    toward = None
    if any(found.toward is not None for found in scans):
        toward = np.concatenate([
            np.zeros(len(found.codes), dtype=bool) if found.toward is None else found.toward for found in scans
        ])
    return detector._events_from_codes(codes, statistic, thresholds, toward)


def carry_levels(codes: np.ndarray, before: int) -> np.ndarray:
    """Replace :data:`CARRY` codes by the last tested code (``before`` ahead of the first)."""
    tested = codes != CARRY
    if tested.all():
        return codes
    last = np.maximum.accumulate(np.where(tested, np.arange(len(codes)), -1))
    return np.where(last >= 0, codes[np.maximum(last, 0)], before).astype(np.int8)


def _joined(parts: list[np.ndarray | float], lengths: list[int]) -> np.ndarray | float:
    """One scalar when every scan reported the same constant threshold, else one per sample."""
    if all(np.ndim(part) == 0 for part in parts) and len({float(part) for part in parts}) == 1:
        return float(parts[0])
    return np.concatenate(
        [np.broadcast_to(np.asarray(part, dtype=np.float64), (n,)) for part, n in zip(parts, lengths)]
    )


def samples_to_test(level: str, done: int, minimum: int) -> int:
    """Samples (EDDM: errors) still needed before the test first runs, ``minimum - done``.

    0 while the level is held at ``drift`` after a restart: that level is the test's
    decision, so the detector stays ready (a dashboard sees the drift, not a gap).
    """
    return 0 if level == "drift" else max(0, minimum - done)


# -- parameter and input checks shared by these detectors ----------------------------------


def number(
    name: str, value: Any, *, low: float, low_open: bool = False, high: float | None = None, high_open: bool = False
) -> float:
    """``value`` as a float within bounds, or a ValueError that says which bound."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (value <= low) if low_open else (value < low):
        raise ValueError(f"{name} must be {'above' if low_open else 'at least'} {low}, got {value!r}")
    if high is not None and ((value >= high) if high_open else (value > high)):
        raise ValueError(f"{name} must be {'below' if high_open else 'at most'} {high}, got {value!r}")
    return float(value)


def count(name: str, value: Any, *, low: int = 1) -> int:
    """``value`` as an integer of at least ``low``, or a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer of at least {low}, got {value!r}")
    return value


def check_errors(type_name: str, values: np.ndarray, *, binary: bool) -> None:
    """Refuse input that cannot be the ``error`` signal, before any state changes."""
    wrong = (values != 0.0) & (values != 1.0) if binary else (values < 0.0) | (values > 1.0)
    if wrong.any():
        at = int(np.argmax(wrong))
        accepted = "0 or 1" if binary else "values in [0, 1]"
        raise SampleError(
            f"{type_name} watches the error signal (1 for a wrong prediction, 0 for a right one) and "
            f"takes {accepted}; got {float(values[at])!r} (is its signal \"error\"?)",
            at,
        )


def check_binary(type_name: str, values: np.ndarray) -> None:
    """:func:`check_errors` for 0/1 input in one compiled pass; the message comes from it.

    Why: the numpy check was a tenth of the cost of a batch of 64 for DDM and EDDM.
    """
    from .ddm_kernels import first_not_binary

    if first_not_binary(values) >= 0:
        check_errors(type_name, values, binary=True)


def check_unit(type_name: str, values: np.ndarray) -> None:
    """:func:`check_errors` for rates in [0, 1] in one compiled pass (as :func:`check_binary`)."""
    from .hddm_kernels import first_outside_unit

    if first_outside_unit(values) >= 0:
        check_errors(type_name, values, binary=False)


def confidences(drift_confidence: Any, warning_confidence: Any) -> tuple[float, float]:
    """The HDDM pair of bounds, each in (0, 1), the warning's looser than the drift's."""
    drift = number("drift_confidence", drift_confidence, low=0.0, low_open=True, high=1.0, high_open=True)
    warning = number("warning_confidence", warning_confidence, low=0.0, low_open=True, high=1.0, high_open=True)
    if warning <= drift:
        raise ValueError(
            f"warning_confidence ({warning}) must be larger than drift_confidence ({drift}): "
            "a warning comes before a drift"
        )
    return drift, warning
