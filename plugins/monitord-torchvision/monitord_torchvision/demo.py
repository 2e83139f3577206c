"""``monitord demo``: a live drift scenario on real data, against a real daemon.

By default the demo starts its own ``monitord run`` in a temporary folder (state, inbox,
processed, failed) on a free port, with the user's model and detector settings, writes
held-out digits into its inbox (clean, then drifted), follows ``monitord_drift_level``
in ``/metrics``, and ends with a summary and a PNG plot. It then stops that daemon and
removes the folder (also after Ctrl-C or a failure): only the plot is left, and the
user's own state, folders and running daemon are never touched. ``--workdir`` keeps the
folder; ``--daemon-url`` feeds a daemon that is already running, which changes that
daemon's state and therefore needs ``--change-daemon-state``. Heavy imports
(matplotlib, scikit-learn, torch) happen inside the command so ``monitord --help`` stays
instant.
"""

from __future__ import annotations

import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
from monitord.settings import Settings, SettingsError, load_settings

from .cli import SettingsProblem
from .drifts import DRIFT_KINDS, DriftError
from .errors import DemoError
from .scenario import DEFAULT_MIX_CLASSES, Scenario

if TYPE_CHECKING:
    from .demo_daemon import DaemonClient, StartedDaemon
    from .demo_files import ImageSignals, InboxWriter
    from .demo_session import DemoSession, SessionResult
    from .scenario import DemoImage

#: Default plot file, in the current folder where a newcomer will look for it.
DEFAULT_PLOT = Path("monitord-demo.png")


@dataclass(frozen=True)
class Span:
    """A stretch of the scenario, given as a number of images or as seconds."""

    value: float
    seconds: bool

    def images(self, rate: float) -> int:
        return round(self.value * rate) if self.seconds else int(self.value)

    def __str__(self) -> str:
        return f"{self.value:g}s" if self.seconds else str(int(self.value))


class SpanType(click.ParamType):
    """``300`` (images) or ``15s`` (seconds at the chosen --rate)."""

    name = "span"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Span:
        if isinstance(value, Span):
            return value
        text = str(value).strip().lower()
        seconds = text.endswith("s")
        try:
            number = float(text[:-1]) if seconds else int(text)
        except ValueError:
            self.fail(f"{value!r} is neither a number of images (300) nor of seconds (15s)", param, ctx)
        if number < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return Span(number, seconds)


def _parse_classes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give class numbers separated by commas, e.g. 1,8") from None


_DRIFT_HELP = "; ".join(f"{k.name}: {k.describe}" for k in DRIFT_KINDS.values())
_AMOUNT_HELP = "; ".join(f"{k.name} {k.default_amount:g} ({k.unit})" for k in DRIFT_KINDS.values())


@click.command("demo")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MONITORD_CONFIG",
    help="Settings file (TOML), the same as the daemon's: the demo's own daemon takes its "
    "model and detectors; with --daemon-url, its inbox and state folder. Env: MONITORD_CONFIG.",
)
@click.option("--drift", "kind", type=click.Choice(list(DRIFT_KINDS)), default="rotation", show_default=True,
              help=f"What changes. {_DRIFT_HELP}.")
@click.option("--amount", type=float, help=f"The drift at full strength, in its units. Defaults: {_AMOUNT_HELP}.")
@click.option("--classes", callback=_parse_classes, metavar="N,N",
              help="class-mix only: the digits the mix shifts to.  [default: 1,8]")
@click.option("--change", type=click.Choice(["abrupt", "gradual"]), default="abrupt", show_default=True,
              help="All at once, or ramping up over --ramp.")
@click.option("--ramp", type=SpanType(), metavar="N|Ns", default="300", show_default=True,
              help="gradual only: images (or seconds, e.g. 15s) from the change to full drift.")
@click.option("--ramp-by", type=click.Choice(["share", "strength"]), default="share", show_default=True,
              help="gradual only: ramp the share of drifted images, or the strength of the drift.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Images written per second.")
