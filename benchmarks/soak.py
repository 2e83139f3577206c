"""Soak benchmark (issue 5): the real daemon under mixed traffic, a kill -9 in the middle.

For ``--minutes`` (default 10) the script feeds ``python -m monitord run`` through both
sources at once:

- the folder: good digit PNGs and bad inputs (truncated, zero bytes, text named .png, a
  PNG header announcing 64 M pixels), each written beside the inbox and renamed into it;
  about half go to ``inbox/<label>/`` so they carry their true class;
- HTTP: ``POST /v1/predict`` with one raw image or a multipart batch of 2-16, good and bad
  mixed, some with ``?label=``; half of the unlabelled good images get their label later
  through ``POST /v1/feedback``.

Traffic alternates clean and drifted phases (rotated, noisy, inverted digits from
``monitord_torchvision.drifts``) so drift alerts fire and resolve; a webhook sink with a
short cool-down posts them to a receiver running in this process, which records every
notification. Half-way, half a second after a burst of ``--kill-burst`` files (so that
hundreds are waiting and in flight), the daemon is killed with SIGKILL and restarted at
once on the same state directory and inbox while the traffic goes on. A request that fails with a
connection error, a timeout or 429/503 is retried (after ``Retry-After`` when given) and
counted as a retry, not as a new item.

At the end the traffic stops, the script waits for the inbox to drain and for the open
alert episodes to resolve and reach the receiver, then stops the daemon with SIGTERM and
accounts for every item:

- lost: a file dropped into the inbox that is neither in processed/, nor in failed/, nor
  still in the inbox; an HTTP request never answered after its retries;
- duplicates: a file found more than once in processed/ and failed/ (a second copy gets a
  random suffix);
- alerts the daemon counted as delivered (``monitord_alerts_total`` scraped just before the
  kill plus at the end) against the distinct notifications the receiver got (one per
  fingerprint, status and startsAt, which is what the Idempotency-Key says);
- the daemon's peak memory (VmRSS sampled every second from /proc, and VmHWM), throughput.

The exit status is 1 when an item was lost or duplicated, an HTTP request stayed
unanswered, the inbox did not drain, an image got the wrong outcome, or the daemon did not
stop cleanly; 0 otherwise. Run from the repository root::

    .venv/bin/python benchmarks/soak.py                       # 10 minutes
    .venv/bin/python benchmarks/soak.py --minutes 1           # smoke run
    .venv/bin/python benchmarks/soak.py --results benchmarks/RESULTS.md
                                         # also put the "## Soak (issue 5)" section there

Everything lives in ``--workdir`` (default: a new temporary folder, kept afterwards):
the trained model, the inbox, processed/, failed/, the state directory and ``daemon.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402

HEADING = "## Soak (issue 5)"
DRIFT_KINDS = ("rotation", "noise", "invert")
#: A second copy of a result gets "-<8 hex digits>" before its suffix (monitord's free_name).
SUFFIXED = re.compile(r"^(?P<stem>.*)-[0-9a-f]{8}(?P<suffix>\.png)$")


def settings(receiver_url: str, cooldown: float) -> str:
    return f"""\
# benchmarks/soak.py: the default detectors, a short alert cool-down, a webhook sink.
# Episodes resolve on the cool-down alone (resolve_after_samples = 1), as before episodes
# followed the data: the soak ends with a traffic pause, which would keep them open.
[alerts]
cooldown_seconds = {cooldown}
resolve_after_samples = 1
renotify_seconds = 0

[[sinks]]
type = "log"

[[sinks]]
type = "webhook"
name = "hook"
urls = ["{receiver_url}"]
timeout_seconds = 5.0
backoff_initial_seconds = 0.2
backoff_max_seconds = 2.0
"""


# -- the plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    start: float
    end: float
    kind: str  # "clean" or a drift kind


def plan_phases(total: float) -> list[Phase]:
    """Clean and drifted phases alternating, clean first and last, each 10-70 s."""
    length = min(70.0, max(10.0, total / 9))
    count = max(1, round(total / length))
    length = total / count
    phases = []
    for i in range(count):
        drifted = i % 2 == 1 and i != count - 1
        kind = DRIFT_KINDS[(i // 2) % len(DRIFT_KINDS)] if drifted else "clean"
        phases.append(Phase(i * length, (i + 1) * length, kind))
    return phases


def phase_at(phases: list[Phase], seconds: float) -> Phase:
    for phase in phases:
        if seconds < phase.end:
            return phase
    return phases[-1]


class Pacer:
    """Hands out ``rate`` tokens a second; a producer that fell behind catches up at most
    one second's worth at once."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next = time.monotonic()

    async def take(self, tokens: int = 1) -> None:
        now = time.monotonic()
        at = max(self.next, now - 1.0)
        self.next = at + tokens / self.rate
        if at > now:
            await asyncio.sleep(at - now)


