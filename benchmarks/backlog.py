"""Folder backlog benchmark (issue 5): a large inbox waiting before the daemon starts.

``--files`` (default 50,000) small digit PNGs are written into ``inbox/<label>/`` before
``python -m monitord run`` starts (ten label folders; the encoded bytes of the 360
held-out digits are reused, so generating them takes seconds). The script then samples
the daemon's VmRSS every second (from /proc) while it works the backlog off, and reports:

- files/s and the time to drain (from the daemon's readiness to an empty inbox),
- VmRSS when ready and once 10 % and 50 % of the files are done, at the end, the highest
  sample and VmHWM; memory counts as flat when the highest sample is at most 1.2 x the
  one at 10 % (a backlog of any size should take the same memory),
- the largest ``monitord_queue_depth{stage="folder_backlog"}`` seen,
- that every file ended in processed/ (none lost, none twice).

Run from the repository root::

    .venv/bin/python benchmarks/backlog.py                     # 50,000 files
    .venv/bin/python benchmarks/backlog.py --files 2000        # smoke run
    .venv/bin/python benchmarks/backlog.py --results benchmarks/RESULTS.md
                          # also put the "## Folder backlog (issue 5)" section there

Everything lives in ``--workdir`` (default: a new temporary folder, kept afterwards).
The exit status is 1 when a file was lost or duplicated, the inbox did not drain, or
memory did not stay flat; 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402

HEADING = "## Folder backlog (issue 5)"
SETTINGS = """\
# benchmarks/backlog.py: the defaults (folder and HTTP sources, default detectors, log sink).
"""


def generate(inbox: Path, count: int, seed: int) -> float:
    """Write ``count`` PNGs into inbox/<label>/; the seconds it took."""
    pool = h.digit_pngs("clean", seed)
    began = time.monotonic()
    for label in range(10):
        (inbox / str(label)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        label, data = pool[i % len(pool)]
        with open(inbox / str(label) / f"b{i:07d}.png", "wb") as file:
            file.write(data)
    return time.monotonic() - began


@dataclass
class Progress:
    """Scrapes /metrics: files the folder source finished, and its in-memory backlog."""

    daemon: h.Daemon
    max_backlog_gauge: float = 0.0
    done: float = 0.0

    def __call__(self) -> float | None:
        if not self.daemon.running():
            return None
        try:
            samples = self.daemon.metrics(timeout=5)
        except Exception:
            return None  # not serving yet
        self.done = sum(h.metric_sum(samples, "monitord_images_total", source="folder", outcome=outcome)
                        for outcome in ("ok", "rejected", "error"))
        self.max_backlog_gauge = max(self.max_backlog_gauge,
                                     h.metric_sum(samples, "monitord_queue_depth", stage="folder_backlog"))
        return self.done


def first_at(samples: list[h.MemorySample], done: float) -> h.MemorySample | None:
    return next((s for s in samples if s.progress is not None and s.progress >= done), None)


def account(daemon: h.Daemon, count: int) -> dict[str, int]:
    """Where the files are now: processed (once, twice), failed, inbox, missing."""
    names: dict[str, int] = {}
    failed = 0
    for root, counter in ((daemon.processed, names), (daemon.failed, None)):
        for dirpath, _, files in os.walk(root):
            for name in files:
                if not name.endswith(".png"):
                    continue
                if counter is None:
                    failed += 1
                    continue
                stem = name[: -len(".png")]
                original = stem.split("-")[0]  # a second copy is b0000001-<8 hex>.png
                counter[original] = counter.get(original, 0) + 1
    inbox = h.count_files(daemon.inbox)
    processed = len(names)
    twice = sum(1 for n in names.values() if n > 1)
    return {"processed": processed, "duplicates": twice, "failed": failed, "in_inbox": inbox,
            "lost": count - processed - failed - inbox}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=50_000, help="files in the backlog (default 50,000)")
    parser.add_argument("--workdir", type=Path, help="work directory (default: a new temporary one, kept)")
    parser.add_argument("--results", type=Path, help="put the '## Folder backlog (issue 5)' section into this file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the inbox to drain")
    parser.add_argument("--log-level", default="INFO", help="the daemon's log level")
    parser.add_argument("--set", action="append", default=[], metavar="MONITORD_KEY=VALUE",
                        help="an environment setting for the daemon, e.g. MONITORD_FOLDER__MAX_BACKLOG=1024 "
                             "(repeatable; shown in the results)")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    if any(not key.startswith("MONITORD_") for key in overrides):
        parser.error("--set takes MONITORD_<SECTION>__<KEY>=VALUE")

    h.interrupt_on_sigterm()
    load_at_start = os.getloadavg()[0]
    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="monitord-backlog-"))
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        leftovers = [n for n in ("inbox", "processed", "failed", "state") if (workdir / n).exists()]
        if leftovers:
            raise SystemExit(f"{workdir} holds {', '.join(leftovers)} from an earlier run; use a fresh work "
                             "directory (its model/ may stay: it is reused)")
    print(f"work directory: {workdir}", flush=True)
    artifact = h.trained_artifact(workdir / "model", seed=args.seed)
    daemon = h.Daemon(workdir, artifact, SETTINGS, log_level=args.log_level, env=overrides)
    generation = generate(daemon.inbox, args.files, args.seed)
    print(f"wrote {args.files:,} files into {daemon.inbox} in {generation:.1f} s", flush=True)
    print(f"daemon log: {daemon.log_path}", flush=True)

    progress = Progress(daemon)
    sampler = h.MemorySampler(lambda: daemon.pid, interval=1.0, progress=progress)
    try:
        spawned = time.monotonic()
        daemon.start()
        sampler.start()
        ready = daemon.wait_ready(300)
        ready_at = time.monotonic()
        print(f"daemon ready after {ready:.1f} s", flush=True)
        drained = False
        next_report = ready_at + 10
        while time.monotonic() - ready_at < args.timeout:
            if not daemon.running():
                raise RuntimeError(f"the daemon exited with {daemon.process.returncode}; log: {daemon.log_path}")
            if progress.done >= args.files and h.count_files(daemon.inbox) == 0:
                drained = True
                break
            if time.monotonic() >= next_report:
                last = sampler.samples[-1] if sampler.samples else None
                print(f"[{time.monotonic() - ready_at:6.0f} s] done {progress.done:8,.0f} / {args.files:,}  "
                      f"rss {h.mib(last.rss) if last else '?'}  folder_backlog gauge max "
                      f"{progress.max_backlog_gauge:,.0f}", flush=True)
                next_report += 10
            time.sleep(0.2)
        drained_at = time.monotonic()
        end = sampler.sample_now()
        sampler.stop()
        exit_code = daemon.terminate(120)
    finally:
        sampler.stop()
        daemon.close()
        print(f"daemon log: {daemon.log_path}", flush=True)

    samples = sampler.samples
    at_ready = next((s for s in samples if s.at >= ready_at), None)
    sampler.write_csv(workdir / "memory.csv")
    at10, at50 = first_at(samples, 0.1 * args.files), first_at(samples, 0.5 * args.files)
    peak_rss, peak_hwm = sampler.peak()
    # Loading the model (torch, the detectors' calibration) peaks before the daemon is ready;
    # the backlog's own memory is what the daemon holds from then on.
    peak_working = max((s.rss for s in samples if s.at >= ready_at), default=0)
    flat = at10 is not None and peak_working <= 1.2 * at10.rss
    drain_seconds = drained_at - ready_at
    where = account(daemon, args.files)
    log_lines = h.log_summary(daemon.log_text())

    def rss(sample: h.MemorySample | None) -> str:
        return h.mib(sample.rss) if sample else "—"

    rows = [
        ("files", f"{args.files:,} in inbox/0 … inbox/9 ({generation:.1f} s to write)"),
        ("settings", "defaults" + "".join(f", {key}={value}" for key, value in overrides.items())),
        ("daemon ready after start", f"{ready:.1f} s"),
        ("time to drain (from ready)", f"{drain_seconds:.1f} s" + ("" if drained else " (NOT drained: timed out)")),
        ("throughput", f"{args.files / drain_seconds:,.0f} files/s" if drained else "—"),
        ("VmRSS when ready", rss(at_ready)),
        ("VmRSS at 10 % / 50 % done", f"{rss(at10)} / {rss(at50)}"),
        ("VmRSS at the end", rss(end)),
        ("VmRSS highest sample from ready to drained", h.mib(peak_working)),
        ("VmRSS highest sample with the start-up / VmHWM", f"{h.mib(peak_rss)} / {h.mib(peak_hwm)}"),
        ("memory flat (highest from ready ≤ 1.2 × at 10 %)",
         f"{'yes' if flat else 'NO'} ({peak_working / at10.rss:.2f} ×)" if at10 else "—"),
        ("largest folder_backlog gauge", f"{progress.max_backlog_gauge:,.0f}"),
        ("processed / failed / left in inbox", f"{where['processed']:,} / {where['failed']:,} / {where['in_inbox']:,}"),
        ("lost / duplicates", f"{where['lost']} / {where['duplicates']}"),
        ("stop (SIGTERM): exit status", f"{exit_code}"),
        ("daemon log", log_lines[0]),
    ]
    timeline = []
    for share in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        sample = first_at(samples, share * args.files) if share else at_ready
        if sample is not None:
            timeline.append(f"{share:4.0%} {sample.seconds - (ready_at - spawned):6.1f} s {h.mib(sample.rss)}")
    print()
    print(h.table(rows))
    print("\nVmRSS as the backlog goes down (share done, seconds after ready, VmRSS):")
    print("\n".join("  " + line for line in timeline))
    print("\n".join(log_lines))
    print(f"\ndaemon log: {daemon.log_path}; every memory sample: {workdir / 'memory.csv'}")
    checks = [drained, where["lost"] == 0, where["duplicates"] == 0, flat, exit_code == 0]
    if args.results:
        section = f"""{HEADING}

