"""``monitord demo``: its pieces, the whole command against a stand-in daemon, and the
real daemon end to end."""

from __future__ import annotations

import json
import os
import re
import socket
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from monitord_torchvision import plugin
from monitord_torchvision.demo_daemon import (
    DaemonClient,
    DetectorReading,
    Observation,
    StartedDaemon,
    parse_metrics,
    wait_until_ready,
)
from monitord_torchvision.demo_files import InboxWriter, read_prediction_files, read_predictions_log
from monitord_torchvision.demo_plot import write_plot
from monitord_torchvision.demo_report import DemoOutcome, LevelTracker, format_summary
from monitord_torchvision.demo_session import DemoSession
from monitord_torchvision.digits import held_out_digits
from monitord_torchvision.errors import DemoError
from monitord_torchvision.scenario import DemoImage, Scenario, demo_images

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 400 and image.size[1] > 400


# -- a stand-in daemon -------------------------------------------------------------------------


class FakeDaemon:
    """What the demo sees of monitord: ``/readyz``, ``/metrics``, an inbox that empties
    into ``processed/`` and a predictions log. Its one detector, ``fake``, reports the
    level of the highest entry of ``levels`` (images classified → level) reached."""

    def __init__(self, root: Path, levels: dict[int, int], work: bool = True, model: str = "digits_cnn") -> None:
        self.inbox, self.processed, self.state = root / "inbox", root / "processed", root / "state"
        for folder in (self.inbox, self.processed, self.state):
            folder.mkdir(parents=True, exist_ok=True)
        self.levels = levels
        self.work = work
        self.model = model
        #: While set, /metrics answers 503, as a daemon too busy to be scraped would fail.
        self.silent = False
        self.classified = 0
        self.seen_names: list[str] = []
        self._stop = threading.Event()
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/readyz":
                    body, kind = json.dumps({"ready": True, "reason": "ready"}), "application/json"
                elif self.path == "/metrics" and daemon.silent:
                    self.send_error(503)
                    return
                elif self.path == "/metrics":
                    body, kind = daemon.exposition(), "text/plain; version=0.0.4"
                else:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._threads = [
            threading.Thread(target=self.server.serve_forever, daemon=True),
            threading.Thread(target=self._process, daemon=True),
        ]

    def level(self) -> int:
        return max([level for count, level in self.levels.items() if self.classified >= count], default=0)

    def exposition(self) -> str:
        labels = 'detector="fake",type="over",signal="confidence"'
        return (
            f'monitord_build_info{{version="0",model="{self.model}",device="cpu"}} 1\n'
            f'monitord_images_total{{source="folder",outcome="ok"}} {self.classified}\n'
            f'monitord_images_total{{source="folder",outcome="rejected"}} 0\n'
            f"monitord_drift_statistic{{{labels}}} {self.level() * 0.6}\n"
            f"monitord_drift_threshold{{{labels}}} 1.0\n"
            f"monitord_drift_level{{{labels}}} {self.level()}\n"
        )

    def _process(self) -> None:
        while not self._stop.wait(0.01):
            if not self.work:
                continue
            for path in sorted(self.inbox.rglob("*.png")):
                relative = path.relative_to(self.inbox)
                if relative.name.startswith("."):
                    continue
                with Image.open(path) as image:
                    mean = float(np.asarray(image).mean())
                target = self.processed / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                record = {"id": relative.as_posix(), "time": "2026-01-01T00:00:00.000+00:00",
                          "confidence": mean / 255, "signals": {"entropy": 1 - mean / 255}}
                with (self.state / "predictions.jsonl").open("a") as log:
                    log.write(json.dumps(record) + "\n")
                self.seen_names.append(relative.as_posix())
                self.classified += 1

    def __enter__(self) -> FakeDaemon:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> click.Group:
    """The plugin's commands on a fresh group, with settings isolated from the developer's."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("MONITORD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MONITORD_FOLDER__INBOX", str(tmp_path / "inbox"))
    monkeypatch.setenv("MONITORD_FOLDER__PROCESSED", str(tmp_path / "processed"))
    monkeypatch.setenv("MONITORD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MONITORD_HTTP__PORT", str(free_port()))
    group = click.Group("monitord")
    plugin.register_commands(group)
    return group


# -- the command against the stand-in ----------------------------------------------------------


def test_demo_writes_the_scenario_follows_the_levels_and_summarises(cli: click.Group, tmp_path: Path) -> None:
    with FakeDaemon(tmp_path, levels={120: 1, 190: 2}) as daemon:
        args = ["demo", "--daemon-url", daemon.url, "--change-daemon-state", "--rate", "100",
                "--clean", "100", "--drifted", "1.5s", "--plot", "out/demo.png"]
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    out = result.output
    # Every image reached the inbox under this run's names, in class sub-folders.
    assert daemon.classified == 250
    names = sorted(daemon.seen_names)
    assert all(re.fullmatch(r"\d/demo-\w+-\d{6}\.png", name) for name in names)
    labels = held_out_digits()[1]
    assert [int(name[0]) for name in sorted(names, key=lambda n: n[-10:])] == [labels[i % 360] for i in range(250)]
    # The live lines and the summary.
    warning = re.search(r"\] fake: warning \(level 1\), (\d+) images after the change", out)
    drift = re.search(r"\] fake: drift \(level 2\), (\d+) images after the change", out)
    assert warning and drift, out
    # Polls come every 0.2 s, 20 images at this rate.
    assert 20 <= int(warning.group(1)) <= 60 and 90 <= int(drift.group(1)) <= 130
    assert "BEFORE the change" not in out
    assert "250 to " in out and "100 clean, then 150 drifted" in out
    assert "drift started      1.0 s after the first image, after 100 clean images" in out
    assert "daemon handled     250 classified, 0 rejected" in out
    assert re.search(r"fake  +warning \d+ images after the change \([\d.]+ s\); drift \d+ images[^;]*$", out, re.M)
    assert "no detector left level 0" in out
    plot = tmp_path / "out" / "demo.png"
    assert f"plot               {plot}" in out
    assert_valid_png(plot)


def test_a_false_alarm_on_clean_images_is_called_one(cli: click.Group, tmp_path: Path) -> None:
    with FakeDaemon(tmp_path, levels={40: 2}) as daemon:
        args = ["demo", "--daemon-url", daemon.url, "--change-daemon-state", "--rate", "200", "--clean", "150",
                "--drifted", "20"]
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "fake: drift (level 2) BEFORE the change, on clean images" in result.output
    assert "false drift alarm from fake" in result.output
    assert "drift before the change; no new level after the change (drift at the end)" in result.output
    assert_valid_png(tmp_path / "monitord-demo.png")


def test_a_plot_that_cannot_be_written_fails_the_demo_after_the_summary(cli: click.Group, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    with FakeDaemon(tmp_path, levels={}) as daemon:
        args = ["demo", "--daemon-url", daemon.url, "--change-daemon-state", "--rate", "200", "--clean", "5",
                "--drifted", "5", "--plot", "taken/demo.png"]
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert re.search(r"plot +not written: cannot write taken/demo.png", result.output)
    assert "Error: the plot was not written: cannot write taken/demo.png" in result.output
    assert "choose another file with --plot" in result.output


def test_a_daemon_that_takes_no_images_is_reported(tmp_path: Path) -> None:
    with FakeDaemon(tmp_path, levels={}, work=False) as daemon:
        images = list(demo_images(Scenario(clean=5, drifted=5), *held_out_digits()))
        session = DemoSession(
            DaemonClient(daemon.url), InboxWriter(daemon.inbox, "t"), images,
            rate=100, clean=5, say=lambda line: None, stall_timeout=0.5, poll_interval=0.05,
        )
        with pytest.raises(DemoError, match=r"took none of the 10 images written to .*inbox in 0.5 s; it is "
                                             r"probably watching another folder"):
            session.run()


def session(daemon: FakeDaemon, images: int, patience: float) -> DemoSession:
    stream = list(demo_images(Scenario(clean=images // 2, drifted=images - images // 2), *held_out_digits()))
    return DemoSession(DaemonClient(daemon.url), InboxWriter(daemon.inbox, "s"), stream, rate=100,
                       clean=images // 2, say=lambda line: None, stall_timeout=patience, poll_interval=0.05)


def test_a_missed_scrape_is_forgiven_but_a_silent_daemon_is_not(tmp_path: Path) -> None:
    with FakeDaemon(tmp_path / "busy", levels={}) as daemon:
        busy = session(daemon, 60, patience=1.5)
        threading.Timer(0.1, lambda: setattr(daemon, "silent", True)).start()
        threading.Timer(0.6, lambda: setattr(daemon, "silent", False)).start()
        assert busy.run().last.classified == 60
    with FakeDaemon(tmp_path / "gone", levels={}) as daemon:
        gone = session(daemon, 200, patience=0.5)
        threading.Timer(0.2, lambda: setattr(daemon, "silent", True)).start()
        with pytest.raises(DemoError, match=r"stopped answering at http://127.0.0.1:\d+/metrics: .*"
                                            r"\(no answer for 0.5 s\)"):
            gone.run()


def test_a_daemon_deaf_to_sigterm_is_killed_and_that_is_said(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"up\n"
    started = StartedDaemon(process, tmp_path / "log")
    assert started.stop(0.5) == "the daemon did not stop within 0.5 s of SIGTERM and was killed"
    assert process.returncode == -9
    process.stdout.close()


def test_a_daemon_url_where_nothing_answers_is_reported(cli: click.Group) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["demo", "--daemon-url", url, "--change-daemon-state"])
    assert result.exit_code == 1
    assert f"Error: no daemon answers at {url}; start it (`monitord run` with the same settings)" in result.output
    assert "Traceback" not in result.output


def test_without_the_folder_source_it_refuses_to_feed_a_running_daemon(
    cli: click.Group, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MONITORD_SOURCES", '["http"]')
    result = CliRunner().invoke(cli, ["demo", "--daemon-url", "http://127.0.0.1:1", "--change-daemon-state"])
    assert result.exit_code == 1
    assert "the folder source is not enabled (sources = ['http']); add \"folder\" to sources" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clean", "lots"], "'lots' is neither a number of images (300) nor of seconds (15s)"),
        (["--drifted", "-5"], "'-5' is negative"),
        (["--drift", "class-mix", "--classes", "1,x"], "give class numbers separated by commas"),
        (["--drift", "class-mix", "--classes", "1,10"], "class-mix classes [10] do not exist"),
        (["--drift", "invert", "--amount", "3"], "must be between 0 and 1, got 3.0"),
        (["--drifted", "0"], "at least 0 clean and 1 drifted image"),
        (["--rate", "0"], "--rate"),
        (["--change-daemon-state"], "--change-daemon-state only applies with --daemon-url"),
        (["--daemon-url", "http://127.0.0.1:1", "--change-daemon-state", "--port", "9000"],
         "--workdir and --port are for the demo's own daemon"),
    ],
)
def test_bad_options_exit_2_with_the_reason(cli: click.Group, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["demo", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_settings_errors_exit_2(cli: click.Group, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[folder]\nsettle_seconds = -1\n")
    result = CliRunner().invoke(cli, ["demo", "--config", str(bad)])
    assert result.exit_code == 2 and "folder.settle_seconds = -1" in result.output


def test_a_started_daemon_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    """The real ``monitord run``, with a model type no plugin registers: it exits, and
    the demo says so with the end of the daemon's log."""
    port = free_port()
    environment = {**os.environ, "MONITORD_STATE_DIR": str(tmp_path / "state"), "MONITORD_HTTP__PORT": str(port),
                   "MONITORD_MODEL__TYPE": "nope"}
    started = StartedDaemon.start(tmp_path / "state" / "daemon.log", environment, cwd=tmp_path)
    try:
        with pytest.raises(DemoError, match=r"(?s)the daemon exited with status \d+ before it was ready; "
                                            r"the end of its log .*daemon.log.*nope"):
            wait_until_ready(DaemonClient(f"http://127.0.0.1:{port}"), 60, started)
    finally:
        started.stop(5)


