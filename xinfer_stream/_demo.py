"""``xinfer-stream demo``: the whole product once, on bundled real data, on the CPU.

1. sample frames evenly over the bundled clip (Intel's bottle-detection.mp4, CC BY 4.0),
   interleaved: half calibrate, half are held out (with ``--max-drop``: thirds, the middle one
   guiding the accuracy-budget search);
2. quantize the bundled EfficientNet-Lite0 to a Q/DQ INT8 model on the calibration frames (with
   ``--max-drop``, keeping in float the ops the budget search finds too harmful, at least 85% of
   the multiply-accumulates staying INT8);
3. measure FP32-vs-INT8 top-1 agreement on the held-out frames (never calibrated or searched on);
4. stream the whole clip through the INT8 model with the async runtime and print the top class
   for each second of video, then latency statistics.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from .preprocess import Preprocess
from .quantize import CalibrationWarning
from .runtime import Classification, classify, load, read_labels

__all__ = ["ASSETS", "EFFICIENTNET_PREPROCESS", "run_demo"]

ASSETS = Path(__file__).resolve().parent / "_assets"
CLIP = ASSETS / "bottle-detection.mp4"
MODEL = ASSETS / "efficientnet_lite0.onnx"
LABELS = ASSETS / "imagenet_classes.txt"
EFFICIENTNET_PREPROCESS = Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3,
                                     std=(128.0,) * 3, color="rgb", layout="nchw", dtype="float32")


def run_demo(*, frames: int = 128, out_dir: Path | None = None, quiet: bool = False,
             max_drop: float | None = None, say: Callable[[str], None] = print) -> int:
    from .cli import StageProgress, run_async
    from .quantize import Calibrator, SearchBudget, evaluate, quantize, quantize_with_budget
    from .video import sample_frames

    if frames < 1:
        raise ValueError(f"--frames must be at least 1, got {frames!r}")
    started = time.perf_counter()
    with ExitStack() as stack:
        out = out_dir if out_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        int8 = out / "efficientnet_lite0.int8.onnx"
        parts = 2 if max_drop is None else 3
        say(f"[1/4] sampling {parts * frames} frames from {CLIP.name}: interleaved, "
            + ("half calibrate, half are held out" if max_drop is None else
               "a third calibrate, a third guide the accuracy budget, a third are held out"))
        sampled = sample_frames([CLIP], parts * frames, strategy="uniform", seed=0,
                                progress=False if quiet else None)
        calib = [f.image for f in sampled[0::parts]]
        held_out = [f.image for f in sampled[parts - 1::parts]]

        t = time.perf_counter()
        progress = StageProgress(enabled=False if quiet else None)
        try:
            if max_drop is None:
                say(f"[2/4] quantizing {MODEL.name} to INT8 (Q/DQ) on {len(calib)} frames")
                quantize(MODEL, Calibrator(calib, EFFICIENTNET_PREPROCESS), int8, progress=progress)
                say(f"      wrote {int8} in {time.perf_counter() - t:.1f} s: every Conv and Gemm in INT8")
            else:
                search = [f.image for f in sampled[1::parts]]
                say(f"[2/4] quantizing {MODEL.name} to INT8 (Q/DQ) on {len(calib)} frames, keeping "
                    f"in float what costs more than {max_drop:g} points of top-1 agreement")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CalibrationWarning)  # the outcome is printed
                    budget = quantize_with_budget(
                        MODEL, Calibrator(calib, EFFICIENTNET_PREPROCESS), int8,
                        holdout=Calibrator(search, EFFICIENTNET_PREPROCESS, name="budget frames"),
                        max_drop=max_drop, min_int8_macs=0.85,
                        search_budget=SearchBudget(seconds=600), progress=progress)
                kept = budget.excluded_nodes
                say(f"      wrote {int8} in {time.perf_counter() - t:.1f} s: "
                    f"{100 * budget.int8_mac_fraction:.1f}% of MACs in INT8"
                    + (f", {len(kept)} ops kept in float" if kept else ", every op in INT8")
                    + ("" if budget.met else f"; budget NOT met (drop {budget.drop:.1f} points)"))
        finally:
            progress.close()

        say(f"[3/4] FP32 vs INT8 on {len(held_out)} held-out frames (never calibrated on"
            + (")" if max_drop is None else " or searched on)"))
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
