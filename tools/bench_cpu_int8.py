"""FP32 vs INT8 on the CPU through ONNX Runtime, in one run (issue 19: INT8 must not be silently
slower than FP32 on the CPU).

Makes the Q/DQ model once (``xinfer_stream.quantize.quantize`` with its defaults, on frames
sampled from the clips), then measures, at batch 1, every way ONNX Runtime can run it:

* ``fp32``: the float model, through ``OnnxRuntimeBackend``;
* ``int8 backend``: the Q/DQ model through ``OnnxRuntimeBackend``, in the mode it chose for this
  CPU (the row names the mode; its warning, if any, is recorded, not shown);
* ``int8 as-written``: the Q/DQ model as written, float arithmetic on quantized values
  (``session.disable_quant_qdq=1``): the reference for the INT8 rows' exactness;
* ``int8 fused``: ONNX Runtime's Q/DQ fusion into its integer kernels (``disable_quant_qdq=0``);
* ``int8 fused, u8u8``: the same after re-encoding every int8 tensor as uint8 with zero point
  128 (lossless; ONNX Runtime's documented remedy for u8s8 saturation is U8U8 or reduce_range);
* ``int8 fused, 7-bit weights``: weights requantized to [-64, 63] from the written ones
  (``reduce_range``, the other documented remedy), fused;
* ``ORT quantizer, fused``: for reference, not our model: ONNX Runtime's own ``quantize_static``
  (QDQ format, its placement with Q/DQ on every op's output, u8 activations, per-channel 7-bit
  s8 weights, MinMax on the same calibration frames), fused: what INT8 on this CPU can gain when
  every layer fuses. Its exactness is against its own as-written run (printed under the table).

Accuracy on held-out frames (never calibrated on), preprocessed with the model's Preprocess:
logits cosine (mean) and top-1 agreement against the as-written INT8 model and against FP32.
Latency: every row's session is run in turn, round-robin, so background load hits all rows alike;
p50/p90 over ``--runs`` runs each after a warm-up. The CPU's flags and the load average at the
start and end are recorded: numbers taken on a shared machine are indicative only.

Usage: python3 tools/bench_cpu_int8.py [--model M.onnx] [--clips DIR_OR_FILES...] [--frames 64]
[--runs 200] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import xinfer_stream as xs  # noqa: E402
from xinfer_stream.cli._demo import efficientnet_preprocess  # noqa: E402
from xinfer_stream.engines import OnnxRuntimeBackend, cpu_features  # noqa: E402
from xinfer_stream.engines._cpu_features import EXACT_INT8_FLAGS  # noqa: E402
from xinfer_stream.preprocess import Preprocess, preprocess_batch  # noqa: E402
from xinfer_stream.quantize import Calibrator, quantize  # noqa: E402

SHARED = Path(os.environ.get("XINFER_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_CLIPS = [SHARED / "video" / n for n in
                 ("bottle-detection.mp4", "car-detection.mp4", "box.mp4", "cup.mp4")]
INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat", "ConvInteger",
               "MatMulInteger"}


def ort_quantizer_model(model: Path, calibration: np.ndarray, input_name: str, out: Path) -> Path:
    """ONNX Runtime's ``quantize_static`` recipe for x86 CPUs without VNNI (reduce_range)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{input_name: calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, reduce_range=True)
    return out


@dataclass
class Row:
    name: str
    mode: str
    p50_ms: float
    p90_ms: float
    fps: float
    cosine_vs_as_written: float | None
    top1_vs_as_written: float | None
    cosine_vs_fp32: float | None
    top1_vs_fp32: float | None
    integer_layers: int | None


def session(path: Path, threads: int, *, disable_quant_qdq: bool,
            optimized: Path | None = None) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_quant_qdq", "1" if disable_quant_qdq else "0")
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def integer_layers(path: Path, threads: int) -> int:
    """How many layers ONNX Runtime runs in integer kernels, read from its optimized graph."""
    with tempfile.TemporaryDirectory() as tmp:
        session(path, threads, disable_quant_qdq=False, optimized=Path(tmp) / "o.onnx")
        nodes = onnx.load(str(Path(tmp) / "o.onnx"), load_external_data=False).graph.node
    return sum(1 for n in nodes if n.op_type in INTEGER_OPS)