# -- bookkeeping ---------------------------------------------------------------------------


@dataclass
class HttpCounts:
    requests: int = 0
    multipart_requests: int = 0
    items: int = 0
    answered_items: int = 0
    predictions: int = 0
    rejected: int = 0
    unexpected: Counter = field(default_factory=Counter)  # what went wrong -> items
    retries: int = 0
    retry_reasons: Counter = field(default_factory=Counter)
    retried_requests: int = 0
    unanswered_requests: int = 0
    unanswered_items: int = 0
    labelled: int = 0


@dataclass
class FeedbackCounts:
    requests: int = 0
    records: int = 0
    outcomes: Counter = field(default_factory=Counter)
    retries: int = 0
    unanswered_records: int = 0


@dataclass
class Run:
    """Everything one soak run produced, filled in as it goes."""

    args: argparse.Namespace
    daemon: h.Daemon
    receiver: h.WebhookReceiver
    phases: list[Phase]
    rng: random.Random
    pools: dict[str, list[tuple[int, bytes]]]
    staging: Path
    began: float = 0.0  # time.monotonic() when the traffic started
    began_wall: float = 0.0
    stopping: bool = False
    producers_done: bool = False
    folder: dict[str, tuple[str, str]] = field(default_factory=dict)  # relative path -> (expected, kind)
    http: HttpCounts = field(default_factory=HttpCounts)
    feedback: FeedbackCounts = field(default_factory=FeedbackCounts)
    feedback_queue: deque = field(default_factory=deque)  # (due, id, label)
    sequence: int = 0
    before_kill: dict | None = None
    kill_note: str = ""
    killed_at: float | None = None
    kill_backlog: int = 0
    restart_ready_seconds: float | None = None
    pids: list[int] = field(default_factory=list)
    ready_at: dict[int, float] = field(default_factory=dict)  # pid -> time.monotonic() when ready
    progress_lines: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.began

    def phase(self) -> Phase:
        return phase_at(self.phases, self.now())

    def next_id(self, prefix: str) -> str:
        self.sequence += 1
        return f"{prefix}{self.sequence:07d}"

    def image(self, bad_share: float) -> tuple[str, str, int, bytes]:
        """(expected outcome, kind, label, bytes) of one image for the current phase."""
        kind = self.phase().kind
        label, data = self.rng.choice(self.pools[kind])
        if self.rng.random() < bad_share:
            bad = self.rng.choice(h.BAD_KINDS)
            return "rejected", bad, label, h.bad_input(bad, data)
        return "ok", kind, label, data


# -- traffic -------------------------------------------------------------------------------


async def folder_producer(run: Run, rate: float) -> None:
    pacer = Pacer(rate)
    inbox = run.daemon.inbox
    while not run.stopping:
        await pacer.take(1)
        if run.stopping:
            break
        drop_file(run, inbox)


def drop_file(run: Run, inbox: Path) -> None:
    expected, kind, label, data = run.image(run.args.bad_share)
    name = f"{run.next_id('f')}-{kind}.png"
    relative = f"{label}/{name}" if run.rng.random() < 0.5 else name
    h.drop_atomically(run.staging, inbox / relative, data)
    run.folder[relative] = (expected, kind)


async def post_with_retries(run: Run, session, url: str, build: dict[str, Any] | Any,
                            counts: HttpCounts | FeedbackCounts) -> tuple[int | None, bytes]:
    """POST until answered with something other than 429/503, or the retry deadline passed.

    ``build`` is a callable giving the keyword arguments of each attempt (a multipart form
    cannot be sent twice). A connection error, a timeout, 429 and 503 are retried; the
    answer's Retry-After is honoured, else a short exponential backoff.
    """
    import aiohttp

    deadline = time.monotonic() + run.args.retry_deadline
    attempt = 0
    while True:
        attempt += 1
        try:
            async with session.post(url, **build()) as response:
                body = await response.read()
                if response.status not in (429, 503):
                    return response.status, body
                reason = f"HTTP {response.status}"
                try:
                    wait = float(response.headers.get("Retry-After", "1"))
                except ValueError:
                    wait = 1.0
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as error:
            reason = type(error).__name__
            wait = min(2.0, 0.05 * 2 ** min(attempt, 6))
        counts.retries += 1
        if isinstance(counts, HttpCounts):
            counts.retry_reasons[reason] += 1
            if attempt == 1:
                counts.retried_requests += 1
        if time.monotonic() + wait > deadline:
            return None, b""
        await asyncio.sleep(wait * (1.0 + 0.2 * run.rng.random()))


