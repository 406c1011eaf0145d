"""Shared fixtures: paths to the real assets, and small synthetic inputs made in tmp_path."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from contextlib import nullcontext
from pathlib import Path

import pytest

if TYPE_CHECKING:
    from xinfer_stream.cuda import Device

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


# -- Ray's tests run last --------------------------------------------------------------------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fleet's tests (tests/test_fleet_ray*.py) run after every other test. They start Ray's
    driver in this process, and ``ray.shutdown()`` leaves its client's threads behind (gRPC's
    pools and its GCS client), which come and go on their own schedule: a later test that counts
    this process's threads (tests/census.py) would count Ray's, not ours. In CI it did: a thread
    census off by five in the middle of an unrelated test."""
    items.sort(key=lambda item: item.path.name.startswith("test_fleet_ray"))


# -- long tests say what they do ------------------------------------------------------------
# A slow test (a soak, a budget search on a real model) used to sit silent for minutes behind a
# dot. Each one now announces itself when it starts, and may report progress while it runs
# through the ``progress`` fixture; both go straight to the terminal (past output capture), cost
# nothing when no test is slow, and leave the summary (``-ra``) unchanged.
def _say(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    capman = config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman is not None else nullcontext():
        writer = getattr(reporter, "_tw", None)   # after a row of dots, start a line of our own
        if writer is not None and getattr(writer, "width_of_current_line", 0):
            reporter.write("\n")
        reporter.write_line(line)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Announce tests marked ``slow`` as they start, with their docstring's first line."""
    if item.get_closest_marker("slow") is None:
        return
    function = getattr(item, "obj", None)
    doc = (getattr(function, "__doc__", None) or "").strip().splitlines()
    what = f": {doc[0]}" if doc else ""
    _say(item.config, f"[slow] {item.nodeid} started{what}")


@pytest.fixture
def progress(request: pytest.FixtureRequest) -> Iterator[Callable[[str], None]]:
    """``progress("20,000 of 100,000 frames")``: a line on the terminal while the test runs, at
    most one every 10 s (the last word of a finished test is left to its assertions)."""
    last = [0.0]

    def say(message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 10.0:
            last[0] = now
            _say(request.config, f"[slow] {request.node.nodeid}: {message}")

    yield say


# -- GPU fixtures: a capability probe that skips with its reason, only around setup ----------
@pytest.fixture(scope="module")
def torch() -> Any:
    """PyTorch on a usable CUDA device, else a skip saying why."""
    import xinfer_stream.cuda as xcuda

    torch = pytest.importorskip("torch")
    reason = xcuda.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    return torch


@pytest.fixture(scope="module")
def device() -> Iterator[Device]:
    """CUDA device 0 through our own layer (no PyTorch), else a skip saying why."""
    import xinfer_stream.cuda as xcuda

    reason = xcuda.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with xcuda.Device(0) as dev:
        yield dev