def _int8_tensor_names(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """(zero points of every Q/DQ node, int8 weights read by DequantizeLinear)."""
    inits = {t.name for t in model.graph.initializer}
    zero_points = {n.input[2] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2}
    weights = {n.input[0] for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    return zero_points, weights


def u8u8_variant(qdq: Path, out: Path) -> Path:
    """Every int8 tensor (zero point 0) re-encoded as uint8 with zero point 128: the same values."""
    model = onnx.load(str(qdq))
    zero_points, weights = _int8_tensor_names(model)
    for t in model.graph.initializer:
        if t.name in zero_points | weights:
            a = numpy_helper.to_array(t)
            assert a.dtype == np.int8, (t.name, a.dtype)
            t.CopyFrom(numpy_helper.from_array((a.astype(np.int16) + 128).astype(np.uint8), t.name))
    onnx.save(model, str(out))
    return out


def seven_bit_variant(qdq: Path, out: Path) -> Path:
    """Weights requantized to [-64, 63] (scale x 127/63) from the written int8 weights."""
    model = onnx.load(str(qdq))
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        q = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)
        s = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if s.ndim:
            shape[axis] = -1
        s7 = s * np.float32(127 / 63)
        q7 = np.clip(np.round(q * s.reshape(shape) / s7.reshape(shape)), -64, 63).astype(np.int8)
        inits[n.input[0]].CopyFrom(numpy_helper.from_array(q7, n.input[0]))
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(s7, n.input[1]))
    onnx.save(model, str(out))
    return out


def input_name_of(model: Path) -> str:
    return str(onnx.load(str(model), load_external_data=False).graph.input[0].name)


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.mean(cos)), float(np.mean(a.argmax(1) == b.argmax(1)))


def latencies(runners: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, list[float]]:
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(runs):
        for name, run in runners.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    return times


