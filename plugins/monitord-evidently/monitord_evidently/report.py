"""The Evidently report of a window of predictions against the model's reference.

Two Evidently reports make it: data drift (every signal and the predicted class, window
against reference, Evidently's default test per column: K-S or chi-square on a reference
of up to 1000 rows, Wasserstein or Jensen-Shannon distance above) and, where the window
has labelled predictions, classification quality on those (the reference keeps no
per-image labels, so quality is the window's alone). The verdicts are read from
Evidently's own tests (a failed ``ValueDrift`` test is a drifted column), not recomputed.
"""

from __future__ import annotations

import html
import json
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from monitord.reference import Reference, ReferenceError, read_reference
from monitord.reference.store import reference_folder

from monitord_evidently.errors import ReportError
from monitord_evidently.frames import LABEL, PREDICTED, Frames, make_frames
from monitord_evidently.log_window import LoggedPredictions, read_window
from monitord_evidently.window import Window

#: Fewest predictions a window must hold: below it a drift test can tell almost nothing
#: (and Evidently's chi-square on the class mix refuses columns it sees only once).
MIN_ROWS = 30


@dataclass(frozen=True)
class DriftReport:
    """A finished report: the page for people and the document for machines."""

    html: str
    document: dict[str, Any]

    @property
    def drifted(self) -> list[str]:
        return list(self.document["drifted"])


def load_reference(artifact: Path) -> Reference:
    """The model artifact's drift reference; ``ReportError`` saying how to build one."""
    try:
        reference = read_reference(artifact)
    except ReferenceError as error:
        raise ReportError(str(error)) from None
    if reference is None:
        raise ReportError(f"the model at {artifact} has no drift reference ({reference_folder(artifact)} is missing); "
                          "build one with `monitord reference DIR` (validation images, one folder per class), or "
                          "set model.artifact to the model the daemon serves")
    return reference


def report_for(state_dir: Path, artifact: Path, window: Window, now: datetime | None = None) -> DriftReport:
    """The report on ``window`` of the predictions log in ``state_dir`` against ``artifact``'s reference."""
    reference = load_reference(artifact)
    logged = read_window(state_dir, window, now)
    return make_report(reference, logged, window, source=str(reference_folder(artifact)))


def make_report(reference: Reference, logged: LoggedPredictions, window: Window, source: str = "") -> DriftReport:
    """Compare ``logged`` with ``reference`` through Evidently; ``ReportError`` when too few rows."""
    rows = len(logged.records)
    if rows < MIN_ROWS:
        newest = f" (the newest prediction is from {logged.newest})" if logged.newest else ""
        raise ReportError(f"{window.describe()} hold {rows} prediction(s) in {logged.files[0]}{newest}; a drift "
                          f"report needs at least {MIN_ROWS}: widen --window (a larger count, or a longer "
                          "duration such as 24h) or send the daemon more images")
    frames = make_frames(reference, logged.records)
    if not frames.signals and not frames.has_class:
        raise ReportError(f"the predictions in {logged.files[0]} share no signal with the reference "
                          f"({', '.join(sorted(reference.signals)[:8])}); was the log written by another model? "
                          "Build the reference again with `monitord reference DIR`")
    drift = _drift_snapshot(frames)
    verdicts = _drift_verdicts(drift)
    quality, quality_summary = _quality(frames, reference.class_names)
    document = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "window": {"text": window.text, "kind": window.kind, "rows": rows,
                   "first": logged.records[0]["time"], "last": logged.records[-1]["time"],
                   "files": [str(path) for path in logged.files], "unreadable_lines": logged.unreadable},
        "reference": {"path": source, "model": reference.model, "samples": reference.samples,
                      "accuracy": reference.summary.get("accuracy")},
        "signals": verdicts,
        "drifted": sorted(name for name, verdict in verdicts.items() if verdict["drifted"]),
        "not_compared": frames.missing,
        "predicted_classes": _class_shares(frames),
        "quality": quality_summary,
        "evidently": {"drift": json.loads(drift.json()),
                      "quality": None if quality is None else json.loads(quality.json())},
    }
    page = _page(document, drift.get_html_str(as_iframe=True),
                 None if quality is None else quality.get_html_str(as_iframe=True))
    return DriftReport(page, document)


def _drift_snapshot(frames: Frames) -> Any:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    categorical = [PREDICTED] if frames.has_class else []
    definition = DataDefinition(numerical_columns=frames.signals, categorical_columns=categorical)
    columns = frames.signals + categorical
    report = Report([DataDriftPreset(columns=columns)], include_tests=True)
    return report.run(Dataset.from_pandas(frames.current[columns], data_definition=definition),
                      Dataset.from_pandas(frames.reference[columns], data_definition=definition))


