"""An ONNX model's external data must stay inside the model's folder.

An ONNX file may keep tensors in other files: each such tensor names its file in an
``external_data`` entry ``location``, relative to the model's folder. A model from someone else
can name ``../../home/me/.ssh/id_rsa`` or ``/etc/shadow`` there, and whatever follows the entry
reads that file into the model's weights (and an engine built from it carries it along). So
before ONNX's checker, ONNX Runtime or TensorRT's parser opens anything, every location is
checked: not absolute, and inside the folder once resolved (``..`` and symbolic links included).
ONNX 1.16+ and ONNX Runtime check this themselves; this check does not depend on their versions,
and its message says what to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .._errors import InvalidModelError

__all__ = ["check_external_data", "external_data_locations"]


def external_data_locations(model: Any) -> Iterator[tuple[str, str]]:
    """``(tensor name, location)`` of every tensor of ``model`` (an ``onnx.ModelProto`` read
    with ``load_external_data=False``) stored outside the file, subgraphs included."""
    for tensor in _tensors(model.graph):
        if tensor.data_location == 1:  # TensorProto.EXTERNAL
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            yield tensor.name, location


def _tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _escapes(folder: Path, location: str) -> str | None:
    """Why ``location`` is not a file inside ``folder`` (None: it is)."""
    if not location:
        return "it names no file"
    if (PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute()
            or PureWindowsPath(location).drive):
        return "it is an absolute path"
    # Either separator: a model written on Windows may use backslashes.
    target = Path(os.path.realpath(folder / location.replace("\\", "/")))
    if target != folder and folder in target.parents:
        return None
    return f"it resolves to {str(target)!r}, outside the model's folder"


def check_external_data(model: str | os.PathLike[str]) -> None:
    """``InvalidModelError`` when a tensor of the ONNX file ``model`` keeps its data outside the
    model's folder. A file that does not parse is left to the ONNX checker to describe."""
    import onnx

    path = Path(model)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 (not ONNX: check_onnx's checker reports why, with the cause)
        return
    folder = Path(os.path.realpath(path.parent))
    for name, location in external_data_locations(proto):
        problem = _escapes(folder, location)
        if problem is not None:
            raise InvalidModelError(
                f"{str(path)!r} keeps the data of tensor {name!r} at {location!r}, and {problem}; "
                f"a model may only read external data from files inside its own folder "
                f"({str(folder)!r}). If you trust the model, put the data file next to it and "
                "re-save the model with that relative location")
