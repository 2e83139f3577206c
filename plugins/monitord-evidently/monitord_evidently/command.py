"""``monitord report``: the Evidently report of recent predictions, as HTML and JSON."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import click
from monitord.builtin.commands import ConfigurationError, config_option
from monitord.settings import SettingsError, load_settings

from monitord_evidently.errors import ReportError
from monitord_evidently.window import DEFAULT_WINDOW, WindowError, parse_window


class ReportFailed(click.ClickException):
    """Input no report can be made from: one line on standard error, exit status 2."""

    exit_code = 2


def default_out() -> Path:
    """``monitord-report-<UTC time>.html`` in the current folder: a new file each run."""
    return Path(f"monitord-report-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.html")


def report_command() -> click.Command:
    @click.command("report")
    @config_option
    @click.option("--window", "window_text", default=DEFAULT_WINDOW, show_default=True,
                  help="Which recent predictions: a count (1000: the last 1000) or a duration before now "
                       "(30m, 1h, 2d).")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
                  help="Where to write the HTML report [default: monitord-report-<UTC time>.html here].")
    @click.option("--json", "as_json", is_flag=True,
                  help="Print the report as JSON on standard output (the HTML is written too).")
    def report(config: Path | None, window_text: str, out: Path | None, as_json: bool) -> None:
        """An Evidently report: recent predictions from the predictions log against the model's
        drift reference.

        Drift of every signal and of the predicted class (Evidently's tests), the
        predicted-class distribution, and classification quality on the predictions that
        came with a label. Reads <state_dir>/predictions.jsonl (and its rotated files) and
        <model.artifact>/reference/, as the daemon with the same settings writes them.
        """
        try:
            window = parse_window(window_text)
        except WindowError as error:
            raise click.BadParameter(str(error), param_hint="--window") from None
        try:
            settings = load_settings(config)
        except SettingsError as error:
            raise ConfigurationError(str(error)) from None
        from monitord_evidently.report import report_for

        try:
            made = report_for(Path(settings.state_dir), settings.model_artifact, window)
        except ReportError as error:
            raise ReportFailed(str(error)) from None
        target = out or default_out()
        try:
            target.write_text(made.html, encoding="utf-8")
        except OSError as error:
            raise ReportFailed(f"cannot write the report to {target}: {error.strerror}; choose another --out") from None
        document = {**made.document, "html": str(target)}
        drifted = made.drifted
        line = (f"drift in {len(drifted)} of {len(document['signals'])} columns ({', '.join(drifted)})" if drifted
                else f"no drift in any of {len(document['signals'])} columns")
        summary = f"{line}; {document['window']['rows']} predictions; report written to {target}"
        if as_json:
            click.echo(summary, err=True)
            json.dump(document, sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            click.echo(summary)

    return report
