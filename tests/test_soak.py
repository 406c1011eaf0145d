"""Soak: 100,000 frames through the CPU path with memory, threads and descriptors sampled."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def load_tool(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_short_soak_leaves_nothing_behind(bundled_clip: Path) -> None:
    report = load_tool("soak").run_soak(bundled_clip, 1_500)
    assert report.frames == 1_500
    assert (report.threads_after, report.fds_after) == (report.threads_before, report.fds_before)


@pytest.mark.slow
def test_soak_100k_frames_no_growth(bundled_clip: Path) -> None:
    report = load_tool("soak").run_soak(bundled_clip, 100_000)
    assert report.frames == 100_000
    assert (report.threads_after, report.fds_after) == (report.threads_before, report.fds_before)
    assert report.rss_growth_mib <= 32.0, report.samples
    # While streaming, descriptors stay flat and threads show no upward trend (each looped file
    # starts and stops its own codec threads, so the count wanders by a few between samples).
    warm = report.samples[len(report.samples) // 5:]
    fifth = max(1, len(warm) // 5)
    assert len({s.fds for s in warm}) == 1, warm
    assert max(s.threads for s in warm[-fifth:]) <= max(s.threads for s in warm[:fifth]), warm
