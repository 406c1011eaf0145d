"""Mixed precision for what stays unquantized: the rest of a Q/DQ model cast to FP16.

TensorRT 10 deprecated and TensorRT 11 removed the FP16 builder flag: networks are strongly typed,
so a layer runs in FP16 only if the model says so. :func:`cast_to_float16` rewrites a Q/DQ model so
that every float computation between the INT8 layers (activations, residual adds, padding,
pooling, layers kept out of INT8) is FP16, except:

* ops whose FP16 results are numerically fragile (``KEEP_FLOAT32_OPS``: exponentials and
  logarithms, divisions and powers, reductions over many elements, normalisations, index and
  box-selecting ops), and the nodes that produce the graph's outputs (so the logits, whose top-1
  margins can be smaller than FP16's spacing, are computed in FP32 from their inputs);
* the graph's inputs and outputs keep their FP32 type (``Cast`` nodes at the boundary), so the
  Preprocess contract and every consumer of the model stay as they were.

Q/DQ pairs follow their neighbours, so that no ``Cast`` ever separates a ``DequantizeLinear`` from
the layer it feeds (TensorRT fuses that pattern into one INT8 layer): a ``DequantizeLinear`` is FP16
when every node it feeds is, a ``QuantizeLinear`` when the node producing its input is. FP16 Q/DQ
scales need opset 19, so the model's opset is raised to 19 (``onnx.version_converter``).
A ``Cast`` is inserted wherever an FP32 tensor meets an FP16 consumer or the reverse.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .._errors import CalibrationError
from ._graph import all_names, elem_types, unique_name

__all__ = ["KEEP_FLOAT32_OPS", "cast_to_float16"]

KEEP_FLOAT32_OPS = frozenset({
    "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Div", "Erf",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceProd", "CumSum", "LayerNormalization", "InstanceNormalization",
    "GroupNormalization", "LpNormalization", "MeanVarianceNormalization", "TopK",
    "NonMaxSuppression", "RoiAlign", "Range", "RandomNormal", "RandomUniform",
    "RandomNormalLike", "RandomUniformLike", "EyeLike", "Bernoulli", "Multinomial"})
FLOAT16_OPSET = 19
_F32 = onnx.TensorProto.FLOAT
_F16 = onnx.TensorProto.FLOAT16
_FP16_MAX = float(np.finfo(np.float16).max)
# Inputs that stay float32 whatever the data type (Resize's scales are tensor(float) in every opset).
_FIXED_FLOAT32_INPUTS = {"Resize": (2,), "Upsample": (1,)}
# Nodes whose precision follows their consumers (they only produce values).
_FOLLOWERS = frozenset({"Constant", "ConstantOfShape", "DequantizeLinear"})


def cast_to_float16(model: onnx.ModelProto, *, keep: Iterable[str] = KEEP_FLOAT32_OPS,
                    name: str = "model") -> onnx.ModelProto:
    """A copy of ``model`` (a Q/DQ model, opset >= 13) with its float computations in FP16; see
    the module docstring. ``keep`` lists op types that stay FP32.

    Raises ``CalibrationError`` when the opset cannot be raised or a float constant does not fit
    FP16 (|x| > 65504).
    """
    keep_ops = frozenset(keep)
    out = _at_opset(model, name)
    graph = out.graph
    types = elem_types(out)
    nodes = list(graph.node)
    consumers: dict[str, list[tuple[int, int]]] = {}
    for index, node in enumerate(nodes):
        for slot, tensor in enumerate(node.input):
            if tensor:
                consumers.setdefault(tensor, []).append((index, slot))
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    graph_outputs = {o.name for o in graph.output}

    def has_float(node: onnx.NodeProto) -> bool:
        return any(types.get(t) == _F32 for t in list(node.input) + list(node.output) if t)

    half = [False] * len(nodes)
    for index, node in enumerate(nodes):
        if node.op_type in _FOLLOWERS or node.op_type == "QuantizeLinear":
            continue
        half[index] = (node.op_type not in keep_ops and has_float(node)
                       and not any(o in graph_outputs for o in node.output))
    for index in reversed(range(len(nodes))):        # followers: every consumer must be FP16
        node = nodes[index]
        if node.op_type in _FOLLOWERS and has_float(node):
            uses = [c for o in node.output for c in consumers.get(o, [])]
            half[index] = bool(uses) and all(half[c] for c, _ in uses) and \
                not any(o in graph_outputs for o in node.output)
    for index, node in enumerate(nodes):             # QuantizeLinear: as its input's producer
        if node.op_type == "QuantizeLinear":
            source = producer.get(node.input[0])
            half[index] = source is not None and half[source]
    # A follower feeding a QuantizeLinear (a Constant scale, say) is decided after it: redo them.
    for index in reversed(range(len(nodes))):
        node = nodes[index]
        if node.op_type in ("Constant", "ConstantOfShape") and has_float(node):
            uses = [c for o in node.output for c in consumers.get(o, [])]
            half[index] = bool(uses) and all(half[c] for c, _ in uses)

    for index, node in enumerate(nodes):
        if half[index]:
            _retype_attributes(node, name)

    taken = all_names(out)
    initializers = {t.name: t for t in graph.initializer}
    half_copies: dict[str, str] = {}
    casts: dict[tuple[str, int], str] = {}
    new_nodes: dict[int, list[onnx.NodeProto]] = {}    # casts to insert before node index
    head: list[onnx.NodeProto] = []

    def wanted(index: int, slot: int) -> int:
        node = nodes[index]
        if slot in _FIXED_FLOAT32_INPUTS.get(node.op_type, ()):
            return _F32
        return _F16 if half[index] else _F32

    def produced_type(tensor: str) -> int:
        source = producer.get(tensor)
        if source is None:
            return _F32                                 # a graph input or an initializer
        return _F16 if half[source] else _F32

    for index, node in enumerate(nodes):
        for slot, tensor in enumerate(node.input):
            if not tensor or types.get(tensor) != _F32:
                continue
            want = wanted(index, slot)
            if tensor in initializers:
                if want == _F16:
                    node.input[slot] = half_copies.setdefault(
                        tensor, _half_initializer(graph, initializers[tensor], taken, name))
                continue
            have = produced_type(tensor)
            if have == want:
                continue
            key = (tensor, want)
            if key not in casts:
                suffix = "fp16" if want == _F16 else "fp32"
                casts[key] = unique_name(f"{tensor}_{suffix}", taken)
                cast = helper.make_node("Cast", [tensor], [casts[key]], to=want,
                                        name=unique_name(f"{tensor}_Cast_{suffix}", taken))
                source = producer.get(tensor)
                if source is None:
                    head.append(cast)
                else:
                    new_nodes.setdefault(source, []).append(cast)
            node.input[slot] = casts[key]

    ordered: list[onnx.NodeProto] = list(head)
    for index, node in enumerate(nodes):
        ordered.append(node)
        ordered.extend(new_nodes.get(index, ()))
    del graph.node[:]
    graph.node.extend(ordered)
    read = {t for n in graph.node for t in n.input} | graph_outputs
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    _check_scales(graph, name)
    del graph.value_info[:]
    try:
        out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    except Exception as exc:  # InferenceError and friends
        raise CalibrationError(f"the FP16 version of {name!r} fails shape inference: {exc}") from exc
    return out


def _at_opset(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= FLOAT16_OPSET:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, FLOAT16_OPSET)
    except Exception as exc:  # the converter raises plain RuntimeError/ValueError
        raise CalibrationError(
            f"cannot raise the opset of {name!r} from {opset} to {FLOAT16_OPSET}, which FP16 "
            f"Q/DQ scales need: {exc}; quantize without float16") from exc
    converted.ir_version = max(converted.ir_version, 9)
    return converted


def _to_half(array: np.ndarray, what: str, name: str) -> np.ndarray:
    if array.size and float(np.abs(array).max()) > _FP16_MAX:
        raise CalibrationError(
            f"{what} of {name!r} holds {float(np.abs(array).max())!r}, beyond FP16's range "
            f"(+-{_FP16_MAX:g}); quantize without float16, or exclude the layer it belongs to "
            "and keep its op type in FP32")
    return array.astype(np.float16)


def _half_initializer(graph: onnx.GraphProto, tensor: onnx.TensorProto, taken: set[str],
                      name: str) -> str:
    value = _to_half(numpy_helper.to_array(tensor), f"the constant {tensor.name!r}", name)
    new_name = unique_name(f"{tensor.name}_fp16", taken)
    graph.initializer.append(numpy_helper.from_array(value, new_name))
    return new_name


def _retype_attributes(node: onnx.NodeProto, name: str) -> None:
    """Attributes that fix a float32 output type, switched to float16."""
    for attribute in node.attribute:
        if node.op_type == "Cast" and attribute.name == "to" and attribute.i == _F32:
            attribute.i = _F16
        elif node.op_type in ("Constant", "ConstantOfShape") and attribute.name == "value" \
                and attribute.t.data_type == _F32:
            value = _to_half(numpy_helper.to_array(attribute.t), f"node {node.name!r}", name)
            attribute.t.CopyFrom(numpy_helper.from_array(value, attribute.t.name))
    if node.op_type == "Constant":
        for attribute in list(node.attribute):
            if attribute.name in ("value_float", "value_floats"):
                values = np.asarray(attribute.f if attribute.name == "value_float"
                                    else list(attribute.floats), dtype=np.float32)
                node.attribute.remove(attribute)
                node.attribute.append(helper.make_attribute(
                    "value", numpy_helper.from_array(_to_half(values, f"node {node.name!r}", name))))


def _check_scales(graph: onnx.GraphProto, name: str) -> None:
    """Every FP16 Q/DQ scale must still be a positive normal number."""
    initializers = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = initializers.get(node.input[1])
        if scale is None or scale.data_type != _F16:
            continue
        value = numpy_helper.to_array(scale)
        if value.size and float(value.min()) < float(np.finfo(np.float16).tiny):
            raise CalibrationError(
                f"the FP16 scale {scale.name!r} of {node.name!r} in {name!r} is "
                f"{float(value.min())!r}, below FP16's smallest normal number; make the scales "
                "FP16-exact first (quantize(..., float16=True) does)")
