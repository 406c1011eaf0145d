"""``xinfer-stream demo``: the whole product once, on bundled real data, on the CPU.

1. sample frames evenly over the bundled clip (Intel's bottle-detection.mp4, CC BY 4.0),
   interleaved in thirds: one calibrates, one guides the accuracy-budget search, one is held out
   (with ``--full-int8``: halves, calibration and held out);
2. quantize the bundled EfficientNet-Lite0 to a Q/DQ INT8 model on the calibration frames with
   the accuracy budget (``quantize_with_budget``): ops are kept in float from the network's input
   onwards (``order="input_first"``) until the INT8 logits keep a mean cosine of at least
   ``--min-cosine`` with FP32's on the budget frames, at least 80% of the multiply-accumulates
   staying INT8. The budget is a cosine rather than top-1 agreement because top-1 on a few
   hundred frames of this footage flips on near-ties, while the cosine moves smoothly;
   ``--full-int8`` quantizes every Conv and Gemm instead (faster, less accurate);
3. measure FP32-vs-INT8 top-1 agreement on the held-out frames (never calibrated or searched on);
4. stream the whole clip through the INT8 model with the async runtime and print the top three
   ImageNet classes for each second of video, then latency statistics. Three, because the clip's
   bottles sit between ImageNet's "water bottle", "pop bottle" and "nipple" (a baby bottle's
   teat), and one bare "nipple" reads as broken to anybody who does not know ImageNet;
   the stream also writes the clip with each frame's top class drawn on it (``--save``; by
   default into ``--out DIR``, else into a ``xinfer-stream-demo`` folder of the system's
   temporary folder, kept) and the demo ends by printing its path.

Every long step shows progress (a bar on a terminal, lines elsewhere) unless ``--quiet``.

The artifacts go to ``--out DIR``, or to a temporary folder removed at the end. Exit status 0.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xinfer_stream

from ._progress import StageProgress
from ._quantize import check_frames

if TYPE_CHECKING:  # imported where used: --help must not load the library
    from xinfer_stream import Classification, Preprocess
from ._runner import run_async

__all__ = ["ASSETS", "DEFAULT_MIN_COSINE", "add_parser", "efficientnet_preprocess", "run",
           "run_demo"]

ASSETS = Path(xinfer_stream.__file__).resolve().parent / "_assets"  # bundled with the package
CLIP = ASSETS / "bottle-detection.mp4"
MODEL = ASSETS / "efficientnet_lite0.onnx"
LABELS = ASSETS / "imagenet_classes.txt"
ANNOTATED = "bottle-detection.annotated.mp4"


def efficientnet_preprocess() -> Preprocess:
    """How the bundled EfficientNet-Lite0 was trained to see its input."""
    from xinfer_stream import Preprocess

    return Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3,
                      std=(128.0,) * 3, color="rgb", layout="nchw", dtype="float32")


DEFAULT_MIN_COSINE = 0.9993


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo`` on an ``argparse`` subparsers object; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="quantize the bundled EfficientNet-Lite0 on the bundled clip and stream it "
                     "(CPU)")
    p.add_argument("--frames", type=int, default=128, help="calibration frames (default 128)")
    p.add_argument("--out", type=Path, default=None,
                   help="keep the artifacts in this folder (default: a temporary folder)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--min-cosine", type=float, default=None, metavar="C",
                        help="accuracy budget: keep ops in float from the input onwards until the "
                             "INT8 logits' mean cosine with FP32 is at least C on the budget "
                             f"frames (default {DEFAULT_MIN_COSINE})")
    budget.add_argument("--full-int8", action="store_true",
                        help="no budget search: every Conv and Gemm in INT8 (faster, less "
                             "accurate)")
    p.add_argument("--save", type=Path, default=None, metavar="VIDEO",
                   help="where to write the annotated clip (default: "
                        f"{ANNOTATED} in --out DIR, else in the system's temporary folder's "
                        "xinfer-stream-demo folder)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``demo``; 0."""
    if args.full_int8:
        min_cosine = None
    elif args.min_cosine is not None:
        min_cosine = args.min_cosine
    else:
        min_cosine = DEFAULT_MIN_COSINE
    return run_demo(frames=args.frames, out_dir=args.out, quiet=args.quiet, min_cosine=min_cosine,
                    save=args.save)


