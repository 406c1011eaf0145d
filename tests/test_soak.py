"""Soak: 100,000 frames through the CPU path with memory, threads and descriptors sampled; the
GPU path (``tools/soak.py --device cuda``) with device memory sampled too, on a GPU."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from pathlib import Path
from typing import Any

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
    # The CPU soak's report and JSON carry no device fields.
    assert report.device is None and all(s.device is None for s in report.samples)
    assert "device" not in json.dumps(report.to_json())


def test_reserved_memory_is_summed_by_pytorch_pool() -> None:
    """What the GPU soak's close check reports when device memory stays reserved: the default
    pool apart from each private pool (a CUDA graph's), from memory_snapshot()'s segments."""
    mib = 1 << 20
    segments = [{"segment_pool_id": (0, 0), "total_size": 2 * mib},
                {"segment_pool_id": (1, 3), "total_size": 20 * mib},
                {"segment_pool_id": (1, 3), "total_size": 14 * mib},
                {"segment_pool_id": (1, 7), "total_size": mib // 2},
                {"total_size": mib}]  # a torch that names no pool: the default one
    assert load_tool("soak").reserved_by_pool(segments) == {
        "default": 3.0, "private 1.3": 34.0, "private 1.7": 0.5}
    assert load_tool("soak").reserved_by_pool([]) == {}


@pytest.mark.slow
def test_soak_100k_frames_no_growth(bundled_clip: Path, progress: Any) -> None:
    """100,000 frames through the CPU path (minutes): memory, threads and descriptors flat."""
    report = load_tool("soak").run_soak(
        bundled_clip, 100_000,
        on_sample=lambda s: progress(f"{s.frames:,} of 100,000 frames, {s.seconds:.0f} s, "
                                     f"RSS {s.rss_mib:.0f} MiB"))
    assert report.frames == 100_000
    assert (report.threads_after, report.fds_after) == (report.threads_before, report.fds_before)
    assert report.rss_growth_mib <= 32.0, report.samples
    # While streaming, descriptors stay flat and threads show no upward trend (each looped file
    # starts and stops its own codec threads, so the count wanders by a few between samples).
    warm = report.samples[len(report.samples) // 5:]
    fifth = max(1, len(warm) // 5)
    assert len({s.fds for s in warm}) == 1, warm
    assert max(s.threads for s in warm[-fifth:]) <= max(s.threads for s in warm[:fifth]), warm


def test_the_device_verdict_judges_growth_after_warm_up_and_the_level_after_close() -> None:
    soak = load_tool("soak")
    Sample, DeviceSample = soak.Sample, soak.DeviceSample

    def run(used: list[float], allocated: list[float], after_used: float) -> Any:
        samples = [Sample(1000 * (i + 1), float(i), 500.0, 9, 20, DeviceSample(u, a, a + 2.0))
                   for i, (u, a) in enumerate(zip(used, allocated))]
        before = DeviceSample(900.0, 0.5, 0.5)
        device = soak.device_report(samples, before, DeviceSample(after_used, 0.5, 0.5),
                                    name="GPU", total_mib=80_000.0, cublas_workspaces_mib=0.0,
                                    runtime={})
        return soak.SoakReport(len(samples) * 1000, 10.0, 100.0, samples, 0.0, 3, 3, 11, 11,
                               device)

    flat = [1000.0] * 10
    # Growth in the first fifth is warm-up; after it, within the slack.
    ok = run([950.0, 990.0, *flat[2:]], [1.0, 3.0, 4.0, *[4.0] * 7], 905.0)
    assert ok.device.used_growth_mib == 0.0 and ok.device.allocated_growth_mib == 0.0
    assert ok.passed(32.0, 16.0)
    assert not run([*flat[:9], 1020.0], [4.0] * 10, 905.0).passed(32.0, 16.0)  # used grows
    assert not run(flat, [4.0] * 9 + [30.0], 905.0).passed(32.0, 16.0)  # allocated grows
    assert not run(flat, [4.0] * 10, 950.0).passed(32.0, 16.0)  # not freed after close
    assert run(flat, [4.0] * 10, 950.0).passed(32.0, 64.0)
    assert json.loads(json.dumps(ok.to_json()))["samples"][0]["device"]["used_mib"] == 950.0


@pytest.mark.gpu
@pytest.mark.parametrize("decode", ["cpu", "nvdec"])
def test_gpu_soak_has_no_growth_and_frees_the_device(torch: Any, bundled_clip: Path,
                                                     decode: str) -> None:
    """A short GPU soak (tools/soak.py --device cuda runs the 100,000): the torch model through
    the GPU path (the window copied into pinned staging, or, with NVDEC, frames read from GPU
    memory; preprocess kernel, graphed slots, waiter thread)."""
    report = load_tool("soak").run_soak(bundled_clip, 5_000, device="cuda", every=250,
                                        decode=decode)
    device = report.device
    assert report.frames == 5_000 and device is not None
    from_gpu_memory = device.runtime["frames_from_device_memory"]
    if decode == "nvdec" and from_gpu_memory == 0:
        pytest.skip("NVDEC did not decode the clip here (software fallback, logged)")
    assert from_gpu_memory == (0 if decode == "cpu" else pytest.approx(5_000, abs=200)), device
    assert (report.threads_after, report.fds_after) == (report.threads_before, report.fds_before)
    assert device.runtime["graph_mode"] == "graph" and device.runtime["graph_batches"] > 0, device
    assert device.used_growth_mib <= 16.0, report.samples
    assert device.allocated_growth_mib <= 16.0, report.samples
    assert device.after_close.used_mib - device.before.used_mib <= 16.0, device
    assert device.after_close.torch_allocated_mib - device.before.torch_allocated_mib <= 16.0, device
    assert report.rss_growth_mib <= 32.0, report.samples
    assert report.passed(32.0, 16.0)
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer")]
