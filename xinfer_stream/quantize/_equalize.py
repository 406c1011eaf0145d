"""Depthwise input equalization: one activation scale for channels of very different ranges.

TensorRT quantizes an activation with one scale for all of its channels. Where the channels'
ranges differ by orders of magnitude (YOLOX-Nano's stem output, after its SiLU, spans 0.14 to
61.8 across 16 channels), the quiet channels round to a few levels or to 0, and a depthwise
convolution, which treats each channel on its own and often carries large weights for exactly
those channels, amplifies the error: all INT8, that model's objectness collapses (mAP@0.5 0
against FP32; BENCHMARKS.md, "INT8 for detectors").

A depthwise convolution (one weight plane a channel: ``group`` = its weight's output channels,
one input channel each) commutes with a per-channel scale: ``conv(x * f, w / f) = conv(x, w)``,
channel by channel, bias unchanged. So each one whose input feeds nothing else gets an explicit
float ``Mul`` by ``f`` before it (TensorRT fuses it into the pointwise ops that make the input)
and its weights divided by ``f``, with ``f_c = max(1, R / (HEADROOM * r_c))``: a channel whose
largest magnitude on the calibration frames, ``r_c``, is below ``R / HEADROOM`` (``R`` the
largest of them) is brought up to it, so every channel spans at least ``127 / HEADROOM`` levels
of the one scale, and keeps ``HEADROOM`` times its calibration range before it clips (``f`` at
most :data:`MAX_FACTOR`; a channel that is 0 on every frame keeps 1). Bringing every channel all
the way up to ``R`` left no headroom: on a leave-one-clip-out run of EfficientNet-Lite0 a
channel quiet on the calibration clips and loud on the held-out one clipped, and top-1 agreement
fell from 84% to 65% (BENCHMARKS.md, "Depthwise input equalization"). Weights are quantized per
output channel, which absorbs ``1 / f`` exactly. The model computes what it did before, to float
rounding; only what INT8 can represent changes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from ._calibrator import Calibrator
from ._statistics import Progress, StatisticsCollector

__all__ = ["HEADROOM", "MAX_FACTOR", "depthwise_inputs", "equalization_factors", "equalize"]

HEADROOM = 4.0        # a quiet channel is brought up to R / HEADROOM, not to R (module docstring)
MAX_FACTOR = 1024.0   # a channel is brought up at most this much (10 bits of the 32 float has)
_SUFFIX = "/equalized"


def depthwise_inputs(model: onnx.ModelProto) -> dict[str, str]:
    """``{conv node name: its input tensor}`` for each depthwise convolution that can be
    equalized: weight an initializer of shape ``[C, 1, kh, kw]`` with ``group = C > 1`` that no
    other node reads, input a computed tensor (not a graph input or output) that no other node
    reads."""
    initializers = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    produced = {o for node in model.graph.node for o in node.output}
    outputs = {o.name for o in model.graph.output}
    found = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        shape = tuple(initializers[node.input[1]].dims)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        source = node.input[0]
        if (len(shape) == 4 and shape[1] == 1 and group == shape[0] > 1 and source in produced
                and source not in outputs and readers.get(source) == 1
                and readers.get(node.input[1]) == 1):
            found[node.name] = source
    return found


def equalization_factors(model: onnx.ModelProto, calibrator: Calibrator, *, name: str,
                         threads: int | None = None, progress: Progress | None = None
                         ) -> dict[str, npt.NDArray[np.float32]]:
    """``{conv node name: f}`` for :func:`depthwise_inputs` with a channel to scale, from each
    input channel's largest magnitude over ``calibrator``'s frames (one FP32 pass; ``progress``
    stage ``equalization``)."""
    targets = depthwise_inputs(model)
    if not targets:
        return {}
    largest: dict[str, npt.NDArray[np.float64]] = {}
    with StatisticsCollector(model, sorted(set(targets.values())), name=name,
                             threads=threads) as collector:
        for values in collector.run(calibrator, progress=progress, stage="equalization"):
            for tensor, value in values.items():
                if value.ndim < 2:
                    continue
                per_channel = np.abs(np.moveaxis(value, 1, 0).reshape(value.shape[1], -1)).max(axis=1)
                previous = largest.get(tensor)
                largest[tensor] = per_channel if previous is None else np.maximum(previous, per_channel)
    factors = {}
    for conv, tensor in targets.items():
        r = largest.get(tensor)
        if r is None or not np.isfinite(r).all() or r.max() <= 0:
            continue
        f = np.where(r > 0, np.clip(r.max() / (HEADROOM * np.maximum(r, 1e-30)), 1.0, MAX_FACTOR),
                     1.0)
        if (f > 1.0).any():   # no channel is quiet enough: nothing to scale, no Mul to add
            factors[conv] = f.astype(np.float32)
    return factors


def equalize(model: onnx.ModelProto, factors: Mapping[str, npt.NDArray[np.float32]]
             ) -> tuple[str, ...]:
    """Apply ``factors`` (:func:`equalization_factors`) to ``model`` in place: a ``Mul`` before
    each named depthwise convolution, its weights divided. Returns the equalized tensors'
    names (``<input>/equalized``), in graph order. ``ValueError`` for a factor that does not
    fit its convolution."""
    if not factors:
        return ()
    initializers = {t.name: t for t in model.graph.initializer}
    known = {v.name: v for v in model.graph.value_info}
    nodes = list(model.graph.node)
    done = []
    for index in reversed(range(len(nodes))):
        node = nodes[index]
        f = factors.get(node.name)
        if f is None:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if f.shape != (weight.shape[0],) or weight.shape[1] != 1:
            raise ValueError(f"equalization factors of shape {f.shape} do not fit {node.name!r} "
                             f"(weight {weight.shape})")
        source = node.input[0]
        scaled, factor_name = source + _SUFFIX, node.name + "/equalize_factor"
        model.graph.initializer.append(
            numpy_helper.from_array(f.reshape(1, -1, 1, 1).astype(weight.dtype), factor_name))
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(
            (weight / f.reshape(-1, 1, 1, 1)).astype(weight.dtype), node.input[1]))
        model.graph.node.insert(index, helper.make_node(
            "Mul", [source, factor_name], [scaled], name=node.name + "/equalize"))
        node.input[0] = scaled
        if source in known:   # the product has the type and shape of the tensor it scales
            info = onnx.ValueInfoProto()
            info.CopyFrom(known[source])
            info.name = scaled
            model.graph.value_info.append(info)
        done.append(scaled)
    return tuple(reversed(done))
