"""Q/DQ insertion: symmetric INT8, zero points 0, the form TensorRT's ONNX parser accepts.

Activations get ``x -> QuantizeLinear(scale) -> DequantizeLinear(scale) -> consumers`` with one
scalar scale. Weights are stored already quantized, ``int8 initializer -> DequantizeLinear(scale,
axis)``, a form TensorRT's parser folds into the weights of the layer (TensorRT 8.x-11.x) and that
makes the model four times smaller than float weights with a Q/DQ pair. INT8 uses [-127, 127]:
``scale = amax / 127`` (TensorRT's symmetric range, so -128 never appears).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from .._errors import CalibrationError
from ._graph import QuantPlan, WeightTarget, all_names, unique_name

__all__ = ["FP16_MIN_SCALE", "QMAX", "WeightQuantization", "half_scale", "insert_qdq",
           "quantize_weight", "scale_from_amax"]

QMAX = 127
# A dead tensor (all zeros) may get any positive scale: 0 quantizes to 0 exactly. 1/127 keeps the
# scale a normal float of ordinary size, which matters once TensorRT multiplies scales together.
_DEAD_AMAX = 1.0
# The smallest amax we honour: below it (~1e-30) scale products in fused kernels underflow.
_MIN_AMAX = float(np.finfo(np.float32).tiny) * 2.0**40


def scale_from_amax(amax: float, tensor: str) -> float:
    """``amax / 127`` as a positive, finite float32; dead tensors get ``1/127``."""
    if not math.isfinite(amax) or amax < 0:
        raise CalibrationError(
            f"the range of {tensor!r} is {amax!r}; a scale must be finite and positive. The FP32 "
            "model produced non-finite values on the calibration frames: check the frames and "
            "the Preprocess")
    if amax == 0.0:
        amax = _DEAD_AMAX
    return float(np.float32(max(amax, _MIN_AMAX) / QMAX))


@dataclass(frozen=True)
class WeightQuantization:
    """A weight quantized symmetric INT8: values, per-channel (or one) scales, axis."""

    tensor: str
    axis: int | None
    values: npt.NDArray[np.int8]
    scales: npt.NDArray[np.float32]     # shape (C,) with an axis, () without

    def dequantized(self) -> npt.NDArray[np.float32]:
        if self.axis is None:
            return (self.values.astype(np.float32) * self.scales).astype(np.float32)
        shape = [1] * self.values.ndim
        shape[self.axis] = -1
        return (self.values.astype(np.float32) * self.scales.reshape(shape)).astype(np.float32)


def half_scale(scale: float) -> float:
    """``scale`` as the FP16 value a Q/DQ node with FP16 scales will use: rounded to FP16 and
    never below FP16's smallest normal number (2^-14; a subnormal or zero scale would lose its
    precision, or its meaning)."""
    return float(np.float16(max(scale, FP16_MIN_SCALE)))


FP16_MIN_SCALE = 2.0**-14


def quantize_weight(tensor: str, weight: npt.NDArray[np.float32], axis: int | None, *,
                    float16_scales: bool = False) -> WeightQuantization:
    """Symmetric max-calibrated INT8 of a weight, per channel along ``axis`` (or per tensor).

    ``float16_scales``: the scales are made exact FP16 values (:func:`half_scale`) before the
    weight is rounded with them, for a model whose Q/DQ scales will be FP16."""
    if not np.isfinite(weight).all():
        raise CalibrationError(
            f"the weight {tensor!r} holds NaN or infinity; the FP32 model itself is broken")
    w = weight.astype(np.float32)
    fix = half_scale if float16_scales else float
    if axis is None:
        amax = np.asarray(float(np.abs(w).max()) if w.size else 0.0, dtype=np.float64)
        scales = np.asarray(fix(scale_from_amax(float(amax), tensor)), dtype=np.float32)
        q = np.clip(np.rint(w / scales), -QMAX, QMAX).astype(np.int8)
        return WeightQuantization(tensor, None, q, scales)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    amax_c = np.abs(moved).max(axis=1) if moved.shape[1] else np.zeros(w.shape[axis])
    scales = np.array([fix(scale_from_amax(float(a), tensor)) for a in amax_c], dtype=np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scales.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return WeightQuantization(tensor, axis, q, scales)


def insert_qdq(model: onnx.ModelProto, qplan: QuantPlan, activation_scales: Mapping[str, float],
               weights: Mapping[tuple[str, int | None], WeightQuantization]) -> onnx.ModelProto:
    """A copy of the prepared ``model`` with Q/DQ pairs where ``qplan`` says.

    ``activation_scales`` holds a scale for every tensor of ``qplan.activations``; ``weights``
    the quantized value of every ``qplan.weights`` entry, keyed by (tensor, axis).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    taken = all_names(out)
    new_initializers: list[onnx.TensorProto] = []
    rewire: dict[tuple[int, int], str] = {}
    after: dict[str, list[onnx.NodeProto]] = {}      # producer output -> Q/DQ nodes to follow it
    head: list[onnx.NodeProto] = []                 # Q/DQ of graph inputs go first
    producers = {o for n in graph.node for o in n.output}

    for tensor, consumers in qplan.activations.items():
        scale = activation_scales[tensor]
        if not (math.isfinite(scale) and scale > 0):
            raise CalibrationError(f"internal: scale {scale!r} for {tensor!r} is not positive")
        base = tensor.replace("/", "_").strip("_") or "tensor"
        scale_name = unique_name(f"{base}_scale", taken)
        zero_name = unique_name(f"{base}_zero_point", taken)
        q_out = unique_name(f"{base}_quantized", taken)
        dq_out = unique_name(f"{base}_dequantized", taken)
        new_initializers.append(numpy_helper.from_array(np.asarray(scale, np.float32), scale_name))
        new_initializers.append(numpy_helper.from_array(np.asarray(0, np.int8), zero_name))
        nodes = [
            helper.make_node("QuantizeLinear", [tensor, scale_name, zero_name], [q_out],
                             name=unique_name(f"{base}_QuantizeLinear", taken)),
            helper.make_node("DequantizeLinear", [q_out, scale_name, zero_name], [dq_out],
                             name=unique_name(f"{base}_DequantizeLinear", taken)),
        ]
        (after.setdefault(tensor, []) if tensor in producers else head).extend(nodes)
        for use in consumers:
            rewire[use] = dq_out

    for target in qplan.weights:
        wq = weights[(target.tensor, target.axis)]
        head.extend(_weight_dq(target, wq, taken, new_initializers, rewire))

    for (node_index, input_index), name in rewire.items():
        graph.node[node_index].input[input_index] = name
    ordered: list[onnx.NodeProto] = list(head)
    for node in graph.node:
        ordered.append(node)
        for output in node.output:
            ordered.extend(after.get(output, ()))
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(new_initializers)
    read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return out


def _weight_dq(target: WeightTarget, wq: WeightQuantization, taken: set[str],
               initializers: list[onnx.TensorProto], rewire: dict[tuple[int, int], str]
               ) -> list[onnx.NodeProto]:
    base = target.tensor.replace("/", "_").strip("_") or "weight"
    q_name = unique_name(f"{base}_quantized", taken)
    scale_name = unique_name(f"{base}_scale", taken)
    zero_name = unique_name(f"{base}_zero_point", taken)
    dq_out = unique_name(f"{base}_dequantized", taken)
    initializers.append(numpy_helper.from_array(wq.values, q_name))
    initializers.append(numpy_helper.from_array(wq.scales, scale_name))
    initializers.append(numpy_helper.from_array(np.zeros(wq.scales.shape, np.int8), zero_name))
    for use in target.consumers:
        rewire[use] = dq_out
    node = helper.make_node("DequantizeLinear", [q_name, scale_name, zero_name], [dq_out],
                            name=unique_name(f"{base}_DequantizeLinear", taken))
    if wq.axis is not None:
        node.attribute.append(helper.make_attribute("axis", wq.axis))
    return [node]
