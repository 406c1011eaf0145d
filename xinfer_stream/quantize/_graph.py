"""The FP32 graph we quantize: loading, normalising, and deciding where Q/DQ pairs go.

Normalising (``prepare``) makes any ONNX model look the same to the later steps: opset raised to
13 when lower (per-channel ``DequantizeLinear`` needs the ``axis`` attribute of opset 13),
initializers no longer listed as graph inputs (IR < 4 models list them, which makes them
overridable and so not constants), every node named, and tensor types inferred. The weights
and biases of Conv, ConvTranspose, Gemm and MatMul are made initializers whatever form the
exporter chose: a ``Constant`` node (as Paddle exports), a chain of ``Identity``, ``Cast``,
``Reshape``, ``Transpose``... over constants (the ONNX zoo's MNIST reshapes an initializer), or a
``DequantizeLinear`` of stored integers (weight-only quantized storage) are evaluated once and
replaced by the float32 value they compute; a weight used by several nodes stays one tensor.
Stored integer weights are so turned back into float and quantized again symmetric per output
channel (exactly the stored values again when they already were symmetric per channel); a model
whose activations are already quantized (``QuantizeLinear``, ``QLinearConv``...) is refused.

Placement (``plan``) follows TensorRT's explicit-quantization guidance (TensorRT 8.x-11.x developer
guide, "Q/DQ layer placement"): quantize the inputs of Conv, ConvTranspose, Gemm and MatMul, never
their outputs; weights symmetric per output channel (axis 0 for Conv, 1 for ConvTranspose, the
output column for Gemm/MatMul); activations per tensor. With ``placement="trt"`` (the default) it
also quantizes the skip input of a residual ``Add`` (so TensorRT fuses the Add into the
convolution that produces its other input) and the inputs of pooling, Concat and Resize (so they
run in INT8 between quantized convolutions instead of forcing a re-quantization). One tensor gets
one Q/DQ pair shared by every consumer that wants it; one weight gets one quantized copy per
(tensor, axis), read by every consumer that needs that axis.

A weighted op runs in INT8 only when its data and its weight are both quantized, so ``plan``
quantizes both or neither: a Conv whose weight is not a float constant (computed from the graph
input, integer, excluded...) keeps a float data input too (a Q/DQ pair there would only add
error), and ``QuantPlan.kept_float`` says why, for every weighted op that stays float. A Gemm or
MatMul whose two inputs are both computed (attention's ``Q @ K^T``) is quantized on both.

A detector's box-decoding tail (the ops after its last convolutions: ``_detection_head``) stays
float by default (``float_detection_tail``): none of its nodes gets a Q/DQ pair, and
``kept_float`` lists each of them with the reason ``"detection head tail"``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .._errors import CalibrationError, InvalidCalibrationInput
from ._detection_head import DETECTION_TAIL, detection_tail

__all__ = ["Placement", "QuantPlan", "WeightTarget", "drop_dead", "elem_types", "load_model", "plan",
           "prepare"]

Placement = Literal["trt", "weighted"]

QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax",
    "ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeMatMul"})
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops TensorRT runs in INT8 between quantized convolutions when their inputs are quantized;
# value: which inputs carry data (None: all of them).
PASS_THROUGH_OPS: dict[str, tuple[int, ...] | None] = {
    "MaxPool": (0,), "AveragePool": (0,), "GlobalAveragePool": (0,), "GlobalMaxPool": (0,),
    "Concat": None, "Resize": (0,)}
MIN_OPSET = 13
_FLOAT = onnx.TensorProto.FLOAT


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX model; ``InvalidCalibrationInput`` naming the file when it cannot be read."""
    try:
        return onnx.load(os.fspath(path))
    except FileNotFoundError as exc:
        raise InvalidCalibrationInput(
            f"cannot quantize {os.fspath(path)!r}: no such file; give the path of an FP32 ONNX "
            "model") from exc
    except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError, ValueError) as exc:
        raise InvalidCalibrationInput(
            f"cannot read {os.fspath(path)!r} as an ONNX model: {exc}") from exc
    except Exception as exc:  # protobuf's DecodeError is not importable in a stable place
        if type(exc).__name__ == "DecodeError":
            raise InvalidCalibrationInput(
                f"{os.fspath(path)!r} is not an ONNX model (protobuf could not decode it)") from exc
        raise


