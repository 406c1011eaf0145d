"""Soak the CPU streaming path: N frames of a looped real clip through a small real model, with
resident memory, threads and open file descriptors sampled as it runs.

    python3 tools/soak.py --frames 100000                # prints a table and a verdict
    python3 tools/soak.py --frames 100000 --json out.json

The model is a small ONNX classifier built with onnx.helper (the soak tests the runtime, not the
model); frames are decoded from the clip played over and over (a list of the same path) and
resized in swscale to the model's input, so the run is bound by decode and the runtime itself.
Growth is judged after a warm-up (the first fifth of the run): resident memory may wander by at
most ``--rss-slack-mib``; threads and descriptors must come back exactly to their level.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import xinfer_stream as xs  # noqa: E402 - after the sys.path line above


@dataclass(frozen=True)
class Sample:
    frames: int
    seconds: float
    rss_mib: float
    threads: int
    fds: int


@dataclass(frozen=True)
class SoakReport:
    frames: int
    seconds: float
    fps: float
    samples: list[Sample]
    rss_growth_mib: float
    threads_before: int
    threads_after: int
    fds_before: int
    fds_after: int

    @property
    def ok(self) -> bool:
        return self.threads_after == self.threads_before and self.fds_after == self.fds_before


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def small_model(path: Path, size: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((8, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "fc"], ["logits"])],
        "soak", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


async def soak(clip: Path, frames: int, *, size: int = 64, every: int = 2000
               ) -> tuple[int, float, list[Sample]]:
    clip_frames = 0
    with xs_video_open(clip) as probe:
        for _ in probe:
            clip_frames += 1
    loops = -(-frames // clip_frames)
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = small_model(Path(tmp) / "soak.onnx", size)
        pre = xs.Preprocess(size=(size, size))
        started = time.perf_counter()
        seen = 0
        async with xs.load(model, preprocess=pre, threads=1) as engine:
            async with engine.stream([clip] * loops, width=size, height=size,
                                     postprocess=xs.classify(top=1)) as results:
                async for _ in results:
                    seen += 1
                    if seen % every == 0 or seen == frames:
                        samples.append(Sample(seen, time.perf_counter() - started, rss_mib(),
                                              os_threads(), open_fds()))
                    if seen == frames:
                        break
        seconds = time.perf_counter() - started
    return seen, seconds, samples


def run_soak(clip: Path, frames: int) -> SoakReport:
    """Soak on a fresh event loop; threads and descriptors are counted before the loop starts
    and after it has shut down, so the loop's own executor threads do not count as leaks."""
    from xinfer_stream.cli import run_async

    # One short pass first: the first use of ONNX Runtime and FFmpeg in a process opens files and
    # threads that live as long as the process (ONNX Runtime's cache database, a codec thread).
    run_async(soak(clip, 200, every=200))
    threads_before, fds_before = os_threads(), open_fds()
    seen, seconds, samples = run_async(soak(clip, frames))
    deadline = time.monotonic() + 5
    while (os_threads(), open_fds()) != (threads_before, fds_before) and time.monotonic() < deadline:
        time.sleep(0.05)
    warm = samples[len(samples) // 5:]
    growth = (max(s.rss_mib for s in warm) - warm[0].rss_mib) if warm else float("nan")
    return SoakReport(seen, seconds, seen / seconds, samples, growth, threads_before, os_threads(),
                      fds_before, open_fds())


def xs_video_open(clip: Path):  # type: ignore[no-untyped-def]
    from xinfer_stream.video import open_source

    return open_source(clip, width=64, height=64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--clip", type=Path, default=REPO / "xinfer_stream" / "_assets" / "bottle-detection.mp4")
    ap.add_argument("--rss-slack-mib", type=float, default=32.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report = run_soak(args.clip, args.frames)
    print(f"{'frames':>8} {'seconds':>8} {'rss MiB':>8} {'threads':>7} {'fds':>5}")
    for s in report.samples:
        print(f"{s.frames:8d} {s.seconds:8.1f} {s.rss_mib:8.1f} {s.threads:7d} {s.fds:5d}")
    verdict = report.ok and report.rss_growth_mib <= args.rss_slack_mib
    print(f"{report.frames} frames in {report.seconds:.1f} s ({report.fps:.0f} fps); RSS growth after "
          f"warm-up {report.rss_growth_mib:.1f} MiB; threads {report.threads_before}->{report.threads_after}; "
          f"fds {report.fds_before}->{report.fds_after}: {'OK' if verdict else 'GROWTH'}")
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "ok": verdict}, indent=2))
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
