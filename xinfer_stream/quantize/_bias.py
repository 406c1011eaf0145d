"""Bias correction: remove the mean shift that weight quantization adds to each output channel.

Quantizing a weight ``W`` to ``Wq`` changes a layer's output by ``(Wq - W) x``; over the
calibration frames its expectation is ``(Wq - W) E[x]``, a constant per output channel that
does not average out and that downstream layers amplify. Where the error of a channel sums to
something sizeable (small depthwise kernels whose taps nearly cancel, fed by a saturated ReLU6
as in EfficientNet-Lite's first block) that shift costs more accuracy than all the rounding
noise. Subtracting it from the float bias (Nagel et al. 2019, "Data-Free Quantization", the
empirical variant with ``E[x]`` measured on the calibration frames) restores the mean at no
runtime cost: the bias stays float, as TensorRT wants.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from ._graph import QuantPlan, all_names, unique_name
from ._qdq import WeightQuantization

__all__ = ["apply_bias_correction", "mean_axis_of"]


def mean_axis_of(model: onnx.ModelProto, qplan: QuantPlan) -> dict[str, int]:
    """For the data input of each quantized weighted node: the axis whose per-index mean the
    correction needs (channels for Conv, features for Gemm/MatMul)."""
    out: dict[str, int] = {}
    for target in qplan.weights:
        for node_index, input_index in target.consumers:
            node = model.graph.node[node_index]
            if input_index != 1 or not node.input[0]:
                continue
            if node.op_type in ("Conv", "ConvTranspose"):
                out[node.input[0]] = 1
            elif node.op_type == "Gemm":
                trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
                out[node.input[0]] = 0 if trans_a else 1
            elif node.op_type == "MatMul":
                out[node.input[0]] = -1
    return out


def apply_bias_correction(model: onnx.ModelProto, qplan: QuantPlan,
                          weights: Mapping[tuple[str, int | None], WeightQuantization],
                          input_means: Mapping[str, npt.NDArray[np.float64]]) -> list[str]:
    """Correct, in place, the float bias of every Conv/Gemm/MatMul whose weight was quantized.

    Returns the names of the corrected nodes. Conv and Gemm get a new bias initializer (one is
    added where the node had none); MatMul has no bias input and is left alone.
    """
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    taken = all_names(model)
    corrected: list[str] = []
    for target in qplan.weights:
        wq = weights[(target.tensor, target.axis)]
        w = numpy_helper.to_array(initializers[target.tensor]).astype(np.float64)
        delta_w = wq.dequantized().astype(np.float64) - w
        for node_index, input_index in target.consumers:
            node = graph.node[node_index]
            if input_index != 1 or node.op_type not in ("Conv", "Gemm"):
                continue
            mean = input_means.get(node.input[0])
            if mean is None:
                continue
            shift = _output_shift(node, delta_w, mean)
            if shift is None:
                continue
            bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if bias_name is not None and bias_name not in initializers:
                continue                    # a computed bias: leave it
            old = (numpy_helper.to_array(initializers[bias_name]).astype(np.float64)
                   if bias_name is not None else np.zeros(shift.shape))
            if old.shape != shift.shape:
                continue                    # a broadcast Gemm bias: leave it
            new_name = unique_name(f"{bias_name or node.name + '_bias'}_corrected", taken)
            graph.initializer.append(numpy_helper.from_array((old - shift).astype(np.float32),
                                                             new_name))
            if bias_name is None:
                node.input.append(new_name)
            else:
                node.input[2] = new_name
            corrected.append(node.name)
    return corrected


def _output_shift(node: onnx.NodeProto, delta_w: npt.NDArray[np.float64],
                  mean: npt.NDArray[np.float64]) -> npt.NDArray[np.float64] | None:
    """``(Wq - W) E[x]`` per output channel, or None when shapes do not line up."""
    if node.op_type == "Conv":
        c_out, c_in_group = delta_w.shape[0], delta_w.shape[1]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if mean.shape != (c_in_group * group,) or c_out % group:
            return None
        per_in = delta_w.reshape(c_out, c_in_group, -1).sum(axis=2)     # (C_out, C_in/group)
        groups = np.arange(c_out) // (c_out // group)
        means = mean.reshape(group, c_in_group)[groups]                  # (C_out, C_in/group)
        return np.asarray((per_in * means).sum(axis=1))
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    dw = delta_w.T if trans_b else delta_w                               # (K, N)
    if dw.ndim != 2 or mean.shape != (dw.shape[0],):
        return None
    return np.asarray(mean @ dw)
