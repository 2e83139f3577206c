"""notebooks/walkthrough.ipynb runs top to bottom and computes what its text says.

nbclient executes it in a kernel of this very interpreter (``python3`` is ipykernel's own
kernel spec, whose ``python`` jupyter_client replaces by ``sys.executable``), so the notebook
imports this tree's code and its ``monitord`` commands run this venv's. The temporary folder it
works in is made under pytest's (``TMPDIR``, which the kernel inherits).
"""

from __future__ import annotations

import ast
import base64
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

ROOT = Path(__file__).parents[1]
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"
#: The cells that call ``monitord report``, last in the notebook.
REPORT_TAG = "report"
#: ``monitord report``'s distribution: until it is part of this tree, the report cells are left
#: out of the run (once it is, they run, and fail loudly if the plugin is not installed).
REPORT_PLUGIN = ROOT / "plugins" / "monitord-evidently"
#: The rotated stream's first rotated image (``CHANGE`` in the notebook) and its length.
CHANGE = 600
STREAM_LENGTH = 1200

pytestmark = pytest.mark.timeout(600)


def tags(cell: nbformat.NotebookNode) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def tagged(notebook: nbformat.NotebookNode, tag: str) -> list[nbformat.NotebookNode]:
    cells = [cell for cell in notebook.cells if tag in tags(cell)]
    assert cells, f"no cell of {NOTEBOOK.name} is tagged {tag!r}"
    return cells


def result(cell: nbformat.NotebookNode) -> Any:
    """The value a cell ended with (its ``Out[n]``), read back from its text form."""
    shown = [output for output in cell.outputs if output.output_type == "execute_result"]
    assert shown, f"the cell tagged {tags(cell)} shows no result"
    return ast.literal_eval(shown[-1].data["text/plain"])


def printed(cell: nbformat.NotebookNode) -> str:
    return "".join(output.text for output in cell.outputs if output.output_type == "stream")


@dataclass(frozen=True)
class Executed:
    notebook: nbformat.NotebookNode
    #: The kernel's TMPDIR, under which the notebook made its work folder.
    tmp: Path

    def work_folder(self) -> Path:
        (folder,) = self.tmp.glob("monitord-walkthrough-*")
        return folder


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Executed:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    if not REPORT_PLUGIN.is_dir():
        notebook.cells = [cell for cell in notebook.cells if REPORT_TAG not in tags(cell)]
    tmp = tmp_path_factory.mktemp("walkthrough")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp))
        # Limits per cell and for the kernel's start, for a loaded machine: the whole notebook's
        # cells took 33 s on two shared cores (benchmarks/RESULTS.md).
        NotebookClient(notebook, timeout=300, startup_timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp)}}).execute()
    return Executed(notebook, tmp)


def test_the_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    with_outputs = [index for index, cell in enumerate(notebook.cells)
                    if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert with_outputs == [], f"cells {with_outputs} of {NOTEBOOK} were committed with outputs; clear them"


def test_the_report_cells_come_last() -> None:
    """Leaving the report cells out (before its plugin is in the tree) must leave out nothing else."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    first = next(index for index, cell in enumerate(code) if REPORT_TAG in tags(cell))
    assert all(REPORT_TAG in tags(cell) for cell in code[first:])


def test_the_kernel_is_this_interpreter_and_works_in_a_temporary_folder(executed: Executed) -> None:
    (setup,) = tagged(executed.notebook, "setup")
    assert f"kernel: {sys.executable}\n" in printed(setup)
    assert f"work folder: {executed.work_folder()}\n" in printed(setup)


def test_the_detectors_alarm_on_the_rotated_stream_only(executed: Executed) -> None:
    (cell,) = tagged(executed.notebook, "first-drift")
    first_drift = result(cell)
    assert first_drift["clean"] == {"pht_confidence": None, "iks_entropy": None}
    for detector, index in first_drift["rotated"].items():
        assert index is not None and CHANGE <= index < STREAM_LENGTH, (detector, index)


def test_replay_finds_the_library_s_first_drift(executed: Executed) -> None:
    (cell,) = tagged(executed.notebook, "replay")
    found = result(cell)
    assert found["replay"] is not None and found["replay"] >= CHANGE
    assert found["replay"] == found["library"]


def test_the_plot_is_drawn(executed: Executed) -> None:
    (cell,) = tagged(executed.notebook, "plot")
    images = [output.data["image/png"] for output in cell.outputs
              if output.output_type == "display_data" and "image/png" in output.data]
    assert len(images) == 1
    with Image.open(io.BytesIO(base64.b64decode(images[0]))) as image:
        assert image.width > 300 and image.height > 200
    assert (executed.work_folder() / "detectors.png").stat().st_size > 0


@pytest.mark.skipif(not REPORT_PLUGIN.is_dir(), reason=f"{REPORT_PLUGIN.relative_to(ROOT)} (monitord report) is "
                                                       "not in this tree yet")
def test_the_report_agrees_with_the_detectors(executed: Executed) -> None:
    *_, verdicts = tagged(executed.notebook, REPORT_TAG)
    drifted = result(verdicts)
    assert drifted["clean"] == []
    assert {"confidence", "entropy"} <= set(drifted["rotated"])
    for stream in ("clean", "rotated"):
        report = executed.work_folder() / f"report-{stream}.html"
        assert report.stat().st_size > 0, report