@click.option("--clean", type=SpanType(), metavar="N|Ns", default="300", show_default=True,
              help="Clean images before the change (or seconds, e.g. 15s).")
@click.option("--drifted", type=SpanType(), metavar="N|Ns", default="600", show_default=True,
              help="Images from the change on (or seconds, e.g. 30s).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise and of the gradual share.")
@click.option("--labels/--no-labels", default=True, show_default=True,
              help="Write each image in its class's sub-folder, so the daemon knows the true label "
              "(its error-rate detector needs labels).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_PLOT,
              show_default=True, help="PNG file for the plot of signals and detector levels.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Run the demo's own daemon in this new or empty folder (state/, inbox/, processed/, "
              "failed/, daemon.log) and keep it.  [default: a temporary folder, removed at the end]")
@click.option("--port", type=click.IntRange(1, 65535),
              help="HTTP port of the demo's own daemon.  [default: a free port]")
@click.option("--daemon-url", metavar="URL",
              help="Feed the daemon already running at URL instead of starting one; its inbox and state "
              "folder come from the settings (--config). Needs --change-daemon-state.")
@click.option("--change-daemon-state", is_flag=True,
              help="With --daemon-url: accept that the demo leaves that daemon's detectors at drift, opens "
              "alerts to its sinks and adds its images to its processed folder and predictions log.")
@click.option("--ready-timeout", type=click.FloatRange(min=0), default=180.0, show_default=True,
              help="Seconds to wait for the daemon to be ready (it may train the model first).")
def demo_command(
    config_file: Path | None,
    kind: str,
    amount: float | None,
    classes: tuple[int, ...] | None,
    change: str,
    ramp: Span,
    ramp_by: str,
    rate: float,
    clean: Span,
    drifted: Span,
    seed: int,
    labels: bool,
    plot_path: Path,
    workdir: Path | None,
    port: int | None,
    daemon_url: str | None,
    change_daemon_state: bool,
    ready_timeout: float,
) -> None:
    """Show drift detection live: feed a daemon clean digits, then drifted ones.

    Starts its own `monitord run` in a temporary folder, on a free port, with the model and
    detectors of your settings; writes held-out digits (never seen in training) into its
    inbox at --rate per second, --clean of them unchanged, then --drifted ones changed by
    --drift; follows monitord_drift_level in /metrics as it goes from 0 (ok) to 1 (warning)
    and 2 (drift); prints a summary and writes a plot. Then it stops that daemon and
    removes the folder (also on Ctrl-C): only the plot is left, and your own state,
    folders and daemon are not touched. Needs the default digits model.
    """
    try:
        settings = load_settings(config_file)
    except SettingsError as error:
        raise SettingsProblem(str(error)) from None
    scenario = Scenario(
        kind=kind,
        amount=amount,
        clean=clean.images(rate),
        drifted=drifted.images(rate),
        change=change,  # type: ignore[arg-type]
        ramp=ramp.images(rate),
        ramp_by=ramp_by,  # type: ignore[arg-type]
        classes=classes if classes is not None else DEFAULT_MIX_CLASSES,
        seed=seed,
    )
    try:
        scenario.validate()
    except DriftError as error:
        raise click.UsageError(str(error)) from None
    _check_targets(workdir, port, daemon_url, change_daemon_state, scenario.total)
    play = Play(scenario, rate, labels, plot_path, ready_timeout)
    # A SIGTERM to the demo should stop its daemon and remove its folder, as Ctrl-C does.
    previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if daemon_url is None:
            _run_own_daemon(settings, play, workdir, port)
        else:
            _run_against(settings, play, daemon_url)
    except DemoError as error:
        raise click.ClickException(str(error)) from None
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _check_targets(
    workdir: Path | None, port: int | None, daemon_url: str | None, change_state: bool, images: int
) -> None:
    """Refuse option combinations that would do something other than what was asked."""
    if daemon_url is None:
        if change_state:
            raise click.UsageError("--change-daemon-state only applies with --daemon-url")
        return
    if workdir is not None or port is not None:
        raise click.UsageError(
            "--workdir and --port are for the demo's own daemon; leave them out with --daemon-url"
        )
    if not change_state:
        raise click.UsageError(
            f"--daemon-url {daemon_url}: feeding that daemon drifted digits leaves its detectors at "
            f"drift, opens alerts to its sinks and adds {images} images to its processed folder "
            "and predictions log. Add --change-daemon-state if that is what you want, or leave out "
            "--daemon-url and the demo runs its own daemon in a temporary folder"
        )