def prepare(model: onnx.ModelProto, *, name: str = "model") -> onnx.ModelProto:
    """A normalised copy of ``model`` (see the module docstring); the original is not touched."""
    model = _copy(model)
    # Q/DQ over constants only is a storage form of weights (folded below); anything else means
    # the activations are already quantized.
    constant = _constant_tensors(model.graph)
    found = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS
                    and not all(o in constant for o in n.output if o)})
    if found:
        raise InvalidCalibrationInput(
            f"{name!r} is already quantized (it contains {', '.join(found)}); quantize the FP32 "
            "model it came from instead")
    opset = _default_opset(model)
    if opset < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeError/ValidationError types
            raise CalibrationError(
                f"could not raise {name!r} from opset {opset} to {MIN_OPSET} (needed for "
                f"per-channel Q/DQ): {exc}; convert it with a newer exporter") from exc
    model.ir_version = max(model.ir_version, 7)
    initializer_names = {t.name for t in model.graph.initializer}
    kept_inputs = [i for i in model.graph.input if i.name not in initializer_names]
    del model.graph.input[:]
    model.graph.input.extend(kept_inputs)
    _name_nodes(model.graph)
    _fold_weights(model)
    left = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if left:
        raise InvalidCalibrationInput(
            f"{name!r} stores constants through {', '.join(left)} that could not be evaluated "
            "to float; export the model with float weights")
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # InferenceError and friends
        raise CalibrationError(f"shape inference failed on {name!r}: {exc}") from exc
    return model


@dataclass(frozen=True)
class WeightTarget:
    """A constant input quantized symmetric INT8; ``axis`` None means one scale for the tensor."""

    tensor: str
    axis: int | None
    consumers: tuple[tuple[int, int], ...]     # (node index, input index)


@dataclass(frozen=True)
class QuantPlan:
    """Where Q/DQ pairs go in a prepared model.

    ``activations`` maps a tensor to the (node index, input index) pairs that read its quantized
    version; ``weights`` lists constant inputs to quantize; ``quantized_nodes`` the nodes whose
    inputs are quantized (a weighted op among them has its data and weight quantized);
    ``excluded_nodes`` the nodes that ``exclude`` kept in float; ``kept_float`` maps every
    Conv/ConvTranspose/Gemm/MatMul left in float to why, and every node of a detection head's
    tail to ``"detection head tail"`` (:attr:`detection_tail`).
    """

    activations: dict[str, tuple[tuple[int, int], ...]]
    weights: tuple[WeightTarget, ...]
    quantized_nodes: tuple[str, ...]
    excluded_nodes: tuple[str, ...]
    tensor_order: tuple[str, ...] = field(default=())   # activations in graph order
    kept_float: dict[str, str] = field(default_factory=dict)

    @property
    def detection_tail(self) -> tuple[str, ...]:
        """The nodes of a detection head's tail kept in float (empty when none was recognised
        or ``float_detection_tail`` was off)."""
        return tuple(n for n, why in self.kept_float.items() if why == DETECTION_TAIL)


