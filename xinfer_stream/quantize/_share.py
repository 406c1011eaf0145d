"""Which weighted ops of a Q/DQ ONNX model run in INT8, and what share of the work that is.

One rule, used by everything that reports an INT8 share (``quantize``'s summary and report, the
budget search, ``xinfer-stream report`` and ``xinfer-stream inspect``): a Conv, ConvTranspose,
Gemm or MatMul runs in INT8 when its data input *and* its weight input (inputs 0 and 1; for a
MatMul of two activations, both of them) are outputs of ``DequantizeLinear`` nodes. That is the
pattern TensorRT fuses into an INT8 kernel; a node with one input dequantized and the other float
runs in float, whatever Q/DQ pairs surround it.

The share is weighted by multiply-accumulates (MACs) for one frame, computed from the tensor
shapes of the model run at one input shape (:func:`input_shape_for` resolves a dynamic batch to 1
and a dynamic height/width to a given size, and says what it assumed). Shapes come from ONNX
shape inference, and where it cannot follow them (EfficientNet's computed paddings), from one run
of ONNX Runtime on zeros of that shape.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from .._errors import CalibrationError, InvalidCalibrationInput
from ._graph import WEIGHTED_OPS

__all__ = ["LOW_SHARE", "LOW_SHARE_MESSAGE", "Int8Share", "WeightedOp", "input_shape_for", "int8_ops", "int8_share",
           "weighted_macs"]

# Below this fraction of MACs in INT8 a quantized model is mostly a float model: say so.
LOW_SHARE = 0.5
# How that warning begins (a pattern for ``warnings.filterwarnings``).
LOW_SHARE_MESSAGE = r"only [0-9.]+% of the MACs"
_SHOWN = 5


@dataclass(frozen=True)
class WeightedOp:
    """One Conv/ConvTranspose/Gemm/MatMul: its MACs for one frame, whether it runs in INT8, and,
    when not, why (from the graph, or the reason the quantizer recorded)."""

    name: str
    op_type: str
    macs: int
    int8: bool
    why_float: str | None = None


@dataclass(frozen=True)
class Int8Share:
    """The weighted ops of one model in graph order, and the input shape their MACs assume."""

    ops: tuple[WeightedOp, ...]
    input_shape: tuple[int, ...]
    shape_source: str             # how the input shape was chosen, in words

    @property
    def int8_ops(self) -> frozenset[str]:
        return frozenset(op.name for op in self.ops if op.int8)

    @property
    def total_macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def int8_macs(self) -> int:
        return sum(op.macs for op in self.ops if op.int8)

    @property
    def fraction(self) -> float:
        """The fraction of MACs in INT8 (of ops, where no op has MACs; 0 without weighted ops)."""
        return self.fraction_without(())

    def fraction_without(self, nodes: Iterable[str]) -> float:
        """The fraction of MACs in INT8 if ``nodes`` ran in float as well."""
        out = set(nodes)
        int8 = [op for op in self.ops if op.int8 and op.name not in out]
        total = self.total_macs
        if total:
            return sum(op.macs for op in int8) / total
        return len(int8) / len(self.ops) if self.ops else 0.0

    def biggest_float(self, count: int = _SHOWN) -> tuple[WeightedOp, ...]:
        """The float ops with the most MACs, most first."""
        floats = sorted((op for op in self.ops if not op.int8), key=lambda op: -op.macs)
        return tuple(floats[:count])

    def with_reasons(self, reasons: Mapping[str, str]) -> Int8Share:
        """A copy whose float ops named in ``reasons`` give that reason instead of the graph's."""
        return replace(self, ops=tuple(
            replace(op, why_float=reasons[op.name]) if not op.int8 and op.name in reasons else op
            for op in self.ops))

    def describe(self) -> str:
        """One line: ``INT8: 49 of 50 weighted ops, 99.1% of 385.1 M MACs (input ...)``."""
        return (f"INT8: {len(self.int8_ops)} of {len(self.ops)} weighted ops, "
                f"{100.0 * self.fraction:.1f}% of {_macs_text(self.total_macs)} MACs "
                f"(input {_shape_text(self.input_shape)}: {self.shape_source})")

    def float_lines(self, count: int = _SHOWN) -> list[str]:
        """The biggest float ops, one line each, with why they are float."""
        lines = [f"float {op.name} ({op.op_type}, {self._share(op):.1f}% of MACs): "
                 f"{op.why_float or 'not quantized'}" for op in self.biggest_float(count)]
        left = sum(1 for op in self.ops if not op.int8) - len(lines)
        if left > 0:
            lines.append(f"... and {left} more float op{'s' if left != 1 else ''}")
        return lines

    def warning(self, label: str) -> str | None:
        """What to say when less than half of the MACs are INT8 (None otherwise)."""
        if not self.ops or self.fraction >= LOW_SHARE:
            return None
        biggest = ", ".join(f"{op.name} ({op.op_type}, {self._share(op):.1f}% of MACs"
                            + (f": {op.why_float}" if op.why_float else "") + ")"
                            for op in self.biggest_float(3))
        return (f"only {100.0 * self.fraction:.1f}% of the MACs of {label!r} run in INT8 "
                f"({len(self.int8_ops)} of {len(self.ops)} weighted ops); the biggest float ops: "
                f"{biggest}. TensorRT will run most of this model in float")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": "a Conv/ConvTranspose/Gemm/MatMul is INT8 when its data and weight inputs "
                    "both come from DequantizeLinear",
            "int8_ops": len(self.int8_ops), "weighted_ops": len(self.ops),
            "int8_macs": self.int8_macs, "total_macs": self.total_macs,
            "int8_mac_fraction": self.fraction,
            "input_shape": list(self.input_shape), "input_shape_source": self.shape_source,
            "ops": [{"name": op.name, "op_type": op.op_type, "macs": op.macs, "int8": op.int8,
                     "why_float": op.why_float} for op in self.ops],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Int8Share:
        """Read back :meth:`to_dict`; ``InvalidCalibrationInput`` when malformed."""
        try:
            ops = tuple(WeightedOp(str(o["name"]), str(o["op_type"]), int(o["macs"]),
                                   bool(o["int8"]), o.get("why_float")) for o in data["ops"])
            return cls(ops, tuple(int(d) for d in data["input_shape"]),
                       str(data["input_shape_source"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidCalibrationInput(
                f"the report's int8_share is malformed ({type(exc).__name__}: {exc}); it was not "
                "written by this version of xinfer-stream, or was edited") from exc

    def _share(self, op: WeightedOp) -> float:
        total = self.total_macs
        return 100.0 * op.macs / total if total else 0.0


def int8_share(model: onnx.ModelProto | bytes | str | os.PathLike[str],
               input_shape: Sequence[int], *, shape_source: str,
               macs: Mapping[str, int] | None = None, threads: int | None = None) -> Int8Share:
    """The INT8 share of ``model`` (see the module docstring) at ``input_shape`` (the shape of
    its single data input, batch included; ``shape_source`` says where it came from).

    ``macs``: MACs per weighted op name already computed at that shape (by
    :func:`weighted_macs` on this model or the float model it was made from); computed here
    otherwise. Raises ``CalibrationError`` when the shapes cannot be determined.
    """
    proto = _as_model(model)
    if macs is None:
        macs = weighted_macs(proto, input_shape, threads=threads)
    ops = tuple(WeightedOp(node.name, node.op_type, int(macs.get(node.name, 0)), why is None, why)
                for node, why in _weighted_nodes(proto))
    return Int8Share(ops, tuple(int(d) for d in input_shape), shape_source)


def int8_ops(model: onnx.ModelProto) -> frozenset[str]:
    """Names of the weighted ops of ``model`` that run in INT8 (the module docstring's rule)."""
    return frozenset(node.name for node, why in _weighted_nodes(model) if why is None)


def _weighted_nodes(model: onnx.ModelProto) -> Iterable[tuple[onnx.NodeProto, str | None]]:
    """Every weighted op of ``model`` with None when it runs in INT8, else why not."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear"
                   for o in n.output if o}
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        data = len(node.input) > 0 and node.input[0] in dequantized
        weight = len(node.input) > 1 and node.input[1] in dequantized
        if data and weight:
            yield node, None
        elif not (data or weight):
            yield node, "neither input comes from DequantizeLinear"
        else:
            yield node, (f"its {'data' if not data else 'weight'} input does not come from "
                         "DequantizeLinear")


def input_shape_for(model: onnx.ModelProto, *, size: tuple[int, int] | None = None,
                    layout: str | None = None, size_source: str = "the Preprocess"
                    ) -> tuple[tuple[int, ...], str]:
    """The shape of ``model``'s single data input with every dynamic dimension fixed, and how:
    a dynamic batch (axis 0) becomes 1; for a 4-D image input (``layout`` ``"nchw"`` or
    ``"nhwc"``, else guessed from which axis holds 1, 3 or 4 channels) a dynamic height/width
    becomes ``size`` (from ``size_source``). ``ValueError`` when a dimension stays unknown."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InvalidCalibrationInput(
            f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); the INT8 "
            "share is computed for models with one data input")
    dims: list[int | None] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                              else None for d in inputs[0].type.tensor_type.shape.dim]
    notes: list[str] = []
    if dims and dims[0] is None:
        dims[0] = 1
        notes.append("batch 1 for the dynamic batch axis")
    if len(dims) == 4:
        if layout is None:        # the channel axis is the static one (1, 3 or 4 where both are)
            if dims[1] is not None and (dims[1] in (1, 3, 4) or dims[3] is None):
                layout = "nchw"
            elif dims[3] is not None:
                layout = "nhwc"
        axes = (2, 3) if layout == "nchw" else (1, 2) if layout == "nhwc" else None
        if axes is not None and any(dims[a] is None for a in axes):
            if size is None:
                raise InvalidCalibrationInput(
                    f"the input {inputs[0].name!r} of the model has a dynamic height/width "
                    f"({_dims_text(dims)}); the MACs need the size it runs at: give it (CLI: "
                    "--size H W, or the model's .preprocess.json sidecar)")
            for axis, value in zip(axes, size, strict=True):
                dims[axis] = int(value)
            notes.append(f"height and width {size[0]}x{size[1]} from {size_source}")
    if any(d is None for d in dims):
        raise InvalidCalibrationInput(
            f"the input {inputs[0].name!r} of the model has dynamic dimensions "
            f"({_dims_text(dims)}) that are not a batch, height or width; the INT8 share cannot "
            "count MACs without them")
    fixed = tuple(int(d) for d in dims if d is not None)
    return fixed, ", ".join(notes) if notes else "the model's static input shape"