@dataclass(frozen=True)
class Play:
    """What to write and how, whichever daemon receives it."""

    scenario: Scenario
    rate: float
    labels: bool
    plot_path: Path
    ready_timeout: float


def _run_own_daemon(settings: Settings, play: Play, workdir: Path | None, port: int | None) -> None:
    """Start a daemon in a workspace of its own, play the scenario, remove the workspace."""
    from .demo_daemon import DaemonClient, StartedDaemon, wait_until_ready
    from .demo_model import artifact_to_reuse
    from .demo_workspace import Workspace, daemon_environment, free_port

    say = click.echo
    reused = artifact_to_reuse(settings)  # refuses another model before any file is written
    workspace = Workspace.create(workdir)
    try:
        port = port if port is not None else free_port()
        artifact = reused if reused is not None else workspace.state / "model"
        where = "temporary: removed at the end" if workspace.temporary else "kept at the end (--workdir)"
        say(f"starting `monitord run` for the demo in {workspace.root} ({where})")
        if reused is not None:
            say(f"  model   {reused} (model.artifact, read only)")
        else:
            say(f"  model   none trained at {settings.model_artifact}: the demo's daemon trains the digits "
                f"model into {artifact} first")
        started = StartedDaemon.start(
            workspace.log, daemon_environment(settings, workspace, port, artifact), cwd=workspace.root,
            log_kept=not workspace.temporary,
        )
        client = DaemonClient(f"http://127.0.0.1:{port}")
        try:
            wait_until_ready(client, play.ready_timeout, started, say)
            played = _play(client, workspace.inbox, play, started)
        finally:
            # Stop first, say so after: a closed stdout must not leave the daemon running.
            problem = started.stop(settings.pipeline.shutdown_timeout + 15)
            say("stopped the demo's daemon (SIGTERM)" + (f"; {problem}" if problem else ""))
        _finish(play, played, workspace.predictions_log, workspace.processed)
    finally:
        workspace.remove()
        if workspace.temporary:
            say(f"removed the demo's temporary folder {workspace.root}")


def _run_against(settings: Settings, play: Play, url: str) -> None:
    """Play the scenario into the inbox of a daemon that is already running."""
    from .demo_daemon import DaemonClient, wait_until_ready
    from .demo_model import check_served_model

    if "folder" not in settings.sources:
        raise DemoError(
            f"the demo feeds the daemon through its inbox, but the folder source is not enabled "
            f"(sources = {settings.sources}); add \"folder\" to sources (MONITORD_SOURCES)"
        )
    client = DaemonClient(url)
    if not client.readiness().answered:
        raise DemoError(
            f"no daemon answers at {client.url}; start it (`monitord run` with the same settings), "
            "or leave out --daemon-url and the demo runs its own daemon in a temporary folder"
        )
    wait_until_ready(client, play.ready_timeout, None, click.echo)
    check_served_model(client.observe().model, client.url)
    played = _play(client, Path(settings.folder.inbox).resolve(), play, None)
    predictions_log = Path(settings.state_dir) / "predictions.jsonl" if settings.predictions_log.enabled else None
    processed = Path(settings.folder.processed) if settings.folder.write_prediction_json else None
    _finish(play, played, predictions_log, processed)


