"""Restart to ready, and stop during start-up: how long a supervisor waits on the daemon.

Measures, with the default digits model already trained and a state folder that a first
run filled (detector snapshots, open alerts, predictions):

- **restart after a graceful stop**: spawn ``monitord run`` until ``/readyz`` answers 200;
- **restart after kill -9**: the same, after the daemon was killed mid-traffic;
- **stop during start-up**: SIGINT while the model is loading, and while the default model
  is being trained (a first start), until the process has exited.

Each is repeated ``--runs`` times; the table gives the median and the range. ``--results``
writes the table into benchmarks/RESULTS.md ("Restart to ready").

    python benchmarks/restart.py --runs 5 --results
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import REPO, Daemon, machine_line, replace_section, trained_artifact, utc_now  # noqa: E402

RESULTS = REPO / "benchmarks" / "RESULTS.md"


def post_digits(daemon: Daemon, count: int) -> None:
    """``count`` held-out digits over HTTP, so the detectors have a state to snapshot."""
    from monitord_torchvision.digits import digit_png_bytes, held_out_digits

    images, _ = held_out_digits()
    for index in range(count):
        request = urllib.request.Request(daemon.url + "/v1/predict", data=digit_png_bytes(images[index % len(images)]),
                                         headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


def time_to_ready(daemon: Daemon) -> float:
    began = time.monotonic()
    daemon.start()
    daemon.wait_ready(poll=0.01)
    return time.monotonic() - began


def time_to_exit(daemon: Daemon, after: str, signum: int = signal.SIGINT, timeout: float = 300) -> float:
    """Start, wait until ``after`` appears in this start's log, send ``signum``: seconds until exit."""
    seen = len(daemon.log_text())
    daemon.start()
    deadline = time.monotonic() + timeout
    while after not in daemon.log_text()[seen:]:
        if time.monotonic() > deadline or not daemon.running():
            raise RuntimeError(f"never saw {after!r} in {daemon.log_path}")
        time.sleep(0.005)
    began = time.monotonic()
    daemon.process.send_signal(signum)
    status = daemon.process.wait(timeout)
    if status == -signum:
        raise RuntimeError(f"the daemon died of the signal instead of stopping; see {daemon.log_path}")
    return time.monotonic() - began


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s ({min(values):.3f}–{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--results", action="store_true", help="write the table into benchmarks/RESULTS.md")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="monitord-restart-") as scratch:
        root = Path(scratch)
        artifact = trained_artifact(root / "model")
        (root / "run").mkdir()
        daemon = Daemon(root / "run", artifact, "")
        rows: dict[str, list[float]] = {"first start, model trained": [], "restart after SIGTERM": [],
                                         "restart after kill -9": [], "SIGINT while loading the model": [],
                                         "SIGINT while training the default model": []}
        try:
            rows["first start, model trained"].append(time_to_ready(daemon))
            post_digits(daemon, 200)
            daemon.terminate()
            for _ in range(arguments.runs):
                rows["restart after SIGTERM"].append(time_to_ready(daemon))
                post_digits(daemon, 20)
                daemon.terminate()
            for _ in range(arguments.runs):
                daemon.start()
                daemon.wait_ready()
                post_digits(daemon, 20)
                daemon.kill9()
                rows["restart after kill -9"].append(time_to_ready(daemon))
                daemon.terminate()
            for _ in range(arguments.runs):
                rows["SIGINT while loading the model"].append(time_to_exit(daemon, "HTTP on"))
            for run in range(arguments.runs):
                (root / f"fresh{run}").mkdir()
                fresh = Daemon(root / f"fresh{run}", root / f"fresh{run}" / "model", "")
                try:
                    rows["SIGINT while training the default model"].append(
                        time_to_exit(fresh, "training the default digits model"))
                finally:
                    fresh.close()
        finally:
            daemon.close()

    table = ["| | median (range) |", "|---|---|"]
    table += [f"| {name} | {summary(values)} |" for name, values in rows.items() if values]
    report = "\n".join(table)
    print(report)
    if arguments.results:
        heading = "### Restart to ready, the last run"
        section = (f"{heading}\n\n{utc_now()}, {arguments.runs} runs each; {machine_line()}\n\n"
                   f"`python benchmarks/restart.py --runs {arguments.runs} --results`\n\n{report}\n")
        replace_section(RESULTS, heading, section, parent="## Restart to ready (issue 15)")


if __name__ == "__main__":
    main()
