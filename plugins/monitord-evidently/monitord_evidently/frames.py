"""The two tables Evidently compares: the model's reference and the window's predictions.

Both get one numeric column per signal they share, and ``predicted_class`` as the class
*name* (categorical), so Evidently tests the class mix with a categorical test rather
than reading class indices as numbers. The window keeps each prediction's ``label``
(None where it has none) for the classification quality.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from monitord.reference import Reference

#: The predicted class, by name: a signal of the model (its index) made categorical here.
PREDICTED = "predicted_class"
#: The true class where a label came with the image.
LABEL = "label"


@dataclass(frozen=True)
class Frames:
    reference: pd.DataFrame
    current: pd.DataFrame
    #: The numeric signal columns both tables hold, in the reference's order.
    signals: list[str]
    #: Reference signals the window's predictions lack (not compared).
    missing: list[str]
    #: Whether both tables hold ``predicted_class``.
    has_class: bool


def make_frames(reference: Reference, records: Sequence[dict[str, Any]]) -> Frames:
    """The reference's rows and the window's records as tables of their shared signals."""
    logged = set.intersection(*(set(record["signals"]) for record in records)) if records else set()
    names = [name for name in sorted(reference.signals) if name != PREDICTED]
    signals = [name for name in names if name in logged]
    missing = [name for name in names if name not in logged]
    reference_table = pd.DataFrame({name: np.asarray(reference.signals[name], dtype=np.float64) for name in signals})
    current_table = pd.DataFrame({name: np.fromiter((_number(record["signals"][name]) for record in records),
                                                    dtype=np.float64, count=len(records))
                                  for name in signals})
    has_class = PREDICTED in reference.signals
    if has_class:
        classes = reference.class_names
        reference_table[PREDICTED] = [classes[int(index)] for index in reference.signals[PREDICTED]]
        current_table[PREDICTED] = [record["class"] for record in records]
    current_table[LABEL] = [record.get("label") for record in records]
    return Frames(reference_table, current_table, signals, missing, has_class)


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)