def plan(model: onnx.ModelProto, *, exclude: Sequence[str] = (), placement: Placement = "trt",
         name: str = "model", float_detection_tail: bool = True) -> QuantPlan:
    """Decide Q/DQ placement on a model returned by :func:`prepare`.

    ``exclude`` holds regular expressions matched in full against node names and op types; a
    matching node keeps float inputs. ``float_detection_tail``: keep a recognised detection
    head's tail in float (module docstring); False quantizes it like any other part.
    """
    if placement not in ("trt", "weighted"):
        raise ValueError(f"placement must be 'trt' or 'weighted', got {placement!r}")
    patterns = []
    for pattern in exclude:
        try:
            patterns.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"exclude pattern {pattern!r} is not a regular expression: {exc}") from exc
    graph = model.graph
    constants = _constant_tensors(graph)
    initializers = {t.name: t for t in graph.initializer}
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    float_tensors = _float_tensors(model)
    elem_types = _elem_types(model)

    def excluded(node: onnx.NodeProto) -> str | None:
        for p in patterns:
            if p.fullmatch(node.name) or p.fullmatch(node.op_type):
                return p.pattern
        return None

    activations: dict[str, list[tuple[int, int]]] = {}
    weights: dict[tuple[str, int | None], list[tuple[int, int]]] = {}
    quantized: list[str] = []
    excluded_nodes: list[str] = []
    kept_float: dict[str, str] = {}
    weighted_seen = any(n.op_type in WEIGHTED_OPS for n in graph.node)
    tail = set(detection_tail(graph, constants=constants, floats=float_tensors)
               if float_detection_tail else ())

    def want_activation(tensor: str, node_index: int, input_index: int) -> bool:
        if not tensor or tensor in constants or tensor not in float_tensors:
            return False
        activations.setdefault(tensor, []).append((node_index, input_index))
        return True

    for index, node in enumerate(graph.node):
        if node.name in tail:
            kept_float[node.name] = DETECTION_TAIL
            continue
        candidate = node.op_type in WEIGHTED_OPS or (
            placement == "trt" and (node.op_type in PASS_THROUGH_OPS or node.op_type == "Add"))
        if not candidate:
            continue
        matched = excluded(node)
        if matched is not None:
            excluded_nodes.append(node.name)
            if node.op_type in WEIGHTED_OPS:
                kept_float[node.name] = f"excluded by the pattern {matched!r}"
            continue
        touched = False
        if node.op_type in WEIGHTED_OPS:
            roles = _weighted_roles(node, initializers, constants, float_tensors, elem_types,
                                    producer, graph)
            why = next((r for r in roles.values() if r not in ("weight", "activation")), None)
            if why is not None:
                kept_float[node.name] = why
                continue
            for input_index, role in roles.items():
                tensor = node.input[input_index]
                if role == "weight":
                    axis = _weight_axis(node, input_index, initializers[tensor])
                    weights.setdefault((tensor, axis), []).append((index, input_index))
                    touched = True
                else:
                    touched |= want_activation(tensor, index, input_index)
        elif node.op_type == "Add":
            skip = _residual_skip_input(graph.node, index, producer, constants, float_tensors)
            if skip is not None:
                touched |= want_activation(node.input[skip], index, skip)
        else:
            data_inputs = PASS_THROUGH_OPS[node.op_type]
            for input_index in (range(len(node.input)) if data_inputs is None else data_inputs):
                if input_index < len(node.input):
                    touched |= want_activation(node.input[input_index], index, input_index)
        if touched:
            quantized.append(node.name)

    if not weighted_seen or not any(graph.node[i].op_type in WEIGHTED_OPS
                                    for i in _node_indices(activations, weights)):
        ops = sorted({n.op_type for n in graph.node})
        weighted_kept = [(n, r) for n, r in kept_float.items() if r != DETECTION_TAIL]
        reasons = "; ".join(f"{n}: {r}" for n, r in weighted_kept[:5])
        more = f" and {len(weighted_kept) - 5} more" if len(weighted_kept) > 5 else ""
        why = (f"every one stays float ({reasons}{more})" if weighted_seen
               else f"it has none (its ops: {', '.join(ops)})")
        raise InvalidCalibrationInput(
            f"{name!r} has no Conv, ConvTranspose, Gemm or MatMul left to quantize: {why}; INT8 "
            "explicit quantization needs at least one")
    order = {t: i for i, t in enumerate(_graph_order(model))}
    tensor_order = tuple(sorted(activations, key=lambda t: order.get(t, -1)))
    return QuantPlan(
        activations={t: tuple(activations[t]) for t in tensor_order},
        weights=tuple(WeightTarget(t, axis, tuple(c)) for (t, axis), c in weights.items()),
        quantized_nodes=tuple(quantized), excluded_nodes=tuple(excluded_nodes),
        tensor_order=tensor_order, kept_float=kept_float)


