"""The ONNX Runtime backend: the CPU default, and the executor of Q/DQ models on any machine.

Owns one ``onnxruntime.InferenceSession``. ``run`` is synchronous and thread-safe (ONNX Runtime
sessions may be run from several threads); the runtime calls it from worker threads only.

How a model runs on the CPU is decided once per model (``backend.execution`` says which and why):

* ``float``: a model without Q/DQ nodes runs as it is.
* ``int8-fused``: a Q/DQ model runs through ONNX Runtime's integer kernels, where they are exact
  on this CPU (VNNI/AMX, see ``_cpu_features``) *and* ONNX Runtime fuses most of the model's
  quantized layers into them. Our Q/DQ placement is TensorRT's (Q/DQ on the inputs of Conv and
  Gemm only, outputs float), which ONNX Runtime's fusion rules (DequantizeLinear -> op ->
  QuantizeLinear) mostly do not match: it fuses 2 of the 50 layers of EfficientNet-Lite0. The
  rest then run in float on weights dequantized at every run, slower than the emulation below
  (BENCHMARKS.md, "INT8 on the CPU"), so a model that fuses little is not run fused even where the kernels are
  exact.
* ``int8-emulated``: otherwise, the Q/DQ model runs as written, float arithmetic on quantized
  values (``session.disable_quant_qdq``; what TensorRT computes): the right answers, but slower
  than the FP32 model. An :class:`EmulatedInt8Warning` says so (Python's default warning filter
  shows it once per model).
"""

from __future__ import annotations

import os
import tempfile
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .._errors import ClosedResourceError, InferenceError, InvalidModelError
from ._base import TensorSpec
from ._cpu_features import CpuFeatures, cpu_features

__all__ = ["CpuExecution", "EmulatedInt8Warning", "OnnxRuntimeBackend", "choose_execution",
           "ort_tensor_dtype", "quantized_layers"]

ExecutionMode = Literal["float", "int8-fused", "int8-emulated"]

# Fused pays only when most quantized layers fuse: each one left unfused runs in float on weights
# dequantized at every run (ONNX Runtime keeps weight DequantizeLinear nodes for fusion).
FUSED_MIN_SHARE = 0.5
_COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat",
                          "ConvInteger", "MatMulInteger", "QLinearConvTranspose"})


class EmulatedInt8Warning(UserWarning):
    """A Q/DQ model runs as emulated float on this CPU: right answers, slower than its FP32 model."""


@dataclass(frozen=True)
class CpuExecution:
    """How the backend runs its model, and why (one sentence, for logs and ``inspect``).

    ``fused_layers``/``quantized_layers``: for a Q/DQ model, how many of its quantized layers
    ONNX Runtime fused into integer kernels (when that was tried) and how many there are.
    """

    mode: ExecutionMode
    reason: str
    quantized_layers: int = 0
    fused_layers: int | None = None


