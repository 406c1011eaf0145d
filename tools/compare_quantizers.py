"""Compare xinfer-stream's INT8 calibration with ONNX Runtime's and NVIDIA ModelOpt's, side by side.

Same model, same calibration frames, same held-out frames, same evaluator for everyone:

    python3 tools/compare_quantizers.py --frames 256 --holdout 256 --out /tmp/cmp
    python3 tools/compare_quantizers.py --bench 512 --out /tmp/cmp     # time and peak memory
    # the demo's setting, with on/off variants of ours (METHOD[:bias_correction][:fp16]):
    python3 tools/compare_quantizers.py --clips bottle-detection.mp4 --frames 128 --holdout 128 \
        --ours max max:weights max:none max:empirical:fp16 auto --ort --modelopt

Frames are sampled evenly over the clips in ../shared/data/video (alternately calibration and
held out) with ``xinfer_stream.video.sample_frames``. Every Q/DQ model is evaluated by
``xinfer_stream.quantize.evaluate`` (Q/DQ executed as written, TensorRT's arithmetic) against the
FP32 model: top-1 agreement and mean logits cosine on the held-out frames.

Peers: ONNX Runtime's ``quantize_static`` (QDQ, per-channel, symmetric int8 activations and
weights: the TensorRT-compatible configuration ORT documents) with MinMax, Entropy and Percentile;
ModelOpt's ``modelopt.onnx.quantization.quantize`` (int8, float32 elsewhere, CPU calibration) with
entropy and max, run with the Python of ``--modelopt-python`` (a venv holding nvidia-modelopt;
skipped when absent). ``--bench N`` runs calibration on N frames in a child process per tool and
reports wall time and the child's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xinfer_stream.preprocess import Preprocess, preprocess_batch  # noqa: E402  (after sys.path)

PRE = Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3, std=(128.0,) * 3)
DATA = Path(os.environ.get("XINFER_SHARED_DATA", REPO.parent / "shared" / "data"))
MODEL = DATA / "models" / "efficientnet_lite0.onnx"
CLIPS = ["car-detection.mp4", "bottle-detection.mp4", "walk.mkv", "box.mp4", "cup.mp4"]
OURS = ("max", "percentile", "entropy", "mse", "auto")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
MODELOPT_METHODS = ("entropy", "max")

_MODELOPT_SCRIPT = """
import sys, numpy as np
from modelopt.onnx.quantization import quantize
model, data, method, out = sys.argv[1:5]
quantize(model, quantize_mode="int8", calibration_data={"input": np.load(data)},
         calibration_method=method, calibration_eps=["cpu"], output_path=out,
         high_precision_dtype="fp32", log_level="ERROR")