def float_activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Every float tensor computed by a node (not a constant), in graph order."""
    floats = _float_tensors(model)
    constants = {t.name for t in model.graph.initializer}
    out: list[str] = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        out.extend(o for o in node.output if o and o in floats and o not in constants)
    return out


def model_input(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    """The model's single (non-initializer) input, or ``InvalidCalibrationInput`` why not."""
    inputs = list(model.graph.input)
    if len(inputs) != 1:
        raise InvalidCalibrationInput(
            f"{name!r} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); calibration "
            "feeds exactly one input tensor")
    chosen: onnx.ValueInfoProto = inputs[0]
    return chosen


# -- helpers ---------------------------------------------------------------------------------
def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise InvalidCalibrationInput("the model imports no default-domain (ai.onnx) opset")


def _name_nodes(graph: onnx.GraphProto) -> None:
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            base = node.name or f"{node.op_type}_{index}"
            candidate, k = base, 0
            while candidate in seen:
                k += 1
                candidate = f"{base}_{k}"
            node.name = candidate
        seen.add(node.name)


def _weighted_data_inputs(node: onnx.NodeProto) -> tuple[int, ...]:
    """Inputs of a weighted op that get Q/DQ: data and weight, never the bias."""
    if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return tuple(i for i in (0, 1) if i < len(node.input) and node.input[i])
    return ()


def _weighted_roles(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto],
                    constants: set[str], floats: set[str], elem_types: dict[str, int],
                    producer: dict[str, int], graph: onnx.GraphProto) -> dict[int, str]:
    """What each of the data/weight inputs of a weighted op is: ``"weight"`` (a float32
    initializer, quantized per channel), ``"activation"`` (a computed float32 tensor, quantized
    per tensor), or the reason the op must stay float."""
    roles: dict[int, str] = {}
    for input_index in _weighted_data_inputs(node):
        tensor = node.input[input_index]
        kind = "weight" if (input_index == 1 and node.op_type in ("Conv", "ConvTranspose")) \
            else "input"
        if tensor in initializers:
            dtype = initializers[tensor].data_type
            roles[input_index] = ("weight" if dtype == _FLOAT else
                                  f"its {kind} {tensor!r} is {_type_name(dtype)}, not float32")
        elif tensor in constants:
            ops = sorted({graph.node[i].op_type for i in _producers_of(tensor, producer, graph)})
            roles[input_index] = (f"its {kind} {tensor!r} is computed from constants by "
                                  f"{', '.join(ops)}, which could not be evaluated here")
        elif kind == "weight":
            roles[input_index] = (f"its weight {tensor!r} is computed from the graph input; "
                                  "TensorRT quantizes only constant convolution weights")
        elif tensor not in floats:
            dtype = elem_types.get(tensor, onnx.TensorProto.UNDEFINED)
            roles[input_index] = (
                f"its input {tensor!r} is {_type_name(dtype)}, not float32" if dtype
                else f"the type of its input {tensor!r} is unknown (shape inference found none)")
        else:
            roles[input_index] = "activation"
    return roles


def _producers_of(tensor: str, producer: dict[str, int], graph: onnx.GraphProto) -> set[int]:
    """Indices of the nodes ``tensor`` is computed by, transitively."""
    out: set[int] = set()
    stack = [tensor]
    while stack:
        name = stack.pop()
        index = producer.get(name)
        if index is None or index in out:
            continue
        out.add(index)
        stack.extend(t for t in graph.node[index].input if t)
    return out


