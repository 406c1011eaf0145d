"""``inspect_onnx``: what an ONNX model is, for ``xinfer-stream inspect model.onnx``.

The report holds the model's io, its Q/DQ nodes and the INT8 share of its weighted ops
(:mod:`xinfer_stream.quantize._share`: which Conv/ConvTranspose/Gemm/MatMul have data and weight
both dequantized, so that TensorRT runs them in INT8, and the fraction of the MACs they hold).
MACs need a concrete input shape: a dynamic height/width is taken from ``size``, else from the
model's ``.preprocess.json`` sidecar; the report says which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import InvalidCalibrationInput, InvalidModelError
from ..preprocess import Preprocess, preprocess_path_for
from ..engines._external_data import check_external_data
from ..engines._metadata import IoTensor
from ._detection_head import describe_detection_tail, detection_tail
from ._sensitivity import quantized_inputs

if TYPE_CHECKING:
    from ._share import Int8Share

__all__ = ["OnnxReport", "inspect_onnx"]


@dataclass(frozen=True)
class OnnxReport:
    """An ONNX model described; ``int8_share`` is None when it could not be counted (``notes``
    say why)."""

    path: Path
    size: int
    opset: int
    inputs: tuple[IoTensor, ...]
    outputs: tuple[IoTensor, ...]
    quantize_nodes: int
    dequantize_nodes: int
    preprocess: Preprocess | None
    int8_share: Int8Share | None
    notes: tuple[str, ...]
    # A recognised detection head's box-decoding tail (``_detection_head``), and those of its
    # nodes that read a DequantizeLinear output (empty when the tail stays float).
    detection_tail: tuple[str, ...] = ()
    quantized_tail: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "bytes": self.size, "format": "onnx", "opset": self.opset,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "quantize_linear": self.quantize_nodes, "dequantize_linear": self.dequantize_nodes,
            "preprocess": self.preprocess.to_dict() if self.preprocess is not None else None,
            "int8_share": self.int8_share.to_dict() if self.int8_share is not None else None,
            "notes": list(self.notes),
            "detection_tail": list(self.detection_tail),
            "quantized_tail": list(self.quantized_tail),
        }

    def format(self) -> str:
        """The human-readable report."""
        lines = [f"{self.path}  ({self.size / 1e6:.2f} MB, ONNX opset {self.opset})",
                 f"  Q/DQ       {self.quantize_nodes} QuantizeLinear, "
                 f"{self.dequantize_nodes} DequantizeLinear"]
        if self.preprocess is not None:
            p = self.preprocess
            lines.append(f"  preprocess {p.size[0]}x{p.size[1]} {p.resize}, {p.color}, mean "
                         f"{list(p.mean)}, std {list(p.std)}, {p.layout} {p.dtype} (sidecar)")
        lines.append("  io:")
        width = max((len(t.name) for t in (*self.inputs, *self.outputs)), default=4)
        for role, t in [("in ", t) for t in self.inputs] + [("out", t) for t in self.outputs]:
            dims = "x".join("?" if d is None else str(d) for d in t.shape)
            lines.append(f"    {role} {t.name:<{width}}  {t.dtype:<8} {dims}")
        if self.int8_share is not None:
            lines.append(f"  {self.int8_share.describe()}")
            lines.extend(f"    {line}" for line in self.int8_share.float_lines())
        if self.detection_tail:
            where = (f"{len(self.quantized_tail)} of them read quantized inputs"
                     if self.quantized_tail else "none of them quantized")
            lines.append(f"  {describe_detection_tail(self.detection_tail)}; {where}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


def inspect_onnx(path: str | os.PathLike[str], *, size: tuple[int, int] | None = None
                 ) -> OnnxReport:
    """Describe the ONNX model at ``path`` (see the module docstring). ``size`` (height, width):
    where a dynamic input size is fixed to count MACs. ``InvalidModelError`` when the file is
    missing or is not an ONNX model."""
    from ._share import input_shape_for, int8_share

    model_path = Path(path)
    if not model_path.is_file():
        raise InvalidModelError(f"model file not found: {str(model_path)!r}")
    check_external_data(model_path)
    model = _read(model_path)
    sidecar = preprocess_path_for(model_path)
    preprocess = Preprocess.load(sidecar) if sidecar.is_file() else None
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(_io(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_io(v) for v in model.graph.output)
    counts = {op: sum(1 for n in model.graph.node if n.op_type == op)
              for op in ("QuantizeLinear", "DequantizeLinear")}
    notes: list[str] = []
    share = None
    if size is not None:
        given: tuple[tuple[int, int] | None, str | None, str] = (size, None, "--size")
    elif preprocess is not None:
        given = (preprocess.size, preprocess.layout, f"the sidecar {sidecar.name}")
    else:
        given = (None, None, "")
    try:
        shape, source = input_shape_for(model, size=given[0], layout=given[1],
                                        size_source=given[2])
        share = int8_share(model, shape, shape_source=source)
    except InvalidCalibrationInput as exc:
        notes.append(f"INT8 share not counted: {exc}")
    if not counts["DequantizeLinear"]:
        notes.append("no DequantizeLinear nodes: a float model, every weighted op runs in float "
                     "(quantize it with 'xinfer-stream quantize')")
    elif share is not None:
        low = share.warning(model_path.name)
        if low is not None:
            notes.append(low)
    tail = _detection_tail(model)
    readers = quantized_inputs(model)
    return OnnxReport(model_path, model_path.stat().st_size, opset, inputs, outputs,
                      counts["QuantizeLinear"], counts["DequantizeLinear"], preprocess, share,
                      tuple(notes), tail, tuple(n for n in tail if n in readers))


def _detection_tail(model: Any) -> tuple[str, ...]:
    """The detection head's tail of ``model`` (Q/DQ or not): Q/DQ nodes over constants count as
    constants, types from shape inference."""
    import onnx

    from ._graph import _constant_tensors, _float_tensors

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (inference fails on some models: the types stay unknown)
        inferred = model
    return detection_tail(inferred.graph, constants=_constant_tensors(inferred.graph),
                          floats=_float_tensors(inferred))


def _read(path: Path) -> Any:
    """The parsed model, or ``InvalidModelError`` saying the file is not one."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidModelError(
            f"{str(path)!r} could not be read as an ONNX model ({type(exc).__name__}: {exc}); "
            "give an ONNX model or a TensorRT engine built by 'xinfer-stream build'") from exc
    if not model.graph.node or not model.opset_import:
        raise InvalidModelError(
            f"{str(path)!r} is not an ONNX model (it parses to no graph); give an ONNX model or "
            "a TensorRT engine built by 'xinfer-stream build'")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(
            f"{str(path)!r} is not a valid ONNX model ({first}); re-export it or check the file "
            "is complete") from exc
    return model


def _io(value: Any) -> IoTensor:
    import onnx

    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in tensor.shape.dim)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type \
        else "?"
    return IoTensor(value.name, dims, dtype)
