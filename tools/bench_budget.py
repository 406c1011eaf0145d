"""The accuracy-budget search (issue 5) on EfficientNet-Lite0 and the shared clips, timed.

Samples ``--calib-frames + --holdout-frames`` frames from every clip under
``$XINFER_SHARED_DATA/video`` (default ../shared/data; the ``uniform`` strategy, as
``xinfer-stream quantize`` does), holds about ``--holdout-frames`` of them out, whole clips
(``split_holdout``), and runs ``quantize_with_budget`` on the bundled EfficientNet-Lite0 with the
issue's Preprocess. Prints each stage as it happens, then the report table, the wall time, the
machine's load average before and after (other work on a shared machine slows every number), and
one markdown row for BENCHMARKS.md.

Usage: python3 tools/bench_budget.py [--max-drop 0.3] [--method max] [--out DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from xinfer_stream.preprocess import Preprocess
from xinfer_stream.quantize import Calibrator, SearchBudget, quantize_with_budget, split_holdout
from xinfer_stream.quantize._graph import load_model, prepare
from xinfer_stream.quantize._sensitivity import HoldoutEvaluator
from xinfer_stream.video import sample_frames

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("XINFER_SHARED_DATA", REPO.parent / "shared" / "data"))
MODEL = REPO / "xinfer_stream" / "_assets" / "efficientnet_lite0.onnx"
PREPROCESS = Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3, std=(128.0,) * 3)


def print_margins(held: list[np.ndarray], int8_model: Path) -> None:
    """Why top-1 agreement is hard on these frames: how many are near-ties for FP32 itself."""
    evaluator = HoldoutEvaluator(prepare(load_model(MODEL)), Calibrator(held, PREPROCESS),
                                 sensitivity_frames=1, seed=0)
    fp32 = evaluator.reference["logits"]
    int8 = evaluator.outputs(int8_model.read_bytes())["logits"]
    top2 = np.sort(fp32, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    prob = np.exp(fp32 - fp32.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    print(f"FP32 on {len(fp32)} held-out frames: median top-1 probability "
          f"{np.median(prob.max(axis=1)):.2f}; top-1/top-2 logit margin under 0.01/0.02/0.05/0.1: "
          + "/".join(str(int((margin < e).sum())) for e in (0.01, 0.02, 0.05, 0.1)))
    print(f"written model: top-1 agreement {100 * (fp32.argmax(1) == int8.argmax(1)).mean():.1f}%, "
          f"largest logit error at the median frame {np.median(np.abs(fp32 - int8).max(1)):.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-drop", type=float, default=0.3)
    parser.add_argument("--metric", default="top1", choices=["top1", "cosine"])
    parser.add_argument("--method", default="max")
    parser.add_argument("--calib-frames", type=int, default=256)
    parser.add_argument("--holdout-frames", type=int, default=512)
    parser.add_argument("--min-int8-macs", type=float, default=0.0)
    parser.add_argument("--order", default="sensitivity", choices=["sensitivity", "input_first"])
    parser.add_argument("--sensitivity-frames", type=int, default=32)
    parser.add_argument("--search-budget", type=SearchBudget.parse, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_budget"))
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    parser.add_argument("--margins", action="store_true",
                        help="afterwards (not timed): FP32 top-1/top-2 logit margins on the "
                             "held-out frames, and the written model's largest logit error")
    args = parser.parse_args()

    load_before = os.getloadavg()
    started = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        if done == total or stage in ("sensitivity", "search"):
            print(f"[{time.perf_counter() - started:7.1f} s] {stage} {done}/{total}", flush=True)

    videos = SHARED / "video"
    sampled = sample_frames(videos, args.calib_frames + args.holdout_frames)
    split = split_holdout(sampled, args.holdout_frames)
    calib = [f.image for f in split.calibration]
    held = [f.image for f in split.held_out]
    sample_s = time.perf_counter() - started
    print(f"[{sample_s:7.1f} s] sampled {len(calib)} calibration + {len(held)} held-out frames "
          f"from {videos}", flush=True)
    result = quantize_with_budget(
        MODEL, Calibrator(calib, PREPROCESS, name="calibration"),
        args.out / "efficientnet_lite0.int8.onnx",
        holdout=Calibrator(held, PREPROCESS, name="held-out"), max_drop=args.max_drop,
        min_int8_macs=args.min_int8_macs, metric=args.metric, method=args.method,
        search_budget=args.search_budget, order=args.order,
        sensitivity_frames=args.sensitivity_frames, seed=args.seed, progress=progress)
    total_s = time.perf_counter() - started
    load_after = os.getloadavg()
    report = result.report
    print()
    print(result.summary())
    print()
    print(f"wall time {total_s:.1f} s (sampling {sample_s:.1f} s); load average before "
          f"{load_before[0]:.1f}, after {load_after[0]:.1f} (1 min), {os.cpu_count()} cores")
    command = "python3 tools/bench_budget.py " + " ".join(sys.argv[1:])
    first = report.steps[0]
    baseline = ("" if first.exact else ">=") + f"{first.drop:.3g}"
    print(f"| {args.method}, {len(calib)} calib / {len(held)} held-out frames, "
          f"{report.metric} max_drop {args.max_drop}, min INT8 MACs {args.min_int8_macs} | "
          f"{report.outcome} | {baseline} -> {report.drop:.3g} | "
          f"{len(report.chosen.excluded_units)} | "
          f"{100 * report.int8_mac_fraction:.1f}% | {total_s:.0f} s | CPU-2c, load "
          f"{load_before[0]:.1f}/{load_after[0]:.1f} | {datetime.date.today()} | `{command}` |")
    if args.margins:
        print_margins(held, result.model_path)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "budget": report.to_dict(), "wall_s": total_s, "sample_s": sample_s,
            "load_before": load_before, "load_after": load_after, "cores": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "argv": sys.argv[1:]},
            indent=2))
    return 0 if result.met else 3


if __name__ == "__main__":
    sys.exit(main())
