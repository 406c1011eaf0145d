"""The CPU path end to end: ``engine.stream`` over the bundled clip on ONNX Runtime.

``engine.stream`` of the bundled 640x360 clip (1,189 frames) through the bundled FP32
EfficientNet-Lite0, batch 1, ``--repeats`` times: one JSON line a run with frames/s over the whole
clip and the stream's own preprocess (numpy, ``preprocess_frame``) and inference p50, then the
medians. On a small machine decode, preprocessing and ONNX Runtime's threads share the cores, so
runs move by 10-20%: compare two trees in one sitting, alternating
(``python3 OTHER_TREE/tools/bench_cpu_runtime.py`` imports that tree's package).

Usage: python3 tools/bench_cpu_runtime.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import xinfer_stream as xs  # noqa: E402

ASSETS = REPO / "xinfer_stream" / "_assets"
LITE0 = xs.Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3, std=(128.0,) * 3)


async def stream_row() -> dict[str, Any]:
    async with xs.load(ASSETS / "efficientnet_lite0.onnx", preprocess=LITE0) as engine:
        count, first, last = 0, 0.0, 0.0
        async with engine.stream(ASSETS / "bottle-detection.mp4") as results:
            async for _ in results:
                last = time.perf_counter()
                count += 1
                if count == 1:
                    first = last
            stats = results.statistics()
    return {"row": "engine.stream, bundled clip, FP32 EfficientNet-Lite0, ONNX Runtime",
            "frames": count, "fps": round((count - 1) / (last - first), 1),
            "preprocess_p50_ms": round(stats.preprocess.p50 * 1e3, 2),
            "inference_p50_ms": round(stats.inference.p50 * 1e3, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the runs and medians here")
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        runs.append(asyncio.run(stream_row()))
        print(json.dumps(runs[-1]), flush=True)
    median = {key: statistics.median(run[key] for run in runs)
              for key in ("fps", "preprocess_p50_ms", "inference_p50_ms")}
    print(json.dumps({"row": "median of the runs", **median}), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": runs, "median": median}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