# -- the pieces --------------------------------------------------------------------------------


def test_images_are_written_atomically_under_a_hidden_temporary_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = InboxWriter(tmp_path / "inbox", "r1")
    image = DemoImage(seq=7, pixels=held_out_digits()[0][0], label=4, intensity=0.0)
    replaced = []
    real_replace = os.replace

    def watching_replace(source: str | Path, target: str | Path) -> None:
        assert not Path(target).exists()  # nothing under the real name before the rename
        replaced.append((Path(source).name, Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", watching_replace)
    path = writer.write(image)
    assert path == tmp_path / "inbox" / "4" / "demo-r1-000007.png"
    ((temporary, target),) = replaced
    assert temporary.startswith(".demo-r1-000007.png.") and temporary.endswith(".tmp") and target == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["demo-r1-000007.png"]
    with Image.open(path) as decoded:
        assert decoded.format == "PNG" and np.array_equal(np.asarray(decoded), image.pixels)
    unlabeled = InboxWriter(tmp_path / "flat", "r1", labels=False)
    assert unlabeled.write(image) == tmp_path / "flat" / "demo-r1-000007.png"


def test_predictions_are_matched_to_this_runs_images_only(tmp_path: Path) -> None:
    writer = InboxWriter(tmp_path / "inbox", "abc")
    assert writer.seq_of("3/demo-abc-000012.png") == 12 and writer.seq_of("demo-abc-000001.png") == 1
    assert writer.seq_of("3/demo-abcd-000012.png") is None and writer.seq_of("x/demo-abc-1.jpg") is None
    record = {"id": "3/demo-abc-000012.png", "time": "2026-01-01T00:00:00.000+00:00", "class": "3",
              "confidence": 0.9, "signals": {"entropy": 0.2}, "label": "3", "correct": True}
    log = tmp_path / "predictions.jsonl"
    log.write_text(
        json.dumps({**record, "id": "3/demo-old-000012.png"}) + "\n"
        + '{"id": "3/demo-abc-000013.png", "conf\n'  # cut by rotation
        + json.dumps(record) + "\n"
    )
    (found,) = read_predictions_log(log, writer).values()
    assert (found.seq, found.confidence, found.entropy, found.correct) == (12, 0.9, 0.2, True)
    assert read_predictions_log(tmp_path / "missing.jsonl", writer) == {}
    processed = tmp_path / "processed"
    (processed / "3").mkdir(parents=True)
    (processed / "3" / "demo-abc-000012.png.json").write_text(json.dumps(record))
    images = [DemoImage(12, np.zeros((8, 8), np.uint8), 3, 0.0), DemoImage(13, np.zeros((8, 8), np.uint8), 3, 0.0)]
    assert list(read_prediction_files(processed, writer, images)) == [12]


METRICS = """\
# TYPE monitord_images_total counter
monitord_images_total{outcome="ok",source="folder"} 120.0
monitord_images_total{outcome="rejected",source="folder"} 2.0
monitord_images_total{outcome="error",source="folder"} 1.0
monitord_images_total{outcome="ok",source="http"} 50.0
# TYPE monitord_drift_statistic gauge
monitord_drift_statistic{detector="pht_confidence",signal="confidence",type="pht"} 3.5
monitord_drift_statistic{detector="iks_entropy",signal="entropy",type="iks"} 0.1
# TYPE monitord_drift_threshold gauge
monitord_drift_threshold{detector="pht_confidence",signal="confidence",type="pht"} 7.0
monitord_drift_threshold{detector="iks_entropy",signal="entropy",type="iks"} 0.2
# TYPE monitord_drift_level gauge
monitord_drift_level{detector="pht_confidence",signal="confidence",type="pht"} 1.0
monitord_drift_level{detector="iks_entropy",signal="entropy",type="iks"} 0.0
"""


def test_metrics_are_read_the_way_prometheus_reads_them() -> None:
    observation = parse_metrics(METRICS, observed_at=5.0)
    assert (observation.time, observation.classified, observation.rejected) == (5.0, 120, 3)
    assert observation.detectors["pht_confidence"] == DetectorReading(
        "pht_confidence", "pht", "confidence", 3.5, 7.0, 1
    )
    assert observation.detectors["iks_entropy"].level == 0


def observation(at: float, classified: int, **levels: int) -> Observation:
    return Observation(at, classified, 0, {
        name: DetectorReading(name, "t", "s", float(level), 1.0, level) for name, level in levels.items()
    })


def test_levels_are_timed_in_images_after_the_change() -> None:
    tracker = LevelTracker(start_time=100.0, baseline_classified=1000, clean=300)
    assert tracker.add(observation(100.0, 1000, a=0, b=2, c=0, d=0)) == []  # b was alarmed already
    assert tracker.add(observation(110.0, 1250, a=1, b=2, c=0, d=0)) == [
        "[  10.0 s] a: warning (level 1) BEFORE the change, on clean images"
    ]
    assert tracker.add(observation(111.0, 1280, a=0, b=2, c=0, d=0)) == []
    assert tracker.add(observation(112.0, 1290, a=1, b=2, c=0, d=0)) == []  # each level once
    assert tracker.add(observation(120.0, 1300, a=0, b=2, c=0, d=0)) == []
    assert tracker.add(observation(125.0, 1390, a=2, b=0, c=1, d=2)) == [
        "[  25.0 s] a: drift (level 2), 90 images after the change",
        "[  25.0 s] c: warning (level 1), 90 images after the change",
        "[  25.0 s] d: drift (level 2), 90 images after the change",
    ]
    # c reaches drift later; a restarts and alarms again, which is counted, not printed;
    # d warns after its drift, which is no news.
    assert tracker.add(observation(126.0, 1410, a=0, b=0, c=2, d=0)) == [
        "[  26.0 s] c: drift (level 2), 110 images after the change"
    ]
    assert tracker.add(observation(127.0, 1430, a=2, b=0, c=2, d=1)) == []
    a, b, c = tracker.timelines["a"], tracker.timelines["b"], tracker.timelines["c"]
    assert a.before_change == 1 and a.after_change == {1: (25.0, 90), 2: (25.0, 90)} and a.drift_alarms == 2
    assert b.initial_level == 2 and b.after_change == {}
    assert c.after_change == {1: (25.0, 90), 2: (26.0, 110)} and c.drift_alarms == 1
    summary = format_summary(
        DemoOutcome("rotation 90 (degrees), abrupt", 900, 300, "/in", 20.0, 900, 0, 15.0, "/p.png"), tracker
    )
    assert ("  a                  warning before the change; drift 90 images after the change "
            "(25.0 s); 2 drift alarms in all") in summary
    assert "  b                  already at level 2 when the demo started; stayed ok (level 0)" in summary
    assert ("  c                  warning 90 images after the change (25.0 s); "
            "drift 110 images after the change (26.0 s)\n") in summary
    assert "  d                  drift 90 images after the change (25.0 s)\n" in summary
    assert "  before the change  warning (no drift) from a" in summary
    assert "  drift started      15.0 s after the first image, after 300 clean images" in summary
    assert "  plot               /p.png" in summary


def test_another_program_on_the_port_is_not_taken_for_the_daemon() -> None:
    class NotMonitord(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotMonitord)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = DaemonClient(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(DemoError, match="answered HTTP 200 but not as monitord does; another program"):
            client.readiness()
    finally:
        server.shutdown()
        server.server_close()
    assert DaemonClient(f"http://127.0.0.1:{free_port()}").readiness().answered is False


def test_the_plot_is_a_png_even_with_nothing_to_show(tmp_path: Path) -> None:
    from monitord_torchvision.demo_files import ImageSignals

    rng = np.random.default_rng(0)
    signals = {seq: ImageSignals(seq, float(rng.uniform(0.5, 1)), float(rng.uniform(0, 1)), None) for seq in range(60)}
    polls = [observation(100.0 + t / 4, 10 * t, a=min(2, t // 5)) for t in range(16)]
    path = write_plot(tmp_path / "sub" / "p.png", signals=signals, write_times=[100 + s / 20 for s in range(60)],
                      drifted=set(range(30, 60)), observations=polls, start_time=100.0,
                      change_seconds=1.5, ramp_seconds=0.5)
    assert_valid_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["p.png"]  # no temporary left behind
    empty = write_plot(tmp_path / "empty.png", signals={}, write_times=[], drifted=set(), observations=[],
                       start_time=0.0, change_seconds=None)
    assert_valid_png(empty)


# -- the user's own state is left alone (issue 15, item 2) -------------------------------------------


class UserSetup:
    """A user's checkout: settings in the environment naming their state, folders and trained
    model, an empty working folder, and a TMPDIR of its own to see what the demo leaves."""

    def __init__(self, root: Path, artifact: Path, port: int) -> None:
        self.home, self.cwd, self.tmp = root / "user", root / "cwd", root / "tmp"
        for folder in (self.home, self.cwd, self.tmp):
            folder.mkdir(parents=True)
        self.artifact = self.home / "state" / "model"
        shutil.copytree(artifact, self.artifact)
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("MONITORD_")}
        self.env.update({
            "MONITORD_STATE_DIR": str(self.home / "state"),
            "MONITORD_HTTP__PORT": str(port),
            "MONITORD_FOLDER__INBOX": str(self.home / "inbox"),
            "MONITORD_FOLDER__PROCESSED": str(self.home / "processed"),
            "MONITORD_FOLDER__FAILED": str(self.home / "failed"),
            "MONITORD_MODEL__ARTIFACT": str(self.artifact),
            "MONITORD_MODEL__DEVICE": "cpu",
            "TMPDIR": str(self.tmp),
            "PYTHONUNBUFFERED": "1",
        })
        self.before = self.files()

    def files(self) -> dict[str, bytes]:
        """Every file of the user's folders, with its contents."""
        return {str(path.relative_to(self.home)): path.read_bytes() for path in self.home.rglob("*") if path.is_file()}

    def assert_untouched(self) -> None:
        assert self.files() == self.before
        assert sorted(p.name for p in self.home.iterdir()) == ["state"]
        assert list(self.tmp.iterdir()) == []

    def demo(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "monitord", "demo", *args]


def demo_port(out: str) -> int:
    found = re.search(r"  daemon  http://127.0.0.1:(\d+) \(the demo's own\)", out)
    assert found, out
    return int(found.group(1))


def test_a_demo_leaves_nothing_but_its_plot_and_feeds_only_its_own_daemon(tmp_path: Path, artifact_dir: Path) -> None:
    """A newcomer's ``monitord demo`` with a daemon of theirs running on the settings' port:
    the demo starts its own daemon in a temporary folder with the user's trained model (read
    only) and the default detectors, shows drift, and leaves the user's state, folders,
    daemon and TMPDIR as they were: only the plot is new, and its path is printed."""
    with FakeDaemon(tmp_path / "running", levels={}) as users_daemon:
        user = UserSetup(tmp_path, artifact_dir, port=int(users_daemon.url.rsplit(":", 1)[1]))
        users_daemon.inbox = user.home / "inbox"  # the user's daemon watches the user's inbox
        args = ["--rate", "80", "--clean", "300", "--drifted", "400", "--drift", "rotation"]
        completed = subprocess.run(user.demo(*args), cwd=user.cwd, env=user.env, capture_output=True, text=True,
                                   timeout=300)
    out = completed.stdout
    assert completed.returncode == 0, f"{out}\n{completed.stderr}"
    assert users_daemon.seen_names == []
    assert re.search(r"daemon handled +700 classified, 0 rejected", out), out
    assert f"  model   {user.artifact} (model.artifact, read only)" in out
    assert "drift (level 2) BEFORE the change" not in out, out
    drifts = re.findall(r"\] (\w+): drift \(level 2\), (\d+) images after the change", out)
    assert {name for name, _ in drifts} - {"hddm_a_error"}, out  # seen from the model's own signals
    plot = user.cwd / "monitord-demo.png"
    assert re.search(rf"plot +{re.escape(str(plot))}$", out, re.M), out
    assert_valid_png(plot)
    assert [p.name for p in user.cwd.iterdir()] == ["monitord-demo.png"]
    user.assert_untouched()
    assert re.search(r"removed the demo's temporary folder .*/tmp/monitord-demo-\w+$", out, re.M), out
    assert DaemonClient(f"http://127.0.0.1:{demo_port(out)}").readiness().answered is False  # its daemon is gone


def test_ctrl_c_stops_the_demos_daemon_and_removes_its_folder(tmp_path: Path, artifact_dir: Path) -> None:
    user = UserSetup(tmp_path, artifact_dir, port=free_port())
    process = subprocess.Popen(user.demo("--rate", "20", "--clean", "2000"), cwd=user.cwd, env=user.env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if "  plan    " in line:
                break
        assert any("  plan    " in line for line in seen), "".join(seen)
        port = demo_port("".join(seen))
        workspace = next(user.tmp.glob("monitord-demo-*"))
        deadline = time.monotonic() + 60
        while not list((workspace / "processed").rglob("*.png")):  # the daemon is taking images
            assert time.monotonic() < deadline, "".join(seen)
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:  # the test failed: still let the demo stop its daemon
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    out = "".join(seen) + rest
    assert process.returncode != 0, out
    assert "stopped the demo's daemon (SIGTERM)" in out and "removed the demo's temporary folder" in out, out
    assert DaemonClient(f"http://127.0.0.1:{port}").readiness().answered is False
    assert list(user.cwd.iterdir()) == []  # interrupted: no plot either
    user.assert_untouched()


def test_workdir_keeps_the_demos_folders_and_must_be_new_or_empty(tmp_path: Path, artifact_dir: Path) -> None:
    user = UserSetup(tmp_path, artifact_dir, port=free_port())
    workdir = tmp_path / "kept"
    args = ["--rate", "100", "--clean", "30", "--drifted", "30", "--workdir", str(workdir), "--plot", "p.png"]
    completed = subprocess.run(user.demo(*args), cwd=user.cwd, env=user.env, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert f"in {workdir} (kept at the end (--workdir))" in completed.stdout
    assert len(list((workdir / "processed").rglob("*.png"))) == 60
    assert (workdir / "state" / "predictions.jsonl").is_file() and (workdir / "daemon.log").is_file()
    user.assert_untouched()
    again = subprocess.run(user.demo(*args), cwd=user.cwd, env=user.env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1
    assert f"--workdir {workdir} is not an empty folder; give a new or empty one" in again.stderr


def test_a_running_daemon_is_fed_only_when_told_it_may_change_its_state(cli: click.Group, tmp_path: Path) -> None:
    with FakeDaemon(tmp_path, levels={}) as daemon:
        refused = CliRunner().invoke(cli, ["demo", "--daemon-url", daemon.url, "--clean", "5", "--drifted", "5"])
        assert refused.exit_code == 2
        assert (f"--daemon-url {daemon.url}: feeding that daemon drifted digits leaves its detectors at drift"
                in refused.output)
        assert "adds 10 images to its processed folder and predictions log" in refused.output
        assert "Add --change-daemon-state if that is what you want" in refused.output
        assert daemon.seen_names == [] and not (tmp_path / "monitord-demo.png").exists()
        allowed = CliRunner().invoke(cli, ["demo", "--daemon-url", daemon.url, "--change-daemon-state",
                                           "--rate", "200", "--clean", "5", "--drifted", "5"])
    assert allowed.exit_code == 0, allowed.output
    assert daemon.classified == 10


def test_a_running_daemon_serving_another_model_is_refused(cli: click.Group, tmp_path: Path) -> None:
    with FakeDaemon(tmp_path, levels={}, model="resnet18") as daemon:
        result = CliRunner().invoke(cli, ["demo", "--daemon-url", daemon.url, "--change-daemon-state"])
    assert result.exit_code == 1
    assert f"the daemon at {daemon.url} serves 'resnet18', not the default digits model (digits_cnn)" in result.output
    assert "the demo writes 8x8 grayscale digits and needs the default digits model" in result.output
    assert daemon.seen_names == [] and list(daemon.inbox.iterdir()) == []


def resnet_artifact(folder: Path) -> Path:
    from monitord_torchvision.artifact import ArtifactMetadata, write_metadata

    folder.mkdir(parents=True)
    write_metadata(folder, ArtifactMetadata(format_version=1, architecture="resnet18", class_names=["cat", "dog"],
                                            input_size=(224, 224), channels=3, mean=(0.5,) * 3, std=(0.2,) * 3))
    return folder


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"MONITORD_MODEL__ARCHITECTURE": "resnet18", "MONITORD_MODEL__WEIGHTS": "w.safetensors"},
         "model.architecture = 'resnet18' is set, so the daemon serves that model"),
        ({"MONITORD_MODEL__ARTIFACT": "RESNET"},
         "is not the digits model (architecture 'resnet18', not 'digits_cnn'; classes cat, dog, not the digits "
         "0 to 9; input 3x224x224, not 1x8x8)"),
        ({"MONITORD_MODEL__TYPE": "onnx"}, "model.type = 'onnx' is not the torchvision plugin's model"),
    ],
)
def test_settings_for_another_model_are_refused_before_any_file_is_written(
    cli: click.Group, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], message: str
) -> None:
    artifact = resnet_artifact(tmp_path / "resnet")
    for name, value in settings.items():
        monkeypatch.setenv(name, str(artifact) if value == "RESNET" else value)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "the demo writes 8x8 grayscale digits and needs the default digits model" in result.output
    assert sorted(tmp_path.rglob("*")) == before  # no folder, no daemon log, no plot
