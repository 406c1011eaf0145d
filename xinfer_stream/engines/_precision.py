"""TensorRT versions and precision: the one place that decides how a network is typed.

TensorRT 11 builds strongly typed networks only: the ONNX tensor types are the precisions (INT8
where the model has Q/DQ pairs, FP16 where it was cast), and the FP16/INT8 builder flags and the
calibrators are gone. TensorRT 10 builds either way: strongly typed (precisions from the model),
or weakly typed with FP16/INT8 flags that let the builder pick faster kernels per layer (weak
typing is deprecated since 10.12). Robotics users on JetPack 6 and DeepStream 9 are on 10, so
both are supported, and the build log says which was used.

The policy (``plan_precision``):

==========  ======================================  ===========================================
TensorRT    model                                    network
==========  ======================================  ===========================================
11.x        any                                      strongly typed; ``fp16=True`` on a model
                                                     without float16 tensors is refused (cast
                                                     the model; TensorRT 11 cannot)
10.x        Q/DQ or float16 tensors, no ``fp16``      strongly typed (the model's precisions)
10.x        Q/DQ, ``fp16=True``                      weakly typed, INT8 + FP16 flags (explicit
                                                     quantization with FP16 for the rest, what
                                                     ``trtexec --int8 --fp16`` does)
10.x        float32 only                             weakly typed with the FP16 flag if asked;
                                                     INT8 needs a Q/DQ model (``with_int8``)
==========  ======================================  ===========================================
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .._errors import EngineBuildError, InvalidModelError

__all__ = ["ModelPrecisions", "PrecisionPlan", "TrtVersion", "model_precisions", "plan_precision"]

SUPPORTED_MAJORS = (10, 11)


@dataclass(frozen=True)
class TrtVersion:
    """A TensorRT version, parsed once from ``tensorrt.__version__``."""

    full: str
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        m = re.match(r"(\d+)\.(\d+)", str(text))
        if m is None:
            raise EngineBuildError(f"cannot read the TensorRT version from {text!r}")
        version = cls(str(text), int(m.group(1)), int(m.group(2)))
        if version.major not in SUPPORTED_MAJORS:
            raise EngineBuildError(
                f"TensorRT {text} is installed, but xinfer-stream supports TensorRT 10.x and "
                "11.x; install one of those (pip install 'tensorrt>=10,<12')")
        return version

    @property
    def strongly_typed_only(self) -> bool:
        """11.x: no FP16/INT8 builder flags, no calibrators."""
        return self.major >= 11

    def __str__(self) -> str:
        return self.full


@dataclass(frozen=True)
class ModelPrecisions:
    """What an ONNX model carries: Q/DQ pairs (INT8) and float16 tensors."""

    has_qdq: bool
    has_fp16: bool


@dataclass(frozen=True)
class PrecisionPlan:
    """How to type the network: ``strongly_typed``, or these ``flags`` (BuilderFlag names)."""

    strongly_typed: bool
    flags: tuple[str, ...]
    reason: str

    def describe(self) -> str:
        kind = "strongly typed" if self.strongly_typed else "weakly typed"
        flags = f", flags {'+'.join(self.flags)}" if self.flags else ""
        return f"{kind}{flags} ({self.reason})"


_FLOAT16 = 10  # onnx.TensorProto.FLOAT16


def model_precisions(path: str | os.PathLike[str]) -> ModelPrecisions:
    """Read which precisions the ONNX model at ``path`` carries (graph and initializers only)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError: the file is not an ONNX model
        raise InvalidModelError(f"cannot read {str(Path(path))!r} as an ONNX model: {exc}") from exc
    graph = model.graph
    ops = {node.op_type for node in graph.node}
    has_qdq = "QuantizeLinear" in ops and "DequantizeLinear" in ops
    types = [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)]
    types += [t.data_type for t in graph.initializer]
    types += [a.i for node in graph.node if node.op_type == "Cast" for a in node.attribute
              if a.name == "to"]
    return ModelPrecisions(has_qdq=has_qdq, has_fp16=_FLOAT16 in types)


def plan_precision(version: TrtVersion, model: ModelPrecisions, *, int8: bool,
                   fp16: bool) -> PrecisionPlan:
    """Decide the network typing for ``version`` (see the module docstring's table)."""
    if int8 and not model.has_qdq:
        raise EngineBuildError(
            "INT8 was asked for but the model has no QuantizeLinear/DequantizeLinear nodes. "
            "xinfer-stream builds INT8 engines from Q/DQ models (explicit quantization, the one "
            "INT8 path on TensorRT 10 and 11): use with_int8(calibrator) (CLI: --int8 --calib "
            "VIDEOS) or 'xinfer-stream quantize' first")
    if version.strongly_typed_only:
        if fp16 and not model.has_fp16:
            raise EngineBuildError(
                f"FP16 was asked for, but TensorRT {version} builds strongly typed networks only "
                "and this model has no float16 tensors: the model's types are the precisions. "
                "Convert the model to FP16 first (e.g. onnxconverter_common.float16."
                "convert_float_to_float16(model, keep_io_types=True)) or drop --fp16")
        carried = [p for p, has in (("Q/DQ INT8", model.has_qdq), ("float16", model.has_fp16)) if has]
        reason = f"TensorRT {version.major} is strongly typed only; precisions from the model" + (
            f" ({', '.join(carried)})" if carried else " (float32)")
        return PrecisionPlan(True, (), reason)
    if model.has_qdq and fp16:
        return PrecisionPlan(False, ("INT8", "FP16"),
                             f"TensorRT {version.major}: Q/DQ layers in INT8, the rest may use FP16")
    if model.has_qdq or model.has_fp16:
        return PrecisionPlan(True, (), f"TensorRT {version.major}: the model carries its "
                                       "precisions" + (" (Q/DQ INT8)" if model.has_qdq else
                                                       " (float16)"))
    if fp16:
        return PrecisionPlan(False, ("FP16",), f"TensorRT {version.major}: float32 model, FP16 "
                                               "allowed by flag")
    return PrecisionPlan(True, (), f"TensorRT {version.major}: float32 model, float32 engine")
