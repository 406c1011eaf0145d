"""INT8 for a detector (issue 17 item 4): PP-PicoDet against its own FP32 boxes, timed.

The bundled PP-PicoDet layout model (tests/assets/picodet_layout_cdla.onnx) on synthetic A4 pages
(``tests/test_detect_picodet.page``: a title, paragraphs and a table, drawn with numpy; the
layout model finds text, title and table boxes on them). ``--calib`` pages (seeds 0..) to
calibrate on, ``--holdout`` other pages (seeds 1000..) held out; ``quantize_with_budget`` with the
``boxes`` metric (1 - mAP@0.5 of the INT8 boxes against the FP32 boxes, decoded as ``gfl`` at
``--conf``). Prints the report, the box agreement of the written model, the wall time, the load
average, and one markdown row for BENCHMARKS.md. The picture is written beside the model.

Usage: python3 tools/bench_detect_budget.py [--max-drop 0.05] [--calib 16] [--holdout 16]
           [--order sensitivity] [--search-budget 10m] [--bias-correction empirical] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_detect_picodet import MODEL, PRE, page  # noqa: E402
from xinfer_stream import detect  # noqa: E402
from xinfer_stream.quantize import (Calibrator, SearchBudget, box_metric,  # noqa: E402
                                    quantize_with_budget)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-drop", type=float, default=0.05)
    p.add_argument("--calib", type=int, default=16)
    p.add_argument("--holdout", type=int, default=16)
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--order", choices=["sensitivity", "input_first"], default="sensitivity")
    p.add_argument("--search-budget", default=None)
    p.add_argument("--bias-correction", choices=["empirical", "weights", "none"],
                   default="empirical")
    p.add_argument("--sensitivity-frames", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_detect_budget"))
    args = p.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()
    calibration = Calibrator([page(s) for s in range(args.calib)], PRE, batch_size=1,
                             name=f"pages 0-{args.calib - 1}")
    held = Calibrator([page(1000 + s) for s in range(args.holdout)], PRE, batch_size=1,
                      name=f"pages 1000-{1000 + args.holdout - 1}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = quantize_with_budget(
        MODEL, calibration, args.out / "picodet.int8.onnx", holdout=held,
        max_drop=args.max_drop, metric=box_metric(PRE, detect("gfl", conf=args.conf)),
        order=args.order, bias_correction=args.bias_correction,
        search_budget=SearchBudget.parse(args.search_budget) if args.search_budget else None,
        sensitivity_frames=args.sensitivity_frames)
    seconds = time.perf_counter() - started
    print(result.summary())
    d = result.report.details
    print(f"\npicture: {result.picture_path}")
    print(f"wall {seconds:.0f} s; load average before {load_before[0]:.1f}, after "
          f"{os.getloadavg()[0]:.1f}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    print(f"\n| PicoDet, --max-drop {args.max_drop:g}, {args.calib} calibration / "
          f"{args.holdout} held-out pages | mAP@0.5 {d['map50']:.3f} vs FP32, P "
          f"{d['precision']:.3f}, R {d['recall']:.3f}, F1 {d['f1']:.3f} "
          f"({d['matched']}/{d['reference_boxes']} FP32 boxes); "
          f"{'met' if result.met else 'NOT met'}, {len(result.excluded_nodes)} nodes in float, "
          f"{100 * result.int8_mac_fraction:.1f}% of MACs INT8; {seconds:.0f} s | CPU-"
          f"{os.cpu_count()}c | {datetime.date.today()} | `python3 tools/bench_detect_budget.py "
          f"{' '.join(sys.argv[1:])}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
