"""``monitord demo``: a live drift scenario on real data, against a real daemon.

It reads the same settings as ``monitord run`` (so the inbox, state folder and HTTP
address agree), starts ``monitord run`` itself when no daemon answers, writes held-out
digits into the inbox (clean, then drifted), follows ``monitord_drift_level`` in
``/metrics``, and ends with a summary and a PNG plot. Heavy imports (matplotlib,
scikit-learn) happen inside the command so ``monitord --help`` stays instant.
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
    help="Settings file (TOML), the same as the daemon's. Env: MONITORD_CONFIG.",
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
@click.option("--daemon-url", help="The daemon's HTTP address.  [default: from http.host and http.port]")
@click.option("--start-daemon/--no-start-daemon", default=True, show_default=True,
              help="Start `monitord run` (and stop it at the end) when no daemon answers.")
@click.option("--ready-timeout", type=click.FloatRange(min=0), default=180.0, show_default=True,
              help="Seconds to wait for the daemon to be ready (the first start trains the model).")
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
    daemon_url: str | None,
    start_daemon: bool,
    ready_timeout: float,
) -> None:
    """Show drift detection live: feed the daemon clean digits, then drifted ones.

    Writes held-out digits (never seen in training) into the daemon's inbox at --rate per
    second, --clean of them unchanged, then --drifted ones changed by --drift. Follows
    monitord_drift_level in /metrics as it goes from 0 (ok) to 1 (warning) and 2 (drift),
    then prints a summary and writes a plot. Starts `monitord run` with the same settings
    when no daemon answers, and stops it at the end.
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
    try:
        _run(settings, config_file, scenario, rate, labels, plot_path, daemon_url, start_daemon, ready_timeout)
    except DemoError as error:
        raise click.ClickException(str(error)) from None


def _run(
    settings: Settings,
    config_file: Path | None,
    scenario: Scenario,
    rate: float,
    labels: bool,
    plot_path: Path,
    daemon_url: str | None,
    start_daemon: bool,
    ready_timeout: float,
) -> None:
    from .demo_daemon import DaemonClient, StartedDaemon, daemon_url as settings_url, wait_until_ready
    from .demo_files import InboxWriter
    from .demo_session import DemoSession
    from .digits import held_out_digits
    from .scenario import demo_images

    say = click.echo
    if "folder" not in settings.sources:
        raise DemoError(
            f"the demo feeds the daemon through its inbox, but the folder source is not enabled "
            f"(sources = {settings.sources}); add \"folder\" to sources (MONITORD_SOURCES)"
        )
    client = DaemonClient(daemon_url or settings_url(settings))
    started = None
    if not client.readiness().answered:
        if not start_daemon:
            raise DemoError(
                f"no daemon answers at {client.url}; start one with `monitord run` (with the same "
                "settings), give its address with --daemon-url, or leave out --no-start-daemon"
            )
        log_path = Path(settings.state_dir) / "demo-daemon.log"
        say(f"no daemon answers at {client.url}; starting `monitord run` (its log: {log_path})")
        started = StartedDaemon.start(config_file, log_path)
        # A SIGTERM to the demo should stop the daemon it started too, not orphan it.
        previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        wait_until_ready(client, ready_timeout, started, say)
        inbox = Path(settings.folder.inbox).resolve()
        writer = InboxWriter(inbox, time.strftime("%H%M%S") + secrets.token_hex(2), labels)
        images = list(demo_images(scenario, *held_out_digits()))
        say(f"monitord demo: {scenario.describe()}")
        say(f"  daemon  {client.url}" + (" (started by the demo)" if started else ""))
        say(f"  inbox   {inbox}" + (" (class sub-folders carry the labels)" if labels else ""))
        say(f"  plan    {scenario.clean} clean images, then {scenario.drifted} drifted, at {rate:g}/s "
            f"(about {scenario.total / rate:.0f} s)")
        say(f"  watch   {client.url}/metrics (monitord_drift_level: 0 ok, 1 warning, 2 drift)")
        session = DemoSession(client, writer, images, rate=rate, clean=scenario.clean, say=say, started=started)
        result = session.run()
    finally:
        if started is not None:
            say("stopping the daemon the demo started (SIGTERM)")
            problem = started.stop(settings.pipeline.shutdown_timeout + 15)
            signal.signal(signal.SIGTERM, previous_handler)
            if problem:
                say(f"note: {problem}; its log: {started.log_path}")
    _finish(settings, scenario, rate, images, writer, session, result, plot_path)


def _collect_signals(
    settings: Settings, writer: InboxWriter, images: list[DemoImage], expected: int
) -> tuple[dict[int, ImageSignals], str | None]:
    """Per-image signals of this run, from wherever the daemon wrote them, or why none."""
    from .demo_files import read_prediction_files, read_predictions_log

    if not (settings.predictions_log.enabled or settings.folder.write_prediction_json):
        return {}, "neither predictions_log.enabled nor folder.write_prediction_json is on"
    deadline = time.monotonic() + 5.0
    while True:  # the predictions log is written by a background thread: let it catch up
        if settings.predictions_log.enabled:
            signals = read_predictions_log(Path(settings.state_dir) / "predictions.jsonl", writer)
        else:
            signals = read_prediction_files(Path(settings.folder.processed), writer, images)
        if len(signals) >= expected or time.monotonic() > deadline:
            return signals, None
        time.sleep(0.2)


def _finish(
    settings: Settings,
    scenario: Scenario,
    rate: float,
    images: list[DemoImage],
    writer: InboxWriter,
    session: DemoSession,
    result: SessionResult,
    plot_path: Path,
) -> None:
    from .demo_plot import write_plot
    from .demo_report import DemoOutcome, format_summary

    tracker = session.tracker
    assert tracker is not None
    classified = result.last.classified - result.baseline.classified
    signals, signals_note = _collect_signals(settings, writer, images, classified)
    change_seconds = None if result.change_time is None else result.change_time - result.start_time
    plot: str | None = None
    plot_error = None
    try:
        write_plot(
            plot_path,
            signals=signals,
            write_times=result.write_times,
            drifted={image.seq for image in images if image.after_change},
            observations=tracker.observations,
            start_time=result.start_time,
            change_seconds=change_seconds,
            ramp_seconds=scenario.ramp_images / rate if scenario.ramp_images else None,
            title=f"monitord demo: {scenario.describe()}",
        )
        plot = str(plot_path.resolve())
    except OSError as error:
        plot_error = f"cannot write {plot_path}: {error.strerror or error}"
    outcome = DemoOutcome(
        scenario=scenario.describe(),
        written=result.written,
        clean=scenario.clean,
        inbox=str(writer.inbox),
        rate=rate,
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
