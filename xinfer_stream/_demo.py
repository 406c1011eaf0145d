"""``xinfer-stream demo``: the whole product once, on bundled real data, on the CPU.

1. sample frames evenly over the bundled clip (Intel's bottle-detection.mp4, CC BY 4.0);
   alternate frames calibrate, the others are held out;
2. quantize the bundled EfficientNet-Lite0 to a Q/DQ INT8 model on the calibration frames;
3. measure FP32-vs-INT8 top-1 agreement on the held-out frames (never seen by calibration);
4. stream the whole clip through the INT8 model with the async runtime and print the top class
   for each second of video, then latency statistics.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from .preprocess import Preprocess
from .runtime import Classification, classify, load, read_labels

__all__ = ["ASSETS", "EFFICIENTNET_PREPROCESS", "run_demo"]

ASSETS = Path(__file__).resolve().parent / "_assets"
CLIP = ASSETS / "bottle-detection.mp4"
MODEL = ASSETS / "efficientnet_lite0.onnx"
LABELS = ASSETS / "imagenet_classes.txt"
EFFICIENTNET_PREPROCESS = Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3,
                                     std=(128.0,) * 3, color="rgb", layout="nchw", dtype="float32")


def run_demo(*, frames: int = 128, out_dir: Path | None = None, quiet: bool = False,
             say: Callable[[str], None] = print) -> int:
    from .cli import StageProgress, run_async
    from .quantize import Calibrator, evaluate, quantize
    from .video import sample_frames

    if frames < 1:
        raise ValueError(f"--frames must be at least 1, got {frames!r}")
    started = time.perf_counter()
    with ExitStack() as stack:
        out = out_dir if out_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        int8 = out / "efficientnet_lite0.int8.onnx"
        say(f"[1/4] sampling {2 * frames} frames from {CLIP.name} "
            "(half calibrate, half are held out)")
        sampled = sample_frames([CLIP], 2 * frames, strategy="uniform", seed=0,
                                progress=False if quiet else None)
        calib = [f.image for f in sampled[0::2]]
        held_out = [f.image for f in sampled[1::2]]

        say(f"[2/4] quantizing {MODEL.name} to INT8 (Q/DQ) on {len(calib)} frames")
        t = time.perf_counter()
        progress = StageProgress(enabled=False if quiet else None)
        try:
            quantize(MODEL, Calibrator(calib, EFFICIENTNET_PREPROCESS), int8, progress=progress)
        finally:
            progress.close()
        say(f"      wrote {int8} in {time.perf_counter() - t:.1f} s")

        say(f"[3/4] FP32 vs INT8 on {len(held_out)} held-out frames")
        report = evaluate(MODEL, int8, held_out, EFFICIENTNET_PREPROCESS)
        agreement = report.top1_agreement
        say(f"      top-1 agreement {100 * (agreement or 0.0):.1f}% "
            f"(cosine mean {report.cosine_mean:.4f}, min {report.outputs[0].cosine_min:.4f})")

        say(f"[4/4] streaming all of {CLIP.name} through the INT8 model")
        labels = read_labels(LABELS)
        per_second: dict[int, Classification] = {}

        async def stream() -> str:
            async with load(int8) as engine:
                async with engine.stream(CLIP, postprocess=classify(top=1, labels=labels)) as results:
                    async for r in results:
                        second = int(r.pts or 0.0)
                        if second not in per_second:
                            per_second[second] = r.prediction
                            if not quiet:
                                _, label, p = r.prediction.best
                                say(f"      t={second:3d}s frame {r.frame_index:5d}: {label} ({p:.2f})")
                    stats = results.statistics()
            return (f"{stats.frames} frames, {stats.fps:.1f} fps; end-to-end latency "
                    f"{stats.end_to_end.format_ms()} (preprocess p50 {stats.preprocess.p50 * 1e3:.1f} ms, "
                    f"inference p50 {stats.inference.p50 * 1e3:.1f} ms)")

        say(f"      {run_async(stream())}")
        say(f"done in {time.perf_counter() - started:.1f} s"
            + ("" if out_dir is not None else " (artifacts were in a temporary folder; keep them with --out DIR)"))
    return 0