def _record_outcome(run: Run, expected: str, status: int | None, item_id: str | None, label: int,
                    labelled: bool) -> None:
    counts = run.http
    counts.answered_items += 1
    if status == 200:
        if expected == "ok":
            counts.predictions += 1
            if not labelled and item_id and run.rng.random() < 0.5:
                due = time.monotonic() + run.rng.uniform(0.5, 3.0)
                run.feedback_queue.append((due, item_id, str(label)))
        else:
            counts.unexpected["bad input accepted"] += 1
    elif status == 422:
        if expected == "rejected":
            counts.rejected += 1
        else:
            counts.unexpected["good image rejected"] += 1
    else:
        counts.unexpected[f"HTTP {status}"] += 1


async def http_worker(run: Run, session, pacer: Pacer) -> None:
    import aiohttp

    url = run.daemon.url + "/v1/predict"
    while not run.stopping:
        multipart = run.rng.random() < 0.35
        size = run.rng.randint(2, 16) if multipart else 1
        await pacer.take(size)
        if run.stopping:
            break
        images = [run.image(run.args.bad_share) for _ in range(size)]
        counts = run.http
        counts.requests += 1
        counts.items += size
        if not multipart:
            expected, kind, label, data = images[0]
            item_id = run.next_id("h")
            labelled = expected == "ok" and run.rng.random() < 0.3
            params = {"id": item_id, **({"label": str(label)} if labelled else {})}
            counts.labelled += labelled

            def build() -> dict[str, Any]:
                return {"data": data, "params": params, "headers": {"Content-Type": "image/png"}}

            status, body = await post_with_retries(run, session, url, build, counts)
            if status is None:
                counts.unanswered_requests += 1
                counts.unanswered_items += 1
                continue
            _record_outcome(run, expected, status, item_id, label, labelled)
            continue

        counts.multipart_requests += 1
        base = run.next_id("m")

        def build() -> dict[str, Any]:
            form = aiohttp.FormData()
            for i, (_, kind, _, data) in enumerate(images):
                form.add_field("image", data, filename=f"{base}-{i}-{kind}.png", content_type="image/png")
            return {"data": form, "params": {"id": base}}

        status, body = await post_with_retries(run, session, url, build, counts)
        if status is None:
            counts.unanswered_requests += 1
            counts.unanswered_items += size
            continue
        if status != 200:
            for expected, _, label, _ in images:
                _record_outcome(run, expected, status, None, label, False)
            continue
        records = json.loads(body)["predictions"]
        if len(records) != size:
            counts.unexpected["multipart answer with a wrong count"] += size
            counts.answered_items += size
            continue
        for (expected, _, label, _), record in zip(images, records):
            _record_outcome(run, expected, record.get("status", 200), record.get("id"), label, False)


async def feedback_poster(run: Run, session) -> None:
    url = run.daemon.url + "/v1/feedback"
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        due = []
        while run.feedback_queue and (run.feedback_queue[0][0] <= now or run.producers_done) and len(due) < 1000:
            _, item_id, label = run.feedback_queue.popleft()
            due.append({"id": item_id, "label": label})
        if due:
            run.feedback.requests += 1
            run.feedback.records += len(due)
            status, body = await post_with_retries(run, session, url, lambda: {"json": due}, run.feedback)
            if status == 200:
                run.feedback.outcomes.update(json.loads(body)["counts"])
            elif status is None:
                run.feedback.unanswered_records += len(due)
            else:
                run.feedback.outcomes[f"HTTP {status}"] += len(due)
        elif run.producers_done and not run.feedback_queue:
            return