`benchmarks/backlog.py` writes {args.files:,} small digit PNGs into `inbox/<label>/` before the daemon
starts (`python -m monitord run`, default settings, its own work directory), samples the daemon's
VmRSS every second from /proc while it works the backlog off, and checks that every file ends in
processed/ once.

```
.venv/bin/python benchmarks/backlog.py                 # 50,000 files
.venv/bin/python benchmarks/backlog.py --files 2000    # smoke run
.venv/bin/python benchmarks/backlog.py --results benchmarks/RESULTS.md
```

**Machine:** {h.machine_line()}; {h.utc_now()}. Run: `benchmarks/backlog.py --files {args.files}{''.join(f' --set {item}' for item in args.set)}`; load average at start {load_at_start:.2f}.
The machine is shared: throughput moves with the load, memory does not.

{h.table(rows)}

The highest sample with the start-up comes while the daemon loads (torch, the model, the
detectors' calibration), before it is ready; "flat" compares the samples from ready on.

VmRSS as the backlog goes down (share of files done, seconds after ready, VmRSS):

```
{chr(10).join(timeline)}
```
"""
        h.replace_section(args.results, HEADING, section)
        print(f"wrote the '{HEADING[3:]}' section of {args.results}")
    return 0 if all(checks) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the daemon was killed (see its log above)", file=sys.stderr)
        sys.exit(130)
