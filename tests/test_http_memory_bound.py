"""The memory bound the README states is the one the code computes (``monitord.memory_bound``),
and the overload benchmark checks the daemon's peak memory against it.

The README shows each term's formula in the words of ``Term.formula``; here each formula
is evaluated as written, with the settings' values, and must give the code's figure, for
the defaults and for settings changed one by one.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from monitord.memory_bound import MemoryBound, memory_bound
from monitord.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
DIGITS_INPUT_BYTES = 1 * 8 * 8 * 4  # the digits model: one 8 x 8 gray plane, float32
BASELINE = 840 * MiB


def evaluate(formula: str, settings: Settings, input_bytes: int, connections: int) -> int:
    """``formula`` as the README writes it, computed with the values of ``settings``."""
    expression = formula.replace("×", "*")
    expression = re.sub(r"(\d+) KiB", r"(\1 * 1024)", expression)
    expression = re.sub(r"(\d+) MiB", r"(\1 * 1048576)", expression)
    expression = re.sub(r"(\d+) bytes", r"\1", expression)
    expression = expression.replace("input bytes", str(input_bytes)).replace("connections", str(connections))

    def value(match: re.Match[str]) -> str:
        section, key = match.group(1), match.group(2)
        return str(getattr(getattr(settings, section), key))

    expression = re.sub(r"\b(http|pipeline|folder)\.([a-z_]+)\b", value, expression)
    assert re.fullmatch(r"[\d\s()*+,min]+", expression), f"{formula!r} has words the README does not define"
    return eval(expression, {"__builtins__": {}}, {"min": min})  # noqa: S307 - digits, operators and min only


def bound(settings: Settings, connections: int = 100) -> MemoryBound:
    return memory_bound(settings, baseline_bytes=BASELINE, input_bytes=DIGITS_INPUT_BYTES, connections=connections)


CHANGED = [
    {},
    {"http": {"max_concurrent_requests": 8, "max_body_bytes": 5 * MiB}},
    {"pipeline": {"decode_workers": 6, "max_image_pixels": 1_000_000, "max_batch_size": 7, "queue_size": 99}},
    {"folder": {"max_in_flight": 3, "max_file_bytes": MiB}},
    {"sources": ["http"]},
    {"sources": ["folder"]},
]


@pytest.mark.parametrize("changes", CHANGED, ids=lambda changes: ",".join(changes) or "defaults")
def test_each_formula_as_written_gives_the_figure_the_code_computes(changes: dict) -> None:
    settings = Settings.model_validate(changes)
    computed = bound(settings, connections=37)
    for term in computed.terms[1:]:  # the baseline is measured, not computed
        assert evaluate(term.formula, settings, DIGITS_INPUT_BYTES, 37) == term.bytes, term
    assert computed.terms[0].bytes == BASELINE
    assert computed.total == sum(term.bytes for term in computed.terms)


def test_the_readme_states_the_bound_the_code_computes() -> None:
    readme = (ROOT / "README.md").read_text()
    for term in bound(Settings()).terms:
        assert term.formula in readme, f"README does not state the {term.name} term as {term.formula!r}"
    # The example for the defaults, in GiB with one decimal, is the code's figure.
    words = " ".join(readme.split())  # as rendered: line breaks are spaces
    example = re.search(r"digits model \(baseline 840 MiB, 100 connections\) that is ([\d.]+) GiB", words)
    assert example is not None, "README lacks the bound for the defaults"
    assert float(example.group(1)) == round(bound(Settings()).total / (1 << 30), 1)


def test_the_overload_benchmark_checks_peak_memory_against_the_bound(digits_artifact: Path) -> None:
    """The benchmark's check uses the same function, with the baseline and peak it measured."""
    spec = importlib.util.spec_from_file_location("overload", ROOT / "benchmarks" / "overload.py")
    assert spec is not None and spec.loader is not None
    overload = importlib.util.module_from_spec(spec)
    sys.modules["overload"] = overload  # its dataclasses look their module up
    spec.loader.exec_module(overload)
    settings = Settings.model_validate({"sources": ["http"], "model": {"artifact": str(digits_artifact)}})
    args = argparse.Namespace(clients=20, light_clients=1)
    expected = memory_bound(settings, baseline_bytes=BASELINE, input_bytes=DIGITS_INPUT_BYTES, connections=23)
    under = overload.check_bound(settings, args, BASELINE, {"hwm": 1000 * 1024, "samples": [(0.0, 900 * 1024)]})
    assert under["bound_bytes"] == expected.total and under["within"] and under["peak_bytes"] == 1000 * MiB
    over_kb = expected.total // 1024 + 1
    over = overload.check_bound(settings, args, BASELINE, {"hwm": 0, "samples": [(1.0, over_kb)]})
    assert not over["within"] and over["peak_bytes"] == over_kb * 1024