async def killer(run: Run) -> None:
    """Half-way: a burst of files (so that some are in flight), scrape /metrics, SIGKILL the
    daemon, start it again at once."""
    daemon = run.daemon
    await asyncio.sleep(max(0.0, run.args.minutes * 60 / 2 - 0.5 - run.now()))
    for _ in range(run.args.kill_burst):
        drop_file(run, daemon.inbox)
    await asyncio.sleep(0.5)  # the daemon sees the burst and starts on it
    backlog = h.count_files(daemon.inbox)
    try:
        run.before_kill = await asyncio.to_thread(daemon.metrics, 5)
    except Exception as error:  # the kill goes on; the alert count misses this run's share
        run.kill_note = f"/metrics before the kill failed: {error!r}"
    daemon.kill9()
    run.killed_at = run.now()
    run.kill_backlog = backlog
    daemon.start()
    run.pids.append(daemon.pid)
    run.restart_ready_seconds = await asyncio.to_thread(daemon.wait_ready, 180)
    run.ready_at[daemon.pid] = time.monotonic()
    print(f"[{run.now():6.1f} s] kill -9 at {run.killed_at:.1f} s ({backlog} files in the inbox); restarted, ready after "
          f"{run.restart_ready_seconds:.1f} s", flush=True)


async def progress(run: Run, sampler: h.MemorySampler) -> None:
    while not run.stopping:
        await asyncio.sleep(run.args.progress_seconds)
        if run.stopping:
            break
        inbox = await asyncio.to_thread(h.count_files, run.daemon.inbox)
        sample = sampler.samples[-1] if sampler.samples else None
        line = (f"[{run.now():6.1f} s] phase {run.phase().kind:8s} folder sent {len(run.folder):6d} "
                f"(inbox {inbox:5d})  http items {run.http.items:6d} answered {run.http.answered_items:6d} "
                f"retries {run.http.retries:4d}  feedback {run.feedback.records:5d}  "
                f"notifications {len(run.receiver.received()):3d}  "
                f"rss {h.mib(sample.rss) if sample else '?'}")
        print(line, flush=True)


async def traffic(run: Run, sampler: h.MemorySampler) -> None:
    import aiohttp

    total = run.args.minutes * 60
    run.began, run.began_wall = time.monotonic(), time.time()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        http_pacer = Pacer(run.args.rate * (1 - run.args.folder_share))
        tasks = [asyncio.create_task(folder_producer(run, run.args.rate * run.args.folder_share))]
        tasks += [asyncio.create_task(http_worker(run, session, http_pacer)) for _ in range(run.args.http_workers)]
        feedback = asyncio.create_task(feedback_poster(run, session))
        kill = asyncio.create_task(killer(run)) if not run.args.no_kill else None
        report = asyncio.create_task(progress(run, sampler))
        try:
            while run.now() < total:
                await asyncio.sleep(min(0.5, total - run.now()))
                for task in tasks + [feedback] + ([kill] if kill else []):
                    if task.done() and task.exception() is not None:
                        raise task.exception()
            run.stopping = True
            await asyncio.gather(*tasks)  # in-flight requests finish (with their retries)
            run.producers_done = True
            if kill is not None:
                await kill
            await feedback
        finally:
            run.stopping = True
            for task in tasks + [feedback, report] + ([kill] if kill else []):
                task.cancel()
            await asyncio.gather(*tasks, feedback, report, *([kill] if kill else []), return_exceptions=True)


# -- accounting ----------------------------------------------------------------------------


@dataclass
class FolderAccount:
    sent: int = 0
    processed: int = 0
    rejected: int = 0
    in_inbox: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    wrong: Counter = field(default_factory=Counter)
    strays: list[str] = field(default_factory=list)  # files in processed/failed we never sent
    missing_sidecars: int = 0
    temp_files: list[str] = field(default_factory=list)


def account_folder(run: Run) -> FolderAccount:
    daemon = run.daemon
    account = FolderAccount(sent=len(run.folder))
    found: dict[str, list[str]] = {}
    for where, root in (("processed", daemon.processed), ("failed", daemon.failed)):
        sidecar = ".json" if where == "processed" else ".reason.txt"
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = Path(dirpath, name)
                relative = path.relative_to(root).as_posix()
                if name.startswith(".") or name.endswith(".tmp"):
                    account.temp_files.append(f"{where}/{relative}")
                    continue
                if not name.endswith(".png"):
                    continue
                if not path.with_name(name + sidecar).exists():
                    account.missing_sidecars += 1
                original = relative
                if original not in run.folder:
                    match = SUFFIXED.match(relative)
                    if match and match["stem"] + match["suffix"] in run.folder:
                        original = match["stem"] + match["suffix"]
                    else:
                        account.strays.append(f"{where}/{relative}")
                        continue
                found.setdefault(original, []).append(where)
    left = set()
    for dirpath, _, files in os.walk(daemon.inbox):
        for name in files:
            left.add(Path(dirpath, name).relative_to(daemon.inbox).as_posix())
    for relative, (expected, kind) in run.folder.items():
        places = found.get(relative, [])
        if relative in left:
            account.in_inbox += 1
            if places:
                account.duplicates.append(relative)
            continue
        if not places:
            account.lost.append(relative)
            continue
        if len(places) > 1:
            account.duplicates.append(relative)
        if places[0] == "processed":
            account.processed += 1
        else:
            account.rejected += 1
        wanted = "processed" if expected == "ok" else "failed"
        if any(place != wanted for place in places):
            account.wrong[f"{kind} in {'/'.join(sorted(set(places)))}/"] += 1
    return account


