"""``monitord reference DIR`` as a user runs it, and what the daemon does with its result."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, free_port
from digit_files import write_digit_folder
from servers import get_json


def run_reference(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitord", "reference", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def own_weights_settings(tmp_path: Path, digits_artifact: Path) -> str:
    """A model brought as architecture + weights + classes: it carries no reference of its own."""
    weights = tmp_path / "weights.safetensors"
    shutil.copy(digits_artifact / "model.safetensors", weights)
    metadata = json.loads((digits_artifact / "metadata.json").read_text())
    return (f'[model]\narchitecture = "digits_cnn"\nweights = "{weights}"\n'
            f'classes = {json.dumps(metadata["class_names"])}\ninput_size = [8, 8]\nchannels = 1\n'
            f'mean = {metadata["mean"]}\nstd = {metadata["std"]}\n')


def test_without_a_reference_the_daemon_says_so_and_monitord_reference_builds_it(
        tmp_path: Path, own_weights_settings: str) -> None:
    daemon = DaemonProcess(tmp_path, free_port(), extra_settings=own_weights_settings)
    daemon.start()
    try:
        ready = get_json(daemon.url + "/readyz")
        assert ready["reference"]["source"] == "stream"
        assert "monitord reference DIR" in ready["reference"]["note"]
        detectors = get_json(daemon.url + "/v1/detectors")
        by_name = {d["name"]: d for d in detectors["detectors"]}
        assert by_name["pht_confidence"]["reference"] == "stream" and by_name["bernoulli_cusum_error"]["reference"] is None
        assert detectors["reference"]["source"] == "stream"
        assert "WARNING" in daemon.log() and "no reference for model digits_cnn" in daemon.log()
    finally:
        assert daemon.terminate() == 0

    validation = tmp_path / "validation"
    counts = write_digit_folder(validation, held_out=True)
    (validation / "3" / "scan-error.png").write_bytes(b"\x89PNG broken")
    done = run_reference(tmp_path, daemon.env, str(validation), "--config", str(daemon.config), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert f"images: {sum(counts.values())} in" in done.stdout
    assert "accuracy: 9" in done.stdout and "skipped 1 image(s)" in done.stdout and "scan-error.png" in done.stdout
    written = daemon.state / "model" / "reference" / "reference.json"
    assert f"wrote the reference to {written.parent}" in done.stdout
    summary = json.loads(written.read_text())
    assert summary["samples"] == sum(counts.values()) and summary["per_class"]["3"]["images"] == counts["3"]
    # NM-DDM's calibration on this reference was computed once, kept with the artifact.
    cached = sorted(path.name for path in (daemon.state / "model" / "reference-cache").iterdir())
    assert cached and all(name.endswith(".npy") for name in cached)

    daemon.start()
    try:
        ready = get_json(daemon.url + "/readyz")
        assert ready["reference"]["source"] == "artifact"
        assert ready["reference"]["samples"] == sum(counts.values())
        by_name = {d["name"]: d for d in get_json(daemon.url + "/v1/detectors")["detectors"]}
        # The daemon found the calibration there: its own cache computed nothing more.
        assert not (daemon.state / "reference-cache").exists()
        assert by_name["pht_confidence"]["reference"] == "model"
        assert by_name["pht_confidence"]["reference_samples"] == sum(counts.values())
    finally:
        assert daemon.terminate() == 0


def test_a_reference_for_other_classes_stops_the_daemon_with_what_to_do(
        tmp_path: Path, own_weights_settings: str) -> None:
    daemon = DaemonProcess(tmp_path, free_port(), extra_settings=own_weights_settings)
    validation = tmp_path / "validation"
    write_digit_folder(validation, held_out=True, per_class=5)
    done = run_reference(tmp_path, daemon.env, str(validation), "--config", str(daemon.config), "--no-progress")
    assert done.returncode == 0, done.stderr
    summary_path = daemon.state / "model" / "reference" / "reference.json"
    summary = json.loads(summary_path.read_text())
    summary["class_names"] = [f"digit {name}" for name in summary["class_names"]]
    summary_path.write_text(json.dumps(summary))
    daemon.start(wait_ready=False)
    assert daemon.process.wait(120) == 1
    assert "was built for classes digit 0" in daemon.log() and "monitord reference DIR" in daemon.log()


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("no images", "holds no image files"),
    ("unknown class", "name no class of the model"),
])
def test_monitord_reference_refuses_a_folder_it_cannot_use(
        tmp_path: Path, own_weights_settings: str, layout: str, message: str) -> None:
    daemon = DaemonProcess(tmp_path, free_port(), extra_settings=own_weights_settings)
    folder = tmp_path / "validation"
    if layout != "missing":
        folder.mkdir()
        (folder / "notes.txt").write_text("not an image")
    if layout == "unknown class":
        write_digit_folder(folder, held_out=True, per_class=1)
        (folder / "ten").mkdir()
        (folder / "ten" / "a.png").write_bytes((folder / "1").iterdir().__next__().read_bytes())
    done = run_reference(tmp_path, daemon.env, str(folder), "--config", str(daemon.config), "--no-progress")
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (daemon.state / "model" / "reference").exists()


def test_monitord_reference_warns_when_a_configured_detector_cannot_start_on_it(
        tmp_path: Path, own_weights_settings: str) -> None:
    daemon = DaemonProcess(tmp_path, free_port(), extra_settings=own_weights_settings)
    validation = tmp_path / "validation"
    write_digit_folder(validation, held_out=True, per_class=10)  # 100 images: NM-DDM's window needs 150
    done = run_reference(tmp_path, daemon.env, str(validation), "--config", str(daemon.config), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "warning: the configured detectors cannot start on this reference" in done.stderr
    assert "nm_ddm" in done.stderr and "150" in done.stderr
