"""The demo's picture: per-image signals and each detector's reading over time.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global
backend switch), so it works on a headless server and inside a test process. Detector
statistics have different units, so the plot shows each as a fraction of its own drift
threshold: every detector crosses the same line at 1.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .demo_daemon import Observation
from .demo_files import ImageSignals

#: Images in the running mean drawn over each signal.
ROLLING = 25

_CLEAN, _DRIFTED, _CHANGE = "#1f77b4", "#ff7f0e", "#d62728"


def _rolling_mean(values: np.ndarray, width: int) -> np.ndarray:
    if len(values) < width:
        return np.full(len(values), np.nan)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    means = (sums[width:] - sums[:-width]) / width
    return np.concatenate([np.full(width - 1, np.nan), means])


def write_plot(
    path: Path,
    *,
    signals: Mapping[int, ImageSignals],
    write_times: Sequence[float],
    drifted: set[int],
    observations: Sequence[Observation],
    start_time: float,
    change_seconds: float | None,
    ramp_seconds: float | None = None,
    title: str = "monitord demo",
) -> Path:
    """Draw the demo to a PNG at ``path`` (written atomically); return ``path``.

    Each image's signals are drawn at the time it was written (``write_times``, epoch
    seconds, by image number) and each detector reading at the time of its poll, so the
    gap between the change and a detector's reaction includes the daemon's latency.
    ``drifted`` holds the numbers of the images that were changed, ``start_time`` (epoch
    seconds) is the origin of the time axis, ``change_seconds`` where the drift began.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 10), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(4, 1, sharex=True, height_ratios=[2, 2, 2, 1.3])
    figure.suptitle(title)

    ordered = [signals[seq] for seq in sorted(signals) if seq < len(write_times)]
    times = np.array([write_times[s.seq] - start_time for s in ordered])
    is_drifted = np.array([s.seq in drifted for s in ordered], dtype=bool)
    for ax, label, values in (
        (axes[0], "confidence (top-1 probability)", np.array([s.confidence for s in ordered])),
        (axes[1], "entropy (nats)", np.array([s.entropy for s in ordered])),
    ):
        ax.set_ylabel(label)
        if len(ordered) == 0:
            ax.text(0.5, 0.5, "no predictions found for this run", transform=ax.transAxes, ha="center")
            continue
        ax.scatter(times[~is_drifted], values[~is_drifted], s=6, color=_CLEAN, alpha=0.5, label="clean image")
        ax.scatter(times[is_drifted], values[is_drifted], s=6, color=_DRIFTED, alpha=0.5, label="drifted image")
        ax.plot(times, _rolling_mean(values, ROLLING), color="black", lw=1.2, label=f"mean of {ROLLING}")
        ax.legend(loc="best", fontsize="small", markerscale=2)

    names = sorted({name for observation in observations for name in observation.detectors})
    poll_times = np.array([o.time - start_time for o in observations])
    ratio_ax, level_ax = axes[2], axes[3]
    for offset, name in zip(np.linspace(-0.08, 0.08, max(len(names), 1)), names):
        readings = [o.detectors.get(name) for o in observations]
        ratio = np.array([_ratio(r.statistic, r.threshold) if r else np.nan for r in readings])
        levels = np.array([r.level if r else np.nan for r in readings], dtype=np.float64)
        (line,) = ratio_ax.plot(poll_times, ratio, lw=1.4, label=name)
        level_ax.step(poll_times, levels + offset, where="post", lw=1.6, color=line.get_color(), label=name)
    ratio_ax.axhline(1.0, color="black", ls=":", lw=1)
    ratio_ax.set_ylabel("statistic / drift threshold")
    level_ax.set_ylabel("level")
    level_ax.set_yticks([0, 1, 2], ["ok", "warning", "drift"])
    level_ax.set_ylim(-0.3, 2.3)
    level_ax.set_xlabel("seconds since the first image was written")
    if names:
        ratio_ax.legend(loc="upper left", fontsize="small")
    else:
        ratio_ax.text(0.5, 0.5, "no detectors in /metrics", transform=ratio_ax.transAxes, ha="center")

    if change_seconds is not None:
        for ax in axes:
            ax.axvline(change_seconds, color=_CHANGE, ls="--", lw=1.2)
            if ramp_seconds:
                ax.axvspan(change_seconds, change_seconds + ramp_seconds, color=_CHANGE, alpha=0.08)
        axes[0].annotate(
            "drift starts", (change_seconds, 1.0), xycoords=("data", "axes fraction"),
            xytext=(4, -14), textcoords="offset points", color=_CHANGE,
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        )

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        figure.savefig(temporary, format="png", dpi=100)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _ratio(statistic: float, threshold: float) -> float:
    if not (math.isfinite(statistic) and math.isfinite(threshold)) or threshold <= 0:
        return math.nan
    return statistic / threshold