def _drift_verdicts(snapshot: Any) -> dict[str, dict[str, Any]]:
    """Column → Evidently's verdict, method, score and threshold, from its ValueDrift tests."""
    data = snapshot.dict()
    scores = {metric["id"]: metric["value"] for metric in data["metrics"]}
    verdicts = {}
    for test in data.get("tests", []):
        params = test["metric_config"]["params"]
        if params.get("type") != "evidently:metric_v2:ValueDrift":
            continue
        verdicts[params["column"]] = {
            "drifted": test["status"] == "FAIL",
            "method": params.get("method"),
            "score": _finite(scores.get(test["metric_config"]["metric_id"])),
            "threshold": params.get("threshold"),
        }
    return verdicts


def _quality(frames: Frames, class_names: tuple[str, ...]) -> tuple[Any, dict[str, Any] | None]:
    """Classification quality on the window's labelled predictions (none: ``(None, None)``)."""
    if not frames.has_class:
        return None, None
    known = set(class_names)
    labelled = frames.current[frames.current[LABEL].isin(known)][[PREDICTED, LABEL]].reset_index(drop=True)
    if labelled.empty:
        return None, None
    correct = int((labelled[LABEL] == labelled[PREDICTED]).sum())
    summary: dict[str, Any] = {"labelled": len(labelled), "correct": correct, "accuracy": correct / len(labelled)}
    classes = set(labelled[LABEL]) | set(labelled[PREDICTED])
    if len(classes) < 3:
        # Evidently 0.7.23 takes two classes for a binary task and fails (KeyError) on any
        # other labels than its own; one class has no quality metrics worth drawing.
        summary["note"] = (f"Evidently's classification dashboard needs labelled predictions of at least three "
                           f"classes; this window has {len(labelled)} of {', '.join(sorted(map(str, classes)))}")
        return None, summary
    from evidently import DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.presets import ClassificationPreset

    definition = DataDefinition(categorical_columns=[PREDICTED, LABEL], classification=[
        MulticlassClassification(target=LABEL, prediction_labels=PREDICTED)])
    with warnings.catch_warnings():
        # scikit-learn warns for every class never predicted (precision 0/0, reported as 0).
        warnings.simplefilter("ignore", UserWarning)
        snapshot = Report([ClassificationPreset()]).run(Dataset.from_pandas(labelled, data_definition=definition),
                                                        None)
    return snapshot, summary


def _class_shares(frames: Frames) -> dict[str, dict[str, float]] | None:
    if not frames.has_class:
        return None
    return {name: {str(key): float(value) for key, value in
                   table[PREDICTED].value_counts(normalize=True).sort_index().items()}
            for name, table in (("reference", frames.reference), ("window", frames.current))}


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _page(document: dict[str, Any], drift_frame: str, quality_frame: str | None) -> str:
    """One self-contained page: a short summary, then Evidently's reports (no asset fetched)."""
    window, reference = document["window"], document["reference"]
    drifted = document["drifted"]
    rows = "".join(
        f"<tr class='{'drifted' if verdict['drifted'] else 'ok'}'><td>{html.escape(name)}</td>"
        f"<td>{'drift' if verdict['drifted'] else 'no drift'}</td><td>{html.escape(str(verdict['method']))}</td>"
        f"<td>{_shown(verdict['score'])}</td><td>{_shown(verdict['threshold'])}</td></tr>"
        for name, verdict in sorted(document["signals"].items()))
    quality = document["quality"]
    quality_line = ("no labelled predictions in the window: no classification quality" if quality is None else
                    f"{quality['labelled']} labelled predictions, accuracy {quality['accuracy']:.3f}"
                    + (f" ({quality['note']})" if "note" in quality else ""))
    verdict = f"drift in {len(drifted)} of {len(document['signals'])} columns: {', '.join(drifted)}" if drifted \
        else f"no drift in any of {len(document['signals'])} columns"
    # Evidently's embeddable form leaves its <iframe> open (it expects to end a notebook
    # cell): closed here, or the rest of the page would be taken for the frame's fallback.
    sections = [f"<h2>Data drift: window against reference</h2>{drift_frame}</iframe>"]
    if quality_frame is not None:
        sections.append(f"<h2>Classification quality: labelled predictions of the window</h2>{quality_frame}</iframe>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>monitord report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9rem; }}
td, th {{ padding: 0.2rem 0.7rem; border-bottom: 1px solid #ddd; text-align: left; }}
tr.drifted td {{ color: #b00020; font-weight: 600; }}
.verdict {{ font-size: 1.1rem; }}
</style></head>
<body>
<h1>monitord report</h1>
<p>Window: {html.escape(_window_text(window))}, {window['rows']} predictions from {html.escape(window['first'])}
to {html.escape(window['last'])}. Reference: model {html.escape(reference['model'])}, {reference['samples']} images
({html.escape(reference['path'])}).</p>
<p class="verdict" id="verdict">{html.escape(verdict)}</p>
<p>{html.escape(quality_line)}</p>
<table id="signals"><thead><tr><th>column</th><th>verdict</th><th>test</th><th>score</th><th>threshold</th></tr>
</thead><tbody>{rows}</tbody></table>
{''.join(sections)}
</body></html>
"""


def _window_text(window: dict[str, Any]) -> str:
    return f"the last {window['text']} predictions" if window["kind"] == "count" else f"the last {window['text']}"


def _shown(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
