"""The ONNX Runtime backend: the CPU default, and the executor of Q/DQ models on any machine.

Owns one ``onnxruntime.InferenceSession``. ``run`` is synchronous and thread-safe (ONNX Runtime
sessions may be run from several threads); the runtime calls it from worker threads only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .._errors import ClosedResourceError, InferenceError, InvalidModelError
from ._base import TensorSpec

__all__ = ["OnnxRuntimeBackend", "ort_tensor_dtype"]

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
    every core this process may use).
    """

    def __init__(self, path: str | os.PathLike[str], *, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self._path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.log_severity_level = 3
        # Run Q/DQ models as float arithmetic on quantized values (what TensorRT computes), not
        # through ONNX Runtime's fused integer kernels: on AVX2 CPUs without VNNI those saturate
        # 16-bit sums and gave wrong logits here (cosine 0.97 -> 0.82 on EfficientNet-Lite0).
        # Harmless for float models; the speed on our 2-core box was the same.
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        try:
            self._session: Any = ort.InferenceSession(str(self._path), sess_options=options,
                                                      providers=list(providers))
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
            raise InvalidModelError(
                f"ONNX Runtime could not load {str(self._path)!r}: {exc}. Check that the file is a "
                "complete ONNX model (onnx.checker.check_model) for an opset ONNX Runtime supports."
            ) from exc
        self._inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self._outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self._output_names = [o.name for o in self._outputs]
        self._lock = threading.Lock()
        self._closed = False

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