def machine() -> dict[str, Any]:
    cpu = cpu_features()
    model_name = ""
    try:
        model_name = next((line.split(":", 1)[1].strip() for line in
                           Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model_name or platform.processor(), "machine": cpu.machine,
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "features": cpu.describe(), "exact_int8_flags": list(cpu.exact_int8_flags),
            "checked_flags": {f: f in cpu.flags for f in ("avx2", "avx512f", *EXACT_INT8_FLAGS)},
            "onnxruntime": ort.__version__, "python": platform.python_version()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, default=REPO / "xinfer_stream" / "_assets" / "efficientnet_lite0.onnx")
    parser.add_argument("--preprocess", type=Path, help="Preprocess JSON (default: EfficientNet-Lite0's)")
    parser.add_argument("--clips", type=Path, nargs="+", default=DEFAULT_CLIPS)
    parser.add_argument("--frames", type=int, default=64, help="calibration frames, and as many held out")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    pre = Preprocess.load(args.preprocess) if args.preprocess else efficientnet_preprocess()
    load_start = os.getloadavg()
    info = machine()
    print(f"{info['cpu']} ({info['features']}), {info['cores']} cores, ONNX Runtime "
          f"{info['onnxruntime']}, {threads} threads; load average {load_start[0]:.2f}", flush=True)

    sampled = xs.sample_frames([str(c) for c in args.clips], 2 * args.frames, strategy="uniform",
                               seed=0)
    calib = [f.image for f in sampled[0::2]]
    held = preprocess_batch(pre, [f.image for f in sampled[1::2]]).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="bench-cpu-int8-") as tmp:
        qdq = Path(tmp) / "model.int8.onnx"
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize(args.model, Calibrator(calib, pre), qdq)
        print(f"quantized {args.model.name} on {len(calib)} frames in {time.perf_counter() - t:.0f} s",
              flush=True)
        u8u8 = u8u8_variant(qdq, Path(tmp) / "u8u8.onnx")
        seven = seven_bit_variant(qdq, Path(tmp) / "w7.onnx")
        calib_x = preprocess_batch(pre, calib).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ort_model = ort_quantizer_model(args.model, calib_x, input_name_of(args.model),
                                            Path(tmp) / "ort.onnx")

        fp32_backend = OnnxRuntimeBackend(args.model, threads=threads)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            int8_backend = OnnxRuntimeBackend(qdq, threads=threads)
        chosen = int8_backend.execution
        input_name = fp32_backend.inputs[0].name
        sessions: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray], int | None]] = {
            "fp32": ("float", lambda x: fp32_backend.run({input_name: x})[fp32_backend.outputs[0].name], None),
            "int8 backend": (chosen.mode, lambda x: int8_backend.run({input_name: x})[int8_backend.outputs[0].name],
                             chosen.fused_layers),
        }
        for name, path, disable in (("int8 as-written", qdq, True), ("int8 fused", qdq, False),
                                    ("int8 fused, u8u8", u8u8, False),
                                    ("int8 fused, 7-bit weights", seven, False),
                                    ("ORT quantizer, fused", ort_model, False),
                                    ("ORT quantizer, as-written", ort_model, True)):
            s = session(path, threads, disable_quant_qdq=disable)
            out = s.get_outputs()[0].name
            sessions[name] = ("int8-emulated" if disable else "int8-fused",
                              lambda x, s=s, out=out: s.run([out], {input_name: x})[0],
                              None if disable else integer_layers(path, threads))

        logits = {name: np.concatenate([np.asarray(run(held[i:i + 1])) for i in range(len(held))])
                  for name, (_, run, _) in sessions.items()}
        x = held[:1]
        times = latencies({name: (lambda run=run: run(x)) for name, (_, run, _) in sessions.items()
                           if name != "ORT quantizer, as-written"},  # only its logits are needed
                          args.runs, args.warmup)
        fp32_backend.close()
        int8_backend.close()
    load_end = os.getloadavg()

    ort_exactness = agreement(logits["ORT quantizer, fused"], logits["ORT quantizer, as-written"])
    rows = []
    for name, (mode, _, fused) in sessions.items():
        if name == "ORT quantizer, as-written":
            continue
        p50, p90 = (float(np.percentile(times[name], q)) * 1e3 for q in (50, 90))
        vs_asw = agreement(logits[name], logits["int8 as-written"]) if name != "fp32" else (None, None)
        vs_fp32 = agreement(logits[name], logits["fp32"]) if name != "fp32" else (None, None)
        rows.append(Row(name, mode, p50, p90, 1e3 / p50, *vs_asw, *vs_fp32, fused))
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n{args.model.name}, batch 1, {len(held)} held-out frames from "
          f"{', '.join(c.name for c in args.clips)}; {args.runs} runs a row, round-robin; {date}")
    print(f"backend chose {chosen.mode}: {chosen.reason}")
    print(f"{'row':27} {'mode':14} {'p50 ms':>7} {'p90 ms':>7} {'fps':>6} {'cos/asw':>8} "
          f"{'top1/asw':>8} {'cos/fp32':>8} {'top1/fp32':>9} {'int layers':>10}")

    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for r in rows:
        print(f"{r.name:27} {r.mode:14} {r.p50_ms:7.1f} {r.p90_ms:7.1f} {r.fps:6.1f} "
              f"{f(r.cosine_vs_as_written, '.4f'):>8} {f(r.top1_vs_as_written, '.3f'):>8} "
              f"{f(r.cosine_vs_fp32, '.4f'):>8} {f(r.top1_vs_fp32, '.3f'):>9} "
              f"{f(r.integer_layers, 'd'):>10}")
    print(f"ORT quantizer, fused vs its own as-written run: cosine {ort_exactness[0]:.4f}, "
          f"top-1 agreement {ort_exactness[1]:.3f}")
    print(f"load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end "
          f"({info['cores']} cores)")
    if args.json:
        args.json.write_text(json.dumps({
            "date": date, "model": args.model.name, "batch": 1, "frames": len(held),
            "clips": [c.name for c in args.clips], "runs": args.runs, "threads": threads,
            "machine": info, "load_average": {"start": load_start, "end": load_end},
            "backend_choice": {"mode": chosen.mode, "reason": chosen.reason,
                               "warnings": [str(w.message) for w in caught]},
            "rows": [asdict(r) for r in rows],
            "ort_quantizer_fused_vs_its_as_written": {"cosine": ort_exactness[0],
                                                      "top1": ort_exactness[1]}}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
