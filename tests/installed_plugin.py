"""The test plugin laid out as an installed distribution, found through its entry point."""

from __future__ import annotations

import os
from pathlib import Path

TESTPLUGIN = Path(__file__).parent / "testplugin"


def install_testplugin(site: Path, hooks_module: str = "monitord_testplugin") -> dict[str, str]:
    """Lay out an installed distribution (dist-info with entry points) and return its env."""
    dist_info = site / "monitord_testplugin-0.3.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: monitord-testplugin\nVersion: 0.3\n")
    (dist_info / "entry_points.txt").write_text(f"[monitord]\ntestplugin = {hooks_module}\n")
    (dist_info / "RECORD").write_text("")
    path = os.pathsep.join([str(site), str(TESTPLUGIN), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path}