def predictions_log(state: Path) -> tuple[int, Counter]:
    """Lines of <state_dir>/predictions.jsonl (and its rotated copies), and ids logged more
    than once, by source."""
    seen: Counter = Counter()
    lines = 0
    for path in sorted(state.glob("predictions.jsonl*")):
        with path.open(encoding="utf-8", errors="replace") as file:
            for line in file:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the kill
                lines += 1
                seen[(record.get("source"), record.get("id"))] += 1
    twice = Counter(source for (source, _), count in seen.items() if count > 1)
    return lines, twice


@dataclass
class Episode:
    alertname: str
    detector: str
    starts_at: str
    fired: float | None = None  # seconds since the traffic started, first firing copy received
    resolved: float | None = None


def episodes(run: Run) -> tuple[list[Episode], int, int]:
    """Episodes seen by the receiver, the number of POSTs and of distinct notifications."""
    notifications = run.receiver.received()
    distinct: dict[tuple[str, str, str], h.Notification] = {}
    for note in notifications:
        distinct.setdefault(note.key, note)
    by_episode: dict[tuple[str, str], Episode] = {}
    for (fingerprint, status, starts_at), note in sorted(distinct.items(), key=lambda kv: kv[1].received):
        labels = note.body["alerts"][0]["labels"]
        episode = by_episode.setdefault((fingerprint, starts_at), Episode(
            labels.get("alertname", "?"), labels.get("detector", "?"), starts_at))
        seconds = note.received - run.began_wall
        if status == "firing":
            episode.fired = seconds
        elif status == "resolved":
            episode.resolved = seconds
    return sorted(by_episode.values(), key=lambda e: (e.fired if e.fired is not None else e.resolved or 0)), \
        len(notifications), len(distinct)


def open_episodes(run: Run) -> int:
    found, _, _ = episodes(run)
    return sum(1 for episode in found if episode.resolved is None)


# -- the run ---------------------------------------------------------------------------------


def prepare_workdir(path: Path | None) -> Path:
    if path is None:
        return Path(tempfile.mkdtemp(prefix="monitord-soak-"))
    path.mkdir(parents=True, exist_ok=True)
    leftovers = [name for name in ("inbox", "processed", "failed", "state") if (path / name).exists()]
    if leftovers:
        raise SystemExit(f"{path} holds {', '.join(leftovers)} from an earlier run; the accounting needs a "
                         "fresh work directory (its model/ may stay: it is reused)")
    return path


