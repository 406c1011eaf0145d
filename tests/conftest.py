"""Shared fixtures: paths to the real assets, and small synthetic inputs made in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "xinfer_stream" / "_assets"
# The real clips and models live beside the checkout (../shared/data); tests that need more than
# the bundled assets skip with the reason when it is absent.
SHARED_DATA = Path(os.environ.get("XINFER_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real test asset {path} is not present (set XINFER_SHARED_DATA)")
    return path


@pytest.fixture
def bundled_clip() -> Path:
    return ASSETS / "bottle-detection.mp4"


@pytest.fixture
def bundled_model() -> Path:
    return ASSETS / "efficientnet_lite0.onnx"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run that collected tests but executed none (all skipped or deselected) must not pass
    silently: report it as pytest's own 'no tests' status, 5."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0:
        return
    executed = sum(len(reporter.stats.get(key, [])) for key in ("passed", "failed", "error", "xfailed", "xpassed"))
    if executed == 0:
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
