"""Shared by every test folder: the detectors' numba kernels compiled once, first.

Daemons the tests start would otherwise compile them on first use, each its own, while
the test waits (tens of seconds on a fresh clone of 2 cores), and two processes could
compile the same kernel into numba's cache at once.
"""

import pytest


@pytest.fixture(scope="session", autouse=True)
def detector_kernels_compiled() -> None:
    try:
        from monitord_drift.precompile import precompile
    except ImportError:  # the drift plugin is not installed: nothing to compile
        return
    precompile()