def run_demo(*, frames: int = 128, out_dir: Path | None = None, quiet: bool = False,
             min_cosine: float | None = DEFAULT_MIN_COSINE, save: Path | None = None,
             say: Callable[[str], None] = print) -> int:
    """The demo; ``min_cosine=None`` quantizes every op (no budget search). 0 on success.
    ``save``: the annotated clip (default: see the module docstring)."""
    import asyncio

    from ._outputs import Outputs, check_output_file

    from xinfer_stream import classify, load, read_labels, sample_frames
    from xinfer_stream.quantize import (CalibrationWarning, Calibrator, SearchBudget, evaluate,
                                        quantize, quantize_with_budget)

    EFFICIENTNET_PREPROCESS = efficientnet_preprocess()
    check_frames("--frames", frames)
    if min_cosine is not None and not 0.0 < min_cosine <= 1.0:
        raise ValueError(f"--min-cosine must be in (0, 1], got {min_cosine!r}")
    search = min_cosine is not None
    if save is None:
        folder = out_dir if out_dir is not None else Path(tempfile.gettempdir()) / "xinfer-stream-demo"
        if out_dir is None:
            folder.mkdir(exist_ok=True)
        save = folder / ANNOTATED
    check_output_file("--save", save)  # before minutes of work, not after
    started = time.perf_counter()
    with ExitStack() as stack:
        out = out_dir if out_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        int8 = out / "efficientnet_lite0.int8.onnx"
        parts = 3 if search else 2
        say(f"[1/4] sampling {parts * frames} frames from {CLIP.name}: interleaved, "
            + ("a third calibrate, a third guide the accuracy budget, a third are held out"
               if search else "half calibrate, half are held out"))
        sampling = StageProgress(enabled=not quiet)
        try:
            sampled = sample_frames([CLIP], parts * frames, strategy="uniform", seed=0,
                                    progress=sampling)
        finally:
            sampling.close()
        calib = [f.image for f in sampled[0::parts]]
        held_out = [f.image for f in sampled[parts - 1::parts]]

        t = time.perf_counter()
        progress = StageProgress(enabled=not quiet)
        try:
            if min_cosine is None:
                say(f"[2/4] quantizing {MODEL.name} to INT8 (Q/DQ) on {len(calib)} frames")
                quantize(MODEL, Calibrator(calib, EFFICIENTNET_PREPROCESS), int8, progress=progress)
                say(f"      wrote {int8} in {time.perf_counter() - t:.1f} s: every Conv and Gemm in INT8")
            else:
                guide = [f.image for f in sampled[1::parts]]
                say(f"[2/4] quantizing {MODEL.name} to INT8 (Q/DQ) on {len(calib)} frames, keeping "
                    f"ops in float from the input onwards until the logits' mean cosine with FP32 "
                    f"is at least {min_cosine:g} on {len(guide)} budget frames")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CalibrationWarning)  # the outcome is printed
                    budget = quantize_with_budget(
                        MODEL, Calibrator(calib, EFFICIENTNET_PREPROCESS), int8,
                        holdout=Calibrator(guide, EFFICIENTNET_PREPROCESS, name="budget frames"),
                        max_drop=1.0 - min_cosine, metric="cosine", min_int8_macs=0.80,
                        order="input_first", correction_frames=16,
                        search_budget=SearchBudget(seconds=600), progress=progress)
                kept = budget.excluded_nodes
                say(f"      wrote {int8} in {time.perf_counter() - t:.1f} s: "
                    f"{100 * budget.int8_mac_fraction:.1f}% of MACs in INT8"
                    + (f", {len(kept)} ops kept in float" if kept else ", every op in INT8")
                    + ("" if budget.met else
                       f"; budget NOT met (cosine {1.0 - budget.drop:.4f} on the budget frames)"))
                if kept and not quiet:
                    say(f"      in float: {', '.join(kept)}")
        finally:
            progress.close()

        say(f"[3/4] FP32 vs INT8 on {len(held_out)} held-out frames (never calibrated on"
            + (" or searched on)" if search else ")"))
        report = evaluate(MODEL, int8, held_out, EFFICIENTNET_PREPROCESS)
        agreement = report.top1_agreement
        say(f"      top-1 agreement {100 * (agreement or 0.0):.1f}% "
            f"(cosine mean {report.cosine_mean:.4f}, min {report.outputs[0].cosine_min:.4f})")

        say(f"[4/4] streaming all of {CLIP.name} through the INT8 model: the top three ImageNet "
            "classes each second (bottles fall between 'water bottle', 'pop bottle' and "
            "'nipple', ImageNet's baby-bottle teat)")
        labels = [name.replace("_", " ") for name in read_labels(LABELS)]
        per_second: dict[int, Classification] = {}

        async def stream() -> str:
            async with load(int8) as engine:
                async with engine.stream(CLIP, postprocess=classify(top=3, labels=labels),
                                         images=True) as results:
                    async for r in results:
                        await asyncio.to_thread(outputs.write, r)
                        second = int(r.pts or 0.0)
                        if second not in per_second:
                            per_second[second] = r.prediction
                            if not quiet:
                                top = ", ".join(f"{label} {p:.2f}"
                                                for _, label, p in r.prediction.top)
                                say(f"      t={second:3d}s frame {r.frame_index:5d}: {top}")
                    stats = results.statistics()
            return (f"{stats.frames} frames, {stats.fps:.1f} fps; end-to-end latency "
                    f"{stats.end_to_end.format_ms()} (preprocess p50 {stats.preprocess.p50 * 1e3:.1f} ms, "
                    f"inference p50 {stats.inference.p50 * 1e3:.1f} ms)")

        # ultrafast: the demo's encode should cost seconds, not the stream's time again
        outputs = Outputs(str(CLIP), save=save, preset="ultrafast")
        try:
            say(f"      {run_async(stream())}")
            outputs.close()
        except BaseException:
            outputs.abort()
            raise
        say(f"done in {time.perf_counter() - started:.1f} s"
            + ("" if out_dir is not None else " (artifacts were in a temporary folder; keep them with --out DIR)"))
        say(f"the clip with each frame's top class drawn on it: {save}")
    return 0