def quantized_layers(model: Any) -> int:
    """How many Conv/ConvTranspose/Gemm/MatMul nodes of an ``onnx.ModelProto`` read a
    DequantizeLinear output (0 for a float model)."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in model.graph.node
               if n.op_type in _COMPUTE_OPS and any(i in dequantized for i in n.input))


def choose_execution(*, quantized: int, cpu: CpuFeatures, fused: int | None = None) -> CpuExecution:
    """The mode for a model with ``quantized`` quantized layers on ``cpu`` on ONNX Runtime's CPU
    provider. ``fused``: how many of them ONNX Runtime fused into integer kernels, where that was
    measured (only worth measuring where ``cpu.exact_int8``)."""
    if not quantized:
        return CpuExecution("float", "a float model runs as it is")
    if not cpu.exact_int8:
        return CpuExecution(
            "int8-emulated",
            f"ONNX Runtime's integer kernels saturate 16-bit sums on this CPU ({cpu.describe()}); "
            "the Q/DQ model runs as written, float arithmetic on quantized values", quantized)
    if fused is None:
        raise ValueError("choose_execution needs fused= (the fused layer count) on a CPU whose "
                         "integer kernels are exact")
    if fused >= FUSED_MIN_SHARE * quantized:
        return CpuExecution(
            "int8-fused",
            f"{cpu.describe()}: ONNX Runtime's integer kernels are exact here and run {fused} "
            f"of {quantized} quantized layers", quantized, fused)
    return CpuExecution(
        "int8-emulated",
        f"ONNX Runtime's integer kernels are exact on this CPU ({cpu.describe()}) but would run "
        f"only {fused} of {quantized} quantized layers of this model (its Q/DQ placement is "
        "TensorRT's), the rest in float on weights dequantized at every run; the Q/DQ model runs "
        "as written instead, float arithmetic on quantized values", quantized, fused)


def _emulation_warning(name: str, execution: CpuExecution) -> str:
    return (f"{name}: INT8 runs as emulated float on this CPU, slower than the FP32 model "
            f"(BENCHMARKS.md, 'INT8 on the CPU'): {execution.reason}. Use the FP32 model on this CPU, or INT8 on a "
            "GPU (TensorRT)")


_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(bool)": "bool",
}


def ort_tensor_dtype(ort_type: str) -> str:
    return _ORT_TYPES.get(ort_type, ort_type)


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
    return TensorSpec(arg.name, shape, ort_tensor_dtype(arg.type))


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class OnnxRuntimeBackend:
    """An ONNX model loaded into ONNX Runtime on the CPU.

    ``providers`` defaults to the CPU provider; pass ``["CUDAExecutionProvider", ...]`` where
    onnxruntime-gpu is installed. ``threads`` is ONNX Runtime's intra-op thread count (default:
    every core this process may use). ``cpu``: what the CPU offers ONNX Runtime's integer
    kernels (default: this machine's, :func:`cpu_features`); with the model, it decides how a
    Q/DQ model runs (module docstring), which ``execution`` reports. Warns
    :class:`EmulatedInt8Warning` when a Q/DQ model runs as emulated float on the CPU.
    """

    def __init__(self, path: str | os.PathLike[str], *, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None, cpu: CpuFeatures | None = None) -> None:
        import onnx
        import onnxruntime as ort

        self._path = Path(path)
        self._providers = list(providers)
        self._threads = threads or default_threads()
        try:
            quantized = quantized_layers(onnx.load(str(self._path), load_external_data=False))
        except Exception as exc:  # protobuf's DecodeError and friends for a file that is not ONNX
            raise InvalidModelError(
                f"could not load {str(self._path)!r} as an ONNX model ({type(exc).__name__}: "
                f"{exc}); check the path and that the file is a complete ONNX model") from exc
        session: Any = None
        cpu_only = self._providers == ["CPUExecutionProvider"]
        if quantized and not cpu_only:
            # Not (only) the CPU's kernels: run as written, which every provider computes right.
            execution = CpuExecution("int8-emulated", f"run as written on {self._providers[0]}",
                                     quantized)
        else:
            cpu = cpu or cpu_features()
            fused: int | None = None
            if quantized and cpu.exact_int8:
                session, fused = self._open_fused(ort)
            execution = choose_execution(quantized=quantized, cpu=cpu, fused=fused)
        if execution.mode != "int8-fused":
            session = self._open(ort, disable_quant_qdq=True)
            if execution.mode == "int8-emulated" and cpu_only:
                warnings.warn(_emulation_warning(self._path.name, execution), EmulatedInt8Warning,
                              stacklevel=2)
        self._session = session
        self._execution = execution
        self._inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self._outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self._output_names = [o.name for o in self._outputs]
        self._lock = threading.Lock()
        self._closed = False

    def _open(self, ort: Any, *, disable_quant_qdq: bool, optimized: Path | None = None) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.log_severity_level = 3
        if disable_quant_qdq:  # harmless for a float model
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        if optimized is not None:
            options.optimized_model_filepath = str(optimized)
            # weights beside it: only the graph is read back, and no 2 GB protobuf limit applies
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", "weights.bin")
        try:
            return ort.InferenceSession(str(self._path), sess_options=options,
                                        providers=self._providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
            raise InvalidModelError(
                f"ONNX Runtime could not load {str(self._path)!r}: {exc}. Check that the file is a "
                "complete ONNX model (onnx.checker.check_model) for an opset ONNX Runtime supports."
            ) from exc

    def _open_fused(self, ort: Any) -> tuple[Any, int]:
        """A session with ONNX Runtime's Q/DQ fusion on, and how many layers it fused (read from
        the optimized graph ONNX Runtime writes)."""
        import onnx

        with tempfile.TemporaryDirectory(prefix="xinfer-ort-") as tmp:
            optimized = Path(tmp) / "optimized.onnx"
            session = self._open(ort, disable_quant_qdq=False, optimized=optimized)
            graph = onnx.load(str(optimized), load_external_data=False).graph
        return session, sum(1 for n in graph.node if n.op_type in _INTEGER_OPS)

    @property
    def execution(self) -> CpuExecution:
        """How this model runs (``float``, ``int8-fused`` or ``int8-emulated``) and why."""
        return self._execution

    @property
    def kind(self) -> str:
        return "onnxruntime"

    @property
    def device(self) -> Literal["cpu", "cuda"]:
        return "cpu"

    @property
    def path(self) -> Path:
        return self._path

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def max_batch(self) -> int | None:
        batch = self._inputs[0].shape[0] if self._inputs and self._inputs[0].shape else None
        return batch  # a fixed batch dim is the max; None means any

    @property
    def closed(self) -> bool:
        return self._closed

    def run(self, feeds: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        with self._lock:
            if self._closed:
                raise ClosedResourceError(f"the ONNX Runtime backend for {str(self._path)!r} is closed")
            session = self._session
        try:
            values = session.run(self._output_names, dict(feeds))
        except Exception as exc:
            shapes = {k: (v.dtype.name, v.shape) for k, v in feeds.items()}
            raise InferenceError(
                f"ONNX Runtime failed to run {self._path.name!r} on inputs {shapes}: {exc}") from exc
        return dict(zip(self._output_names, values))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._session = None

    def __enter__(self) -> OnnxRuntimeBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