"""


def sample(count: int, seed: int, clips: list[str] | None = None
           ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from xinfer_stream.video import sample_frames

    frames = sample_frames([str(DATA / "video" / c) for c in clips or CLIPS], 2 * count,
                           strategy="uniform", seed=seed)
    images = [f.image for f in frames]
    return images[0::2], images[1::2]


def ours(spec: str, calib: list[np.ndarray], out: Path) -> Path:
    """``spec``: METHOD[:BIAS_CORRECTION][:fp16], e.g. ``max``, ``max:weights``, ``mse:empirical:fp16``."""
    from xinfer_stream.quantize import Calibrator, quantize

    method, *options = spec.split(":")
    correction = next((o for o in options if o in ("empirical", "weights", "none")), "empirical")
    path = out / f"ours_{spec.replace(':', '_')}.onnx"
    quantize(MODEL, Calibrator(calib, PRE), path, method=method, bias_correction=correction,
             float16="fp16" in options)
    return path


def ort_quantize(method: str, calib: list[np.ndarray], out: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.set_range(0, len(calib))

        def __len__(self) -> int:
            return len(calib)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._batches = iter(preprocess_batch(PRE, calib[i:i + 1])
                                 for i in range(start_index, min(end_index, len(calib))))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"input": batch}

    # ORT's histogram calibrators (Entropy, Percentile) keep every frame's intermediate outputs
    # (~82 MiB a frame here) until the reader is exhausted, and ignore CalibMaxIntermediateOutputs;
    # in ORT 1.32 that option makes MinMax drop its collected outputs without merging them ("No
    # data is collected" at 256 frames). CalibStridedMinMax (any method, despite its name) runs
    # collect_data on `stride` frames at a time, and the calibrator merges ranges / histograms.
    stride = next(s for s in (32, 16, 8, 4, 2, 1) if len(calib) % s == 0)
    path = out / f"ort_{method}.onnx"
    quantize_static(str(MODEL), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "CalibStridedMinMax": stride})
    return path


def modelopt(method: str, calib: list[np.ndarray], out: Path, python: str) -> Path:
    data = out / "calib.npy"
    if not data.exists():
        np.save(data, preprocess_batch(PRE, calib))
    path = out / f"modelopt_{method}.onnx"
    subprocess.run([python, "-c", _MODELOPT_SCRIPT, str(MODEL), str(data), method, str(path)],
                   check=True, cwd=out, timeout=25 * 60)
    return path


def compare(args: argparse.Namespace) -> dict[str, Any]:
    from xinfer_stream.quantize import evaluate

    calib, held = sample(args.frames, args.seed, args.clips)
    held = held[: args.holdout]
    out = args.out
    rows: list[dict[str, Any]] = []

    def record(tool: str, method: str, make: Any) -> None:
        started = time.perf_counter()
        try:
            path = make()
        except Exception as exc:  # noqa: BLE001  (one failing method must not lose the others)
            rows.append({"tool": tool, "method": method, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{tool:9s} {method:11s} failed: {exc}", flush=True)
            return
        seconds = time.perf_counter() - started
        report = evaluate(MODEL, path, held, PRE)
        row = {"tool": tool, "method": method, "top1_agreement": report.top1_agreement,
               "cosine_mean": report.cosine_mean, "quantize_s": round(seconds, 1)}
        rows.append(row)
        (out / "compare.partial.json").write_text(json.dumps(rows, indent=2) + "\n")
        print(f"{tool:9s} {method:11s} top-1 agreement {100 * (report.top1_agreement or 0):5.1f}%  "
              f"cosine {report.cosine_mean:.4f}  ({seconds:.0f} s)", flush=True)

    for method in args.ours:
        record("ours", method, lambda m=method: ours(m, calib, out))
    for method in args.ort:
        record("ort", method, lambda m=method: ort_quantize(m, calib, out))
    if args.modelopt_python and Path(args.modelopt_python).exists():
        for method in args.modelopt:
            record("modelopt", method,
                   lambda m=method: modelopt(m, calib, out, args.modelopt_python))
    return {"frames": len(calib), "held_out": len(held), "clips": args.clips or CLIPS,
            "load_average": os.getloadavg(), "rows": rows}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Calibration time and peak RSS on ``args.bench`` frames, each tool in a fresh process."""
    rows = []
    for tool, method in (("ours", "entropy"), ("ours", "max"), ("ort", "Entropy")):
        code = (f"import sys, time; sys.argv=['x']; sys.path.insert(0, {str(REPO / 'tools')!r}); "
                f"import compare_quantizers as c; from pathlib import Path; "
                f"calib, _ = c.sample({args.bench}, {args.seed}); import resource, os; "
                f"rss0 = int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE'); "
                f"t=time.perf_counter(); "
                f"c.{'ours' if tool == 'ours' else 'ort_quantize'}({method!r}, calib, Path({str(args.out)!r})); "
                f"print('RESULT', time.perf_counter()-t, rss0 / 2**20, "
                f"resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
        seconds, rss_before, peak = map(float, proc.stdout.strip().split("RESULT")[-1].split())
        rows.append({"tool": tool, "method": method, "frames": args.bench,
                     "calibration_s": round(seconds, 1),
                     "rss_before_calibration_mib": round(rss_before),
                     "peak_rss_mib": round(peak),
                     "calibration_extra_mib": round(peak - rss_before)})
        print(rows[-1], flush=True)
    return {"bench": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--holdout", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips", nargs="*", default=None,
                        help=f"clip names under {DATA / 'video'} (default: {' '.join(CLIPS)})")
    parser.add_argument("--ours", nargs="*", default=list(OURS))
    parser.add_argument("--ort", nargs="*", default=list(ORT_METHODS))
    parser.add_argument("--modelopt", nargs="*", default=list(MODELOPT_METHODS))
    parser.add_argument("--modelopt-python", default="/work/venv-modelopt/bin/python")
    parser.add_argument("--bench", type=int, default=0,
                        help="instead: time and peak memory of calibration on this many frames")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        args.out = args.out or Path(tmp)
        args.out.mkdir(parents=True, exist_ok=True)
        result = bench(args) if args.bench else compare(args)
        (args.out / ("bench.json" if args.bench else "compare.json")).write_text(
            json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
