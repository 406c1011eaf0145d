"""A detector's box-decoding tail, recognised over the graph alone; ``plan`` keeps it in float.

A detection head ends in ops that turn the last convolutions' maps into scores and boxes: a
Sigmoid (or a Softmax over classes or over the bins of a box distribution), Exp for box sizes,
Mul/Add with constant grids and strides, and Concat/Reshape/Transpose/Split/Slice gathering the
levels. None of them is a convolution, so INT8 there buys no speed, while a Q/DQ pair on a Concat
of box coordinates in pixels, or of scores near the threshold, costs accuracy exactly where the
detections are decided.

The rule: walk back from every graph output through every op that is not a Conv, ConvTranspose,
Gemm or MatMul, following the computed float inputs (not constants, not integer shape
arithmetic), and stop at the weighted ops. The ops walked form the *tail*. The model has a
detection head when its tail is fed by at least two weighted ops (class scores and boxes, or one
map per level) and holds a decoding activation (Sigmoid, Softmax or Exp). A classifier's tail (a
Softmax or a Flatten after its one last Gemm) is fed by a single weighted op and is left alone,
as is a model whose outputs come straight from convolutions. In a Q/DQ model the walk sees
through QuantizeLinear/DequantizeLinear pairs (``inspect`` asks whether a written tail is float).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

__all__ = ["DECODING_OPS", "DETECTION_TAIL", "describe_detection_tail", "detection_tail"]

# The reason ``QuantPlan.kept_float`` gives for a node of the tail.
DETECTION_TAIL = "detection head tail"
DECODING_OPS = frozenset({"Sigmoid", "Softmax", "Exp"})
_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})


def detection_tail(graph: onnx.GraphProto, *, constants: set[str], floats: set[str]
                   ) -> tuple[str, ...]:
    """Names of the tail's nodes in graph order when ``graph`` has a detection head (module
    docstring), else ``()``. ``constants``: tensors that do not depend on the graph input;
    ``floats``: float32 tensors (a prepared model's, types inferred)."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    tail: set[int] = set()
    boundary: set[int] = set()
    stack = [o.name for o in graph.output]
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        index = producer.get(tensor)
        if index is None:
            continue            # a graph input
        node = graph.node[index]
        if node.op_type in _WEIGHTED:
            boundary.add(index)
            continue
        if node.op_type in _QDQ:
            stack.append(node.input[0])     # a Q/DQ model's pair: seen through, not tail
            continue
        tail.add(index)
        stack.extend(t for t in node.input if t and t not in constants and t in floats)
    ops = {graph.node[i].op_type for i in tail}
    if len(boundary) < 2 or not ops & DECODING_OPS:
        return ()
    return tuple(graph.node[i].name for i in sorted(tail))


def describe_detection_tail(nodes: Sequence[str]) -> str:
    """One line for reports: the detection head's tail kept in float, its first nodes named."""
    shown = ", ".join(nodes[:6]) + (f" and {len(nodes) - 6} more" if len(nodes) > 6 else "")
    return (f"detection head recognised: its box-decoding tail stays float ({len(nodes)} "
            f"node{'s' if len(nodes) != 1 else ''}: {shown})")