@dataclass
class Played:
    """What one run of the scenario wrote and saw."""

    images: list[DemoImage]
    writer: InboxWriter
    session: DemoSession
    result: SessionResult


def _play(client: DaemonClient, inbox: Path, play: Play, started: StartedDaemon | None) -> Played:
    from .demo_files import InboxWriter
    from .demo_session import DemoSession
    from .digits import held_out_digits
    from .scenario import demo_images

    say = click.echo
    scenario = play.scenario
    writer = InboxWriter(inbox, time.strftime("%H%M%S") + secrets.token_hex(2), play.labels)
    images = list(demo_images(scenario, *held_out_digits()))
    say(f"monitord demo: {scenario.describe()}")
    say(f"  daemon  {client.url}" + (" (the demo's own)" if started else ""))
    say(f"  inbox   {inbox}" + (" (class sub-folders carry the labels)" if play.labels else ""))
    say(f"  plan    {scenario.clean} clean images, then {scenario.drifted} drifted, at {play.rate:g}/s "
        f"(about {scenario.total / play.rate:.0f} s)")
    say(f"  watch   {client.url}/metrics (monitord_drift_level: 0 ok, 1 warning, 2 drift)")
    session = DemoSession(client, writer, images, rate=play.rate, clean=scenario.clean, say=say, started=started)
    result = session.run()
    return Played(images, writer, session, result)


def _collect_signals(
    predictions_log: Path | None, processed: Path | None, writer: InboxWriter, images: list[DemoImage], expected: int
) -> tuple[dict[int, ImageSignals], str | None]:
    """Per-image signals of this run, from wherever the daemon wrote them, or why none."""
    from .demo_files import read_prediction_files, read_predictions_log

    if predictions_log is None and processed is None:
        return {}, "neither predictions_log.enabled nor folder.write_prediction_json is on"
    deadline = time.monotonic() + 5.0
    while True:  # the predictions log is written by a background thread: let it catch up
        if predictions_log is not None:
            signals = read_predictions_log(predictions_log, writer)
        else:
            assert processed is not None
            signals = read_prediction_files(processed, writer, images)
        if len(signals) >= expected or time.monotonic() > deadline:
            return signals, None
        time.sleep(0.2)


def _finish(play: Play, played: Played, predictions_log: Path | None, processed: Path | None) -> None:
    """The summary and the plot."""
    from .demo_plot import write_plot
    from .demo_report import DemoOutcome, format_summary

    scenario, result, images = play.scenario, played.result, played.images
    tracker = played.session.tracker
    assert tracker is not None
    classified = result.last.classified - result.baseline.classified
    signals, signals_note = _collect_signals(predictions_log, processed, played.writer, images, classified)
    change_seconds = None if result.change_time is None else result.change_time - result.start_time
    plot: str | None = None
    plot_error = None
    try:
        write_plot(
            play.plot_path,
            signals=signals,
            write_times=result.write_times,
            drifted={image.seq for image in images if image.after_change},
            observations=tracker.observations,
            start_time=result.start_time,
            change_seconds=change_seconds,
            ramp_seconds=scenario.ramp_images / play.rate if scenario.ramp_images else None,
            title=f"monitord demo: {scenario.describe()}",
        )
        plot = str(play.plot_path.resolve())
    except OSError as error:
        plot_error = f"cannot write {play.plot_path}: {error.strerror or error}"
    outcome = DemoOutcome(
        scenario=scenario.describe(),
        written=result.written,
        clean=scenario.clean,
        inbox=str(played.writer.inbox),
        rate=play.rate,
        classified=classified,
        rejected=result.last.rejected - result.baseline.rejected,
        change_seconds=change_seconds,
        plot=plot,
        plot_note=plot_error,
    )
    click.echo(format_summary(outcome, tracker))
    if signals_note:
        click.echo(f"note: the plot shows no per-image signals: {signals_note}")
    if plot_error:
        raise DemoError(f"the plot was not written: {plot_error}; choose another file with --plot")