def _type_name(elem_type: int) -> str:
    return "of an unknown type" if not elem_type else \
        onnx.TensorProto.DataType.Name(elem_type).lower()


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    out = {v.name: v.type.tensor_type.elem_type
           for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    out.update((t.name, t.data_type) for t in graph.initializer)
    return out


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _weight_axis(node: onnx.NodeProto, input_index: int, weight: onnx.TensorProto) -> int | None:
    """The output-channel axis of a constant input, or None where one scale must do."""
    rank = len(weight.dims)
    if node.op_type == "Conv" and input_index == 1:
        return 0
    if node.op_type == "ConvTranspose" and input_index == 1:
        # Weight (C_in, C_out/group, k...): axis 1 holds every output channel only when group=1.
        return 1 if _attr(node, "group", 1) == 1 else None
    if node.op_type == "Gemm" and input_index == 1 and rank == 2:
        return 0 if _attr(node, "transB", 0) else 1
    if node.op_type == "MatMul" and input_index == 1 and rank >= 2:
        return rank - 1
    return None


def _residual_skip_input(nodes: Sequence[onnx.NodeProto], index: int, producer: dict[str, int],
                         constants: set[str], floats: set[str]) -> int | None:
    """For a residual Add (two computed inputs), the input to quantize: the one not produced
    by a convolution, or, if both are, the one whose producer comes first (the shorter branch)."""
    node = nodes[index]
    if len(node.input) != 2:
        return None
    ins = list(node.input)
    if any(t in constants or t not in floats or t not in producer for t in ins):
        return None
    from_weighted = [nodes[producer[t]].op_type in WEIGHTED_OPS for t in ins]
    if not any(from_weighted):
        return None
    if from_weighted[0] != from_weighted[1]:
        return 0 if not from_weighted[0] else 1
    return 0 if producer[ins[0]] < producer[ins[1]] else 1


def _node_indices(activations: dict[str, list[tuple[int, int]]],
                  weights: dict[tuple[str, int | None], list[tuple[int, int]]]) -> set[int]:
    out = {n for uses in activations.values() for n, _ in uses}
    out.update(n for uses in weights.values() for n, _ in uses)
    return out


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    out = {v.name for v in list(graph.value_info) + list(graph.input) + list(graph.output)
           if v.type.tensor_type.elem_type == _FLOAT}
    out.update(t.name for t in graph.initializer if t.data_type == _FLOAT)
    return out


def _graph_order(model: onnx.ModelProto) -> list[str]:
    order = [i.name for i in model.graph.input]
    for node in model.graph.node:
        order.extend(node.output)
    return order


_RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                         "Multinomial", "Bernoulli"})


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors whose value does not depend on the graph inputs: initializers, and the outputs of
    nodes (``Constant`` included) whose every input is such a tensor, random ops and ops with
    subgraphs (which may read any outer tensor) excepted."""
    inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    constant = {t.name for t in graph.initializer}
    subgraph = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    changed = True
    while changed:            # node order need not be topological in every exported model
        changed = False
        for node in graph.node:
            if node.op_type in _RANDOM_OPS or any(o in constant for o in node.output if o) \
                    or any(a.type in subgraph for a in node.attribute):
                continue
            if all(not t or (t in constant and t not in inputs) for t in node.input):
                constant.update(o for o in node.output if o)
                changed = True
    return constant


def _foldable_inputs(node: onnx.NodeProto) -> tuple[int, ...]:
    """Inputs of a weighted op made initializers when constant: weights and the bias."""
    count = {"Conv": 3, "ConvTranspose": 3, "Gemm": 3, "MatMul": 2}.get(node.op_type, 0)
    return tuple(i for i in range(min(count, len(node.input))) if node.input[i])


def _fold_weights(model: onnx.ModelProto) -> None:
    """Replace every constant weight or bias of a weighted op that is not an initializer (a
    ``Constant`` node, a chain of ops over constants, a ``DequantizeLinear`` of stored integers)
    by the float32 initializer it computes; also fold every other Q/DQ node over constants."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    constant = _constant_tensors(graph)
    producer = {o: n for n in graph.node for o in n.output}
    targets: list[str] = []
    for node in graph.node:
        if node.op_type in WEIGHTED_OPS:
            targets.extend(node.input[i] for i in _foldable_inputs(node))
        elif node.op_type in QUANTIZED_OPS:
            targets.extend(o for o in node.output if o)
    folded = False
    for tensor in dict.fromkeys(targets):
        if tensor in initializers or tensor not in constant or tensor not in producer:
            continue
        source = producer[tensor]
        if len(source.output) != 1:
            continue
        value = _evaluate_constant(model, tensor, producer, initializers)
        if value is None or (value.dtype != np.float32 and source.op_type not in QUANTIZED_OPS):
            continue
        graph.node.remove(source)
        graph.initializer.append(numpy_helper.from_array(value, tensor))
        initializers.add(tensor)
        del producer[tensor]
        folded = True
    if folded:
        drop_dead(model.graph)


