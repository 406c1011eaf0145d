"""Bias correction: remove the mean shift that weight quantization adds to each output channel.

Quantizing a weight ``W`` to ``Wq`` changes a layer's output by ``(Wq - W) x``; over the
calibration frames its expectation is ``(Wq - W) E[x]``, a constant per output channel that
does not average out and that downstream layers amplify. Where the error of a channel sums to
something sizeable (small depthwise kernels whose taps nearly cancel, fed by a saturated ReLU6
as in EfficientNet-Lite's first block) that shift costs more accuracy than all the rounding
noise. Subtracting it from the float bias (Nagel et al. 2019, "Data-Free Quantization", the
empirical variant with ``E[x]`` measured on the calibration frames) restores the mean at no
runtime cost: the bias stays float, as TensorRT wants.

That corrects only what each layer's own weight rounding adds, measured against FP32 inputs.
Most of the mean shift at the output of a deep INT8 network comes from elsewhere: rounding noise
of activations passing through nonlinearities (ReLU6 clips the noise on one side only) becomes a
mean shift, and it accumulates layer after layer. On EfficientNet-Lite0 two thirds of the logits'
error energy was such a constant shift. :func:`empirical_bias_offsets` measures it directly, layer
by layer on the Q/DQ model itself (the "empirical bias correction" of Nagel et al. 2019, also
Finkelstein et al. 2019, "Fighting quantization bias with bias"): in topological order, the mean
of each quantized Conv/Gemm output over the calibration frames is compared with the FP32 model's,
the difference is added to the float bias, and later layers are measured with it in place
(``_layerwise``: one forward pass, not one per layer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from ._graph import QuantPlan, all_names, unique_name
from ._layerwise import run_layerwise
from ._qdq import WeightQuantization

__all__ = ["apply_bias_correction", "apply_bias_offsets", "correctable_nodes",
           "empirical_bias_offsets", "mean_axis_of"]


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
            _set_bias(graph, node, old - shift, taken, "corrected")
            corrected.append(node.name)
    return corrected


def correctable_nodes(model: onnx.ModelProto, qplan: QuantPlan) -> list[str]:
    """The quantized Conv and Gemm nodes whose bias is absent or a per-output-channel constant:
    those whose output mean a float bias can set, in graph order."""
    initializers = {t.name: t for t in model.graph.initializer}
    weighted = {model.graph.node[n].name for target in qplan.weights
                for n, input_index in target.consumers if input_index == 1}
    out: list[str] = []
    for node in model.graph.node:
        if node.name not in weighted or node.op_type not in ("Conv", "Gemm"):
            continue
        if _bias_shape_ok(node, initializers):
            out.append(node.name)
    return out


def empirical_bias_offsets(fp32: onnx.ModelProto, qdq: onnx.ModelProto, nodes: Sequence[str],
                           batches: Sequence[npt.NDArray[Any]], *, threads: int | None = None,
                           name: str = "model",
                           progress: Callable[[str, int, int], None] | None = None
                           ) -> dict[str, npt.NDArray[np.float64]]:
    """Per-output-channel offsets that make each of ``nodes`` (in ``qdq``, same names as in
    ``fp32``) produce the FP32 model's mean output on ``batches``, measured in graph order with
    the offsets of earlier nodes applied. Add them to the biases with :func:`apply_bias_offsets`.
    ``progress("bias correction", done, total)`` counts layers over both passes.
    """
    reference: dict[str, npt.NDArray[np.float64]] = {}
    total = 2 * len(nodes)

    def record(node: onnx.NodeProto, values: list[npt.NDArray[Any]]) -> None:
        reference[node.name] = _channel_mean(values)
        if progress is not None:
            progress("bias correction", len(reference), total)

    run_layerwise(fp32, nodes, batches, record, threads=threads, name=name)
    offsets: dict[str, npt.NDArray[np.float64]] = {}

    def correct(node: onnx.NodeProto, values: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
        offset = reference[node.name] - _channel_mean(values)
        offsets[node.name] = offset
        if progress is not None:
            progress("bias correction", len(reference) + len(offsets), total)
        shape = [1] * values[0].ndim
        shape[1] = -1
        return offset.astype(values[0].dtype).reshape(shape)

    run_layerwise(qdq, nodes, batches, correct, threads=threads, name=name)
    return offsets


def apply_bias_offsets(model: onnx.ModelProto,
                       offsets: Mapping[str, npt.NDArray[np.float64]]) -> list[str]:
    """Add ``offsets[node]`` to the float bias of each named Conv/Gemm node of ``model`` (in
    place; a bias is added where there was none). Returns the names of the nodes changed."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    taken = all_names(model)
    changed: list[str] = []
    for node in graph.node:
        offset = offsets.get(node.name)
        if offset is None or not _bias_shape_ok(node, initializers):
            continue
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        old = (numpy_helper.to_array(initializers[bias_name]).astype(np.float64)
               if bias_name is not None else np.zeros(offset.shape))
        if old.shape != offset.shape:
            continue
        _set_bias(graph, node, old + offset, taken, "empirical")
        changed.append(node.name)
    read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return changed


def _channel_mean(values: list[npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
    """Mean over every axis but 1 (channels of NCHW, features of a Gemm output), all batches."""
    total: npt.NDArray[np.float64] | None = None
    count = 0
    for v in values:
        axes = tuple(i for i in range(v.ndim) if i != 1)
        part = v.sum(axis=axes, dtype=np.float64)
        total = part if total is None else total + part
        count += v.size // v.shape[1]
    assert total is not None
    return np.asarray(total / max(count, 1))


def _bias_shape_ok(node: onnx.NodeProto, initializers: Mapping[str, onnx.TensorProto]) -> bool:
    """A Conv/Gemm whose bias is absent or a 1-D constant (one value per output channel)."""
    if node.op_type not in ("Conv", "Gemm"):
        return False
    if len(node.input) <= 2 or not node.input[2]:
        return True
    bias = initializers.get(node.input[2])
    return bias is not None and len(bias.dims) == 1


def _set_bias(graph: onnx.GraphProto, node: onnx.NodeProto, value: npt.NDArray[np.float64],
              taken: set[str], suffix: str) -> None:
    """Give ``node`` a new float bias initializer (never edits one another node may share)."""
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    new_name = unique_name(f"{bias_name or node.name + '_bias'}_{suffix}", taken)
    graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), new_name))
    if bias_name is None:
        while len(node.input) < 2:
            node.input.append("")
        if len(node.input) == 2:
            node.input.append(new_name)
        else:
            node.input[2] = new_name
    else:
        node.input[2] = new_name


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