def wait_until(predicate, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="traffic duration (default 10)")
    parser.add_argument("--workdir", type=Path, help="work directory (default: a new temporary one, kept)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the traffic and of the model")
    parser.add_argument("--results", type=Path, help="put the '## Soak (issue 5)' section into this file")
    parser.add_argument("--rate", type=float, default=60.0, help="images offered per second, both sources")
    parser.add_argument("--folder-share", type=float, default=0.4, help="share of the images sent as files")
    parser.add_argument("--bad-share", type=float, default=0.08, help="share of bad inputs")
    parser.add_argument("--http-workers", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--cooldown", type=float, default=5.0, help="alerts.cooldown_seconds")
    parser.add_argument("--retry-deadline", type=float, default=240.0,
                        help="seconds an HTTP request is retried before it counts as unanswered")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for the inbox")
    parser.add_argument("--alerts-timeout", type=float, default=120.0,
                        help="seconds to wait for open alert episodes to resolve at the end")
    parser.add_argument("--progress-seconds", type=float, default=15.0)
    parser.add_argument("--no-kill", action="store_true", help="skip the kill -9 (a baseline)")
    parser.add_argument("--kill-burst", type=int, default=2000,
                        help="files dropped at once 0.5 s before the kill, so that many are in flight")
    parser.add_argument("--log-level", default="INFO", help="the daemon's log level")
    args = parser.parse_args(argv)

    h.interrupt_on_sigterm()
    args.load_at_start = os.getloadavg()[0]
    workdir = prepare_workdir(args.workdir)
    print(f"work directory: {workdir}", flush=True)
    artifact = h.trained_artifact(workdir / "model", seed=args.seed)
    staging = workdir / "staging"
    staging.mkdir(exist_ok=True)
    receiver = h.WebhookReceiver()
    daemon = h.Daemon(workdir, artifact, settings(receiver.url, args.cooldown), log_level=args.log_level)
    for label in range(10):
        (daemon.inbox / str(label)).mkdir(parents=True, exist_ok=True)
    pools = {kind: h.digit_pngs(kind, args.seed) for kind in ("clean",) + DRIFT_KINDS}
    run = Run(args, daemon, receiver, plan_phases(args.minutes * 60), random.Random(args.seed), pools, staging)
    sampler = h.MemorySampler(lambda: daemon.pid)
    print(f"daemon log: {daemon.log_path}", flush=True)
    try:
        daemon.start()
        run.pids.append(daemon.pid)
        first_ready = daemon.wait_ready()
        run.ready_at[daemon.pid] = time.monotonic()
        print(f"daemon ready after {first_ready:.1f} s on {daemon.url}; phases: "
              + ", ".join(f"{p.kind} {p.start:.0f}-{p.end:.0f} s" for p in run.phases), flush=True)
        sampler.start()
        asyncio.run(traffic(run, sampler))
        load_seconds = run.now()
        print(f"[{run.now():6.1f} s] traffic stopped; waiting for the inbox to drain", flush=True)
        drained = wait_until(lambda: h.count_files(daemon.inbox) == 0, args.drain_timeout)
        drained_at = run.now()
        settled = wait_until(lambda: open_episodes(run) == 0 and h.metric_sum(
            daemon.metrics(), "monitord_alert_spool_depth") == 0, args.alerts_timeout, 1.0)
        final = daemon.metrics()
        print(f"[{run.now():6.1f} s] inbox {'drained' if drained else 'NOT drained'} at {drained_at:.1f} s; "
              f"alerts {'settled' if settled else 'NOT settled'}; stopping the daemon (SIGTERM)", flush=True)
        stop_began = time.monotonic()
        exit_code = daemon.terminate(120)
        stop_seconds = time.monotonic() - stop_began
        sampler.stop()
    finally:
        sampler.stop()
        daemon.close()
        receiver.close()
        print(f"daemon log: {daemon.log_path}", flush=True)

    return report(run, first_ready, load_seconds, drained, drained_at, settled, final, exit_code, stop_seconds,
                  sampler)


def report(run: Run, first_ready: float, load_seconds: float, drained: bool, drained_at: float, settled: bool,
           final: dict, exit_code: int, stop_seconds: float, sampler: h.MemorySampler) -> int:
    args, daemon = run.args, run.daemon
    folder = account_folder(run)
    found, posts, distinct = episodes(run)
    runs = [final] + ([run.before_kill] if run.before_kill else [])

    def daemon_total(name: str, **labels: str) -> int:
        return int(sum(h.metric_sum(samples, name, **labels) for samples in runs))

    spool_left = h.count_files(daemon.state / "spool" / "hook")
    logged, logged_twice = predictions_log(daemon.state)
    http = run.http
    peaks = [(pid, *sampler.peak(pid)) for pid in run.pids]
    serving = []  # per run: VmRSS 10 s after ready, at the end, and the highest after ready
    for pid in run.pids:
        after = [s for s in sampler.samples if s.pid == pid and s.at >= run.ready_at.get(pid, float("inf"))]
        if after:
            settled_sample = next((s for s in after if s.at >= after[0].at + 10), after[0])
            serving.append((settled_sample.rss, after[-1].rss, max(s.rss for s in after)))
    peak_rss = max((p[1] for p in peaks), default=0)
    peak_hwm = max((p[2] for p in peaks), default=0)
    done = folder.processed + folder.rejected + http.answered_items
    log_text = daemon.log_text()
    log_lines = h.log_summary(log_text)
    firing_lines = log_text.count("alert firing ")
    resolved_lines = log_text.count("alert resolved ")
    unexpected = sum(http.unexpected.values()) + sum(folder.wrong.values())
    fired_in = Counter(phase_at(run.phases, e.fired).kind != "clean" for e in found if e.fired is not None)

    rows = [
        ("traffic", f"{load_seconds:.0f} s, {args.rate:g} images/s offered ({args.folder_share:.0%} as files), "
                    f"{args.bad_share:.0%} bad, seed {args.seed}"),
        ("phases", ", ".join(f"{p.kind} {p.start:.0f}-{p.end:.0f} s" for p in run.phases)),
        ("kill -9", f"at {run.killed_at:.0f} s, {run.kill_backlog} files in the inbox (after a burst of "
                    f"{args.kill_burst}), ready again after {run.restart_ready_seconds:.1f} s"
         if run.killed_at is not None else "none (--no-kill)"),
        ("folder: files sent", f"{folder.sent:,}"),
        ("folder: processed / rejected / left in inbox", f"{folder.processed:,} / {folder.rejected:,} / "
                                                         f"{folder.in_inbox:,}"),
        ("folder: **lost**", f"**{len(folder.lost)}**"),
        ("folder: **duplicates**", f"**{len(folder.duplicates)}**"),
        ("folder: wrong outcome / missing sidecar / stray / temp files",
         f"{sum(folder.wrong.values())} / {folder.missing_sidecars} / {len(folder.strays)} / "
         f"{len(folder.temp_files)}"),
        ("HTTP: requests (multipart) / images", f"{http.requests:,} ({http.multipart_requests:,}) / {http.items:,}"),
        ("HTTP: predicted / rejected (422) / unexpected", f"{http.predictions:,} / {http.rejected:,} / "
                                                          f"{sum(http.unexpected.values())}"),
        ("HTTP: retries (requests retried)", f"{http.retries} ({http.retried_requests}): "
         + (", ".join(f"{k} {v}" for k, v in http.retry_reasons.most_common()) or "none")),
        ("HTTP: **unanswered** requests / images", f"**{http.unanswered_requests}** / {http.unanswered_items}"),
        ("feedback: records sent / outcomes", f"{run.feedback.records:,} / "
         + (", ".join(f"{k} {v}" for k, v in sorted(run.feedback.outcomes.items())) or "none")
         + (f", unanswered {run.feedback.unanswered_records}" if run.feedback.unanswered_records else "")),
        ("processed (both sources) / throughput", f"{done:,} / {done / max(drained_at, 1e-9):.1f} images/s "
                                                  f"(until the inbox drained at {drained_at:.0f} s)"),
        ("daemon counted (monitord_images_total, both runs)",
         ", ".join(f"{source} {outcome} {daemon_total('monitord_images_total', source=source, outcome=outcome):,}"
                   for source in ("folder", "http") for outcome in ("ok", "rejected", "error", "throttled")
                   if daemon_total("monitord_images_total", source=source, outcome=outcome))),
        ("predictions log: lines (files processed + HTTP predicted) / ids logged twice",
         f"{logged:,} ({folder.processed + http.predictions:,}) / "
         + (", ".join(f"{source} {count}" for source, count in sorted(logged_twice.items())) or "0")),
        ("alerts: sent by the daemon (webhook delivered / failed / dropped)",
         f"{daemon_total('monitord_alerts_total', sink='hook', outcome='delivered')} / "
         f"{daemon_total('monitord_alerts_total', sink='hook', outcome='failed')} / "
         f"{daemon_total('monitord_alerts_total', sink='hook', outcome='dropped')}"
         + ("" if run.before_kill or run.killed_at is None else " (first run not scraped)")),
        ("alerts: received (POSTs / distinct notifications)", f"{posts} / {distinct}"),
        ("alerts: episodes (fired in a drift phase / clean phase) / still open",
         f"{len(found)} ({fired_in[True]} / {fired_in[False]}) / {sum(1 for e in found if e.resolved is None)}"),
        ("alerts: log sink lines (firing / resolved)", f"{firing_lines} / {resolved_lines}"),
        ("alerts: left in the spool after the stop", f"{spool_left}"),
        ("memory: **peak VmRSS** sampled / VmHWM, both runs (start-up included)", f"**{h.mib(peak_rss)}** / {h.mib(peak_hwm)}"),
        ("memory: VmRSS 10 s after ready → at the end (highest after ready), per run",
         "; ".join(f"run {i + 1}: {h.mib(a)} → {h.mib(b)} ({h.mib(c)})" for i, (a, b, c) in enumerate(serving))),
        ("memory: peak VmRSS / VmHWM (start-up included), per run",
         "; ".join(f"run {i + 1}: {h.mib(rss)} / {h.mib(hwm)}" for i, (_, rss, hwm) in enumerate(peaks))),
        ("start: ready after", f"{first_ready:.1f} s"),
        ("stop (SIGTERM): exit status, seconds", f"{exit_code}, {stop_seconds:.1f} s"),
        ("daemon log", "; ".join(log_lines[:1])),
    ]
    checks = [
        ("no file lost", not folder.lost),
        ("no duplicate", not folder.duplicates),
        ("every HTTP request answered", http.unanswered_requests == 0),
        ("inbox drained", drained and folder.in_inbox == 0),
        ("every image got the expected outcome", unexpected == 0),
        ("graceful stop exits 0", exit_code == 0),
    ]
    notes = [
        ("alert episodes all resolved at the receiver", settled),
        ("spool empty after the stop", spool_left == 0),
    ]

    print()
    print(h.table(rows))
    print()
    if found:
        print("| episode | detector | fired (s, phase) | resolved (s) |")
        print("|---|---|---|---:|")
        for e in found:
            where = f"{e.fired:.0f}, {phase_at(run.phases, e.fired).kind}" if e.fired is not None else "—"
            print(f"| {e.alertname} | {e.detector} | {where} | "
                  f"{'open' if e.resolved is None else f'{e.resolved:.0f}'} |")
        print()
    for name, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    for name, ok in notes:
        print(f"{'ok  ' if ok else 'note'} {name}")
    for title, items in (("lost", folder.lost), ("duplicated", folder.duplicates), ("stray", folder.strays),
                         ("temporary", folder.temp_files)):
        if items:
            print(f"{title} files ({len(items)}), first ones: {', '.join(items[:10])}")
    for what, count in (http.unexpected + folder.wrong).items():
        print(f"unexpected: {what}: {count}")
    if run.kill_note:
        print(run.kill_note)
    print("\n".join(log_lines))
    sampler.write_csv(daemon.workdir / "memory.csv")
    print(f"\ndaemon log: {daemon.log_path}; every memory sample: {daemon.workdir / 'memory.csv'}")

    if args.results:
        section = results_section(run, rows, checks, notes, found, load_seconds)
        h.replace_section(args.results, HEADING, section)
        print(f"wrote the '{HEADING[3:]}' section of {args.results}")
    return 0 if all(ok for _, ok in checks) else 1


def results_section(run: Run, rows, checks, notes, found: list[Episode], load_seconds: float) -> str:
    episode_summary = Counter((e.alertname, e.detector) for e in found)
    return f"""{HEADING}

`benchmarks/soak.py` runs the real daemon (`python -m monitord run`, default detectors, a log
sink and a webhook sink to a receiver in the benchmark's process, `alerts.cooldown_seconds` =
{run.args.cooldown:g}) under mixed traffic: good digit PNGs and bad inputs (truncated, zero bytes,
text named .png, a header announcing 8000x8000 pixels) dropped atomically into the inbox (half
under `inbox/<label>/`) and posted over HTTP (raw and multipart batches, some `?label=`, half of
the other good ones labelled later through `POST /v1/feedback`), with clean and drifted phases
(rotated, noisy, inverted digits). Half-way, just after a burst of {run.args.kill_burst:,} files, the daemon
is killed with SIGKILL and restarted at once on the same state directory and inbox; HTTP clients retry connection errors and 429/503
(after Retry-After) and count those as retries. At the end: drain, SIGTERM, account for every item.

```
.venv/bin/python benchmarks/soak.py                  # 10 minutes
.venv/bin/python benchmarks/soak.py --minutes 1      # smoke run
.venv/bin/python benchmarks/soak.py --results benchmarks/RESULTS.md
```

**Machine:** {h.machine_line()}; {h.utc_now()}. Run: `benchmarks/soak.py --minutes {run.args.minutes:g} --seed {run.args.seed}`, {load_seconds / 60:.1f} minutes of traffic; load average at start {run.args.load_at_start:.2f}.

{h.table(rows)}

Alert episodes seen by the receiver: {', '.join(f'{name} {detector} ×{count}'
                                                 for (name, detector), count in sorted(episode_summary.items()))
                                       or 'none'}.

{chr(10).join(f"- {name}: {'met' if ok else 'FAILED'}" for name, ok in checks)}
{chr(10).join(f"- {name}: {'yes' if ok else 'no'}" for name, ok in notes)}
"""


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the daemon was killed (see its log above)", file=sys.stderr)
        sys.exit(130)