def weighted_macs(model: onnx.ModelProto, input_shape: Sequence[int], *,
                  threads: int | None = None) -> dict[str, int]:
    """MACs for one input of ``input_shape`` of every Conv/ConvTranspose/Gemm/MatMul, by name."""
    shapes = _shapes(model, tuple(int(d) for d in input_shape), threads)
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS:
            out[node.name] = _node_macs(node, shapes)
    return out


# -- shapes -----------------------------------------------------------------------------------
def _as_model(model: onnx.ModelProto | bytes | str | os.PathLike[str]) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(os.fspath(model))


def _needed(model: onnx.ModelProto) -> list[str]:
    return sorted({t for n in model.graph.node if n.op_type in WEIGHTED_OPS
                   for t in [*n.input[:2], n.output[0]] if t})


def _shapes(model: onnx.ModelProto, input_shape: tuple[int, ...],
            threads: int | None) -> dict[str, list[int]]:
    """Shapes of the inputs and outputs of the weighted ops with the data input at
    ``input_shape``: static inference first, ONNX Runtime on zeros where it falls short."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    graph = fixed.graph
    initializers = {t.name: list(t.dims) for t in graph.initializer}
    data_input = next(i for i in graph.input if i.name not in initializers)
    dims = data_input.type.tensor_type.shape.dim
    if len(dims) != len(input_shape):
        raise InvalidCalibrationInput(
            f"the input {data_input.name!r} has {len(dims)} dimensions, not the "
            f"{len(input_shape)} of {_shape_text(input_shape)}")
    for dim, value in zip(dims, input_shape, strict=True):
        dim.Clear()
        dim.dim_value = value
    del graph.value_info[:]
    for output in graph.output:              # declared dims (a symbolic batch) would stick
        output.type.tensor_type.ClearField("shape")
    needed = _needed(fixed)
    shapes: dict[str, list[int]] = dict(initializers)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:  # noqa: BLE001 (InferenceError and friends: ONNX Runtime below decides)
        inferred = fixed
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        shape = value.type.tensor_type.shape
        if value.type.tensor_type.HasField("shape") and all(
                d.HasField("dim_value") for d in shape.dim):
            shapes.setdefault(value.name, [d.dim_value for d in shape.dim])
    missing = [t for t in needed if t not in shapes]
    if missing:
        shapes.update(_run_shapes(fixed, data_input, input_shape, missing, threads))
    return shapes


def _run_shapes(model: onnx.ModelProto, data_input: onnx.ValueInfoProto,
                input_shape: tuple[int, ...], wanted: list[str],
                threads: int | None) -> dict[str, list[int]]:
    from ._evaluate import _Session

    dtype = onnx.helper.tensor_dtype_to_np_dtype(data_input.type.tensor_type.elem_type)
    try:
        session = _Session(model, "the model (for its tensor shapes)", wanted, threads, False)
        values = session.run(np.zeros(input_shape, dtype))
    except CalibrationError as exc:
        raise CalibrationError(
            f"cannot count the MACs of the model at input {_shape_text(input_shape)}: shape "
            f"inference left {len(wanted)} tensors unknown (e.g. {wanted[0]!r}) and ONNX Runtime "
            f"could not run it: {exc}") from exc
    return {t: list(values[t].shape) for t in wanted}


def _node_macs(node: onnx.NodeProto, shapes: Mapping[str, list[int]]) -> int:
    a = shapes.get(node.input[0]) if node.input else None
    b = shapes.get(node.input[1]) if len(node.input) > 1 else None
    y = shapes.get(node.output[0])
    if not a or not b or y is None:
        return 0
    if node.op_type == "Conv":                 # y (N, Cout, *S), w (Cout, Cin/g, *K)
        return math.prod(y) * math.prod(b[1:])
    if node.op_type == "ConvTranspose":        # x (N, Cin, *S), w (Cin, Cout/g, *K)
        return math.prod(a) * math.prod(b[1:])
    if node.op_type == "Gemm":
        trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
        return math.prod(y) * (a[0] if trans_a else a[-1])
    if node.op_type == "MatMul":
        return math.prod(y) * a[-1]
    return 0


def _macs_text(macs: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if macs >= scale:
            return f"{macs / scale:.2f} {unit}"
    return str(macs)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _dims_text(dims: Sequence[int | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)