def _evaluate_constant(model: onnx.ModelProto, tensor: str,
                       producer: dict[str, onnx.NodeProto], initializers: set[str]
                       ) -> np.ndarray | None:
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    needed: list[onnx.NodeProto] = []
    used_initializers: set[str] = set()
    stack, seen = [tensor], set()
    while stack:
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in initializers:
            used_initializers.add(name)
            continue
        node = producer[name]
        if node not in needed:
            needed.append(node)
        stack.extend(node.input)
    order = {id(n): i for i, n in enumerate(graph.node)}
    needed.sort(key=lambda n: order[id(n)])
    sub = helper.make_graph(
        needed, "fold", [], [helper.make_tensor_value_info(tensor, onnx.TensorProto.UNDEFINED, None)],
        [t for t in graph.initializer if t.name in used_initializers])
    # At the model's opset, else the evaluator's newest (it implements DequantizeLinear only
    # from opset 19, which computes what opset 13's does on int8/uint8).
    result = None
    for opsets in (list(model.opset_import), None):
        try:
            result = ReferenceEvaluator(helper.make_model(sub, opset_imports=opsets)).run(None, {})
            break
        except Exception:  # noqa: BLE001  (an op the evaluator lacks: leave it computed)
            continue
    if result is None:
        return None
    first = result[0] if isinstance(result, list) else next(iter(result.values()))
    return np.asarray(first)


def drop_dead(graph: onnx.GraphProto, *, ops: Collection[str] | None = None) -> None:
    """Remove nodes whose outputs nobody reads (only nodes of ``ops``, if given), until none is
    left, then initializers nobody reads."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {t for n in graph.node for t in n.input} | outputs
        dead = [n for n in graph.node if (ops is None or n.op_type in ops)
                and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {t for n in graph.node for t in n.input} | outputs
    keep = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Every tensor's ONNX element type (``TensorProto`` enum), after shape inference: inputs,
    outputs, intermediate values and initializers."""
    g = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def unique_name(base: str, taken: set[str]) -> str:
    """``base`` or ``base_1``, ``base_2``... whichever is free; records the choice in ``taken``."""
    candidate, k = base, 0
    while candidate in taken:
        k += 1
        candidate = f"{base}_{k}"
    taken.add(candidate)
    return candidate


def all_names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names: set[str] = {t.name for t in graph.initializer}
    names.update(i.name for i in graph.input)
    names.update(o for n in graph.node for o in n.output)
    names.update(n.name for n in graph.node)
    return names


def iter_float_initializers(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    return (t for t in model.graph.initializer if t.data_type == _FLOAT)
