"""Running a model layer by layer over a fixed set of batches, with a hook after chosen layers.

:func:`run_layerwise` executes an ONNX model (float or Q/DQ) in topological segments, each ending
at one of the chosen nodes. Between segments it holds, for every batch, only the tensors that later
nodes still read (the frontier), so each node runs exactly once per batch, as in one ordinary
forward pass. After a chosen node has run, ``visit(node, values)`` sees its output for every batch
and may return an offset (broadcast against each batch's output) that is added to the output
before any later node reads it. That is what a sequential correction needs: the correction of
layer ``k`` is measured with layers ``0..k-1`` already corrected, in one pass instead of one pass
per layer.

Nodes whose inputs are all constant (``Constant``, shape arithmetic on initializers, the
dequantization of a weight) are not data: each segment runs the ones it needs itself.

Memory: the frontier holds every given batch at once (the caller bounds the number of frames);
ONNX Runtime runs one batch of one segment at a time. Q/DQ pairs are executed as written
(``session.disable_quant_qdq``), the arithmetic TensorRT implements, as in ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper

from .._errors import CalibrationError
from ._graph import elem_types
from ._statistics import default_threads

__all__ = ["Visit", "run_layerwise"]

Visit = Callable[[onnx.NodeProto, list[npt.NDArray[Any]]], npt.NDArray[Any] | None]


def run_layerwise(model: onnx.ModelProto, stops: Sequence[str],
                  batches: Sequence[npt.NDArray[Any]], visit: Visit, *,
                  threads: int | None = None, name: str = "model") -> None:
    """Run ``model`` on ``batches`` (inputs of its single graph input) segment by segment.

    ``stops`` names nodes, each of which ends a segment; after it has run on every batch,
    ``visit(node, outputs)`` gets its first output for each batch and returns an offset to add to
    them (or None). Nodes after the last stop are not run. Raises ``CalibrationError`` when ONNX
    Runtime cannot build or run a segment.
    """
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    input_names = [i.name for i in graph.input if i.name not in initializers]
    if len(input_names) != 1:
        raise CalibrationError(f"internal: {name!r} has {len(input_names)} graph inputs; the "
                               "layer-by-layer run feeds exactly one")
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    constant = _constant_nodes(nodes, set(initializers), producer)
    data_nodes = [i for i in range(len(nodes)) if i not in constant]
    wanted = set(stops)
    missing = wanted.difference(n.name for n in nodes)
    if missing:
        raise CalibrationError(f"internal: {name!r} has no node named {sorted(missing)!r}")
    last_read: dict[str, int] = {}
    for position, index in enumerate(data_nodes):
        for tensor in nodes[index].input:
            if tensor:
                last_read[tensor] = position
    graph_outputs = {o.name for o in graph.output}
    types = elem_types(model)

    frontier: dict[str, list[npt.NDArray[Any]]] = {input_names[0]: list(batches)}
    start = 0
    for position, index in enumerate(data_nodes):
        if nodes[index].name not in wanted:
            continue
        segment = data_nodes[start:position + 1]
        stop = nodes[index]
        produced = {o for i in segment for o in nodes[i].output if o}
        outputs = [o for o in sorted(produced, key=lambda t: producer[t])
                   if o in graph_outputs or last_read.get(o, -1) > position or o == stop.output[0]]
        values = _run_segment(model, nodes, segment, constant, producer, initializers, frontier,
                              outputs, types, threads, name)
        frontier.update(values)
        offset = visit(stop, frontier[stop.output[0]])
        if offset is not None:
            frontier[stop.output[0]] = [(v + offset).astype(v.dtype) for v in frontier[stop.output[0]]]
        for tensor in [t for t in frontier if last_read.get(t, -1) <= position]:
            del frontier[tensor]
        start = position + 1


def _constant_nodes(nodes: Sequence[onnx.NodeProto], initializers: set[str],
                    producer: dict[str, int]) -> set[int]:
    """Indices of nodes computed from constants only (graph order is topological)."""
    constant: set[int] = set()
    constant_tensors = set(initializers)
    for index, node in enumerate(nodes):
        if all(not t or t in constant_tensors for t in node.input) and node.op_type not in _RANDOM:
            constant.add(index)
            constant_tensors.update(o for o in node.output if o)
    return constant


_RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli"})


def _run_segment(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], segment: list[int],
                 constant: set[int], producer: dict[str, int],
                 initializers: dict[str, onnx.TensorProto],
                 frontier: dict[str, list[npt.NDArray[Any]]], outputs: list[str],
                 types: dict[str, int], threads: int | None, name: str
                 ) -> dict[str, list[npt.NDArray[Any]]]:
    import onnxruntime as ort

    members = set(segment)
    stack = [t for i in segment for t in nodes[i].input if t]
    while stack:                                   # pull in the constant nodes the segment reads
        tensor = stack.pop()
        source = producer.get(tensor)
        if source is not None and source in constant and source not in members:
            members.add(source)
            stack.extend(t for t in nodes[source].input if t)
    ordered = [nodes[i] for i in sorted(members)]
    produced = {o for n in ordered for o in n.output if o}
    feeds = sorted({t for n in ordered for t in n.input
                    if t and t not in produced and t not in initializers})
    absent = [t for t in feeds if t not in frontier]
    if absent:
        raise CalibrationError(f"internal: the layer-by-layer run of {name!r} lost {absent!r}")
    used = {t for n in ordered for t in n.input}
    sub = helper.make_graph(
        ordered, "segment",
        [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(frontier[t][0].dtype), None)
         for t in feeds],
        [helper.make_tensor_value_info(t, types.get(t, onnx.TensorProto.FLOAT), None)
         for t in outputs],
        [initializers[t] for t in sorted(used) if t in initializers])
    sub_model = helper.make_model(sub, opset_imports=list(model.opset_import))
    sub_model.ir_version = model.ir_version
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    try:
        session: Any = ort.InferenceSession(sub_model.SerializeToString(), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        results: dict[str, list[npt.NDArray[Any]]] = {t: [] for t in outputs}
        for b in range(len(frontier[feeds[0]]) if feeds else 0):
            values = session.run(outputs, {t: frontier[t][b] for t in feeds})
            for t, v in zip(outputs, values, strict=True):
                results[t].append(np.asarray(v))
    except Exception as exc:  # ONNX Runtime raises its own exception types
        raise CalibrationError(
            f"ONNX Runtime failed running {name!r} layer by layer (segment ending at "
            f"{ordered[-1].name!r}): {exc}") from exc
    return results
