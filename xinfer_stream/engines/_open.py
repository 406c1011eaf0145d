"""Opening a model and resolving its Preprocess: the one home of both, as small steps.

Each step is a small function that does one thing; :func:`open_backend` and
:func:`resolve_preprocess` compose them, and the runtime (``xs.load``), the builder and the
command line all call these, never a copy of them::

    backend_kind(model, "auto")      "onnxruntime" | "tensorrt" | "torch", by file suffix or type
    check_model_file(path)           the file exists and is a file (InvalidModelError otherwise)
    check_onnx(path)                 external data stays in the model's folder; ONNX's checker
    open_backend(model, ...)         the steps above, then the backend's own loader
    find_preprocess(model)           the sidecar (model.int8.preprocess.json), else the engine's
                                     metadata, else an Ultralytics detector's own metadata,
                                     else None
    resolve_preprocess(model, pre)   the explicit one, else find_preprocess, else
                                     PreprocessNotFoundError (an EngineLoadError)
    check_preprocess_fits(pre, ...)  InvalidModelError when it would not make the input tensor

Nothing here prints or reads arguments: the CLI translates :class:`PreprocessNotFoundError` into
the flags to pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from .._errors import EngineLoadError, InvalidModelError, PreprocessNotFoundError
from ..preprocess import Preprocess, preprocess_path_for
from ._base import Backend, ImageInput
from ._external_data import check_external_data
from ._metadata import metadata_path_for, read_metadata
from ._onnxruntime import OnnxRuntimeBackend

__all__ = ["ENGINE_SUFFIXES", "ONNX_SUFFIXES", "TORCH_SUFFIXES", "BackendKind", "backend_kind",
           "check_model_file", "check_onnx", "check_preprocess_fits", "find_preprocess",
           "is_torch_module", "open_backend", "open_torch", "resolve_preprocess",
           "ultralytics_preprocess"]

BackendKind = Literal["onnxruntime", "tensorrt", "torch"]
BACKENDS: tuple[BackendKind, ...] = ("onnxruntime", "tensorrt", "torch")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
TORCH_SUFFIXES = (".pt", ".pth", ".ts", ".pt2")


# -- what kind of model -------------------------------------------------------------------------
def is_torch_module(obj: object) -> bool:
    """An ``nn.Module`` / ``ScriptModule`` / ``ExportedProgram``, recognised without importing
    torch (the check must not load torch for users who never use it)."""
    return any(cls.__module__.startswith("torch") and cls.__name__ in
               ("Module", "ScriptModule", "RecursiveScriptModule", "ExportedProgram")
               for cls in type(obj).__mro__)


def backend_kind(model: object, backend: str = "auto") -> BackendKind | None:
    """The backend that runs ``model``: ``backend`` itself unless it is ``"auto"``; else by type
    (a torch module) or file suffix (``.onnx``; ``.engine``/``.plan``/``.trt``; ``.pt``,
    ``.pth``, ``.ts``, ``.pt2``). None for an unknown backend name or a model of no known kind
    (:func:`open_backend` says so)."""
    if backend != "auto":
        return backend if backend in BACKENDS else None
    if is_torch_module(model):
        return "torch"
    if not isinstance(model, (str, os.PathLike)):
        return None
    suffix = Path(model).suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnxruntime"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    return "torch" if suffix in TORCH_SUFFIXES else None


# -- checks before a loader reads the file ------------------------------------------------------
def check_model_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a ``Path``; ``InvalidModelError`` when it is missing or not a file."""
    p = Path(path)
    if not p.exists():
        raise InvalidModelError(f"model file not found: {str(p)!r}; check the path")
    if not p.is_file():
        raise InvalidModelError(f"{str(p)!r} is not a file; pass a model file (.onnx, .engine, "
                                ".pt)")
    return p


def check_onnx(model: str | os.PathLike[str]) -> None:
    """Refuse external data outside the model's folder (see ``_external_data``), then run ONNX's
    checker, so a broken model fails with its reason rather than deep inside a runtime."""
    import onnx

    check_external_data(model)
    try:
        onnx.checker.check_model(os.fspath(model))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(
            f"{os.fspath(model)!r} is not a valid ONNX model ({first}); re-export it or check the "
            "file is complete") from exc
    except Exception as exc:  # protobuf DecodeError and friends for files that are not ONNX
        raise InvalidModelError(
            f"{os.fspath(model)!r} could not be read as an ONNX model ({type(exc).__name__}: "
            f"{exc}); is it an ONNX file?") from exc


# -- opening ------------------------------------------------------------------------------------
def open_torch(model: Any, preprocess: Preprocess, *, device: int = 0) -> Backend:
    """A :class:`~xinfer_stream.engines.TorchBackend` for ``model`` (a module or a TorchScript /
    ``torch.export`` file); its input shape and dtype come from ``preprocess``."""
    from ._torch import TorchBackend

    if preprocess.dtype not in ("float32", "float16"):
        raise InvalidModelError(f"the torch backend feeds float32 or float16 input; the "
                                f"Preprocess says dtype={preprocess.dtype!r}")
    return TorchBackend(model, input_shape=(None, *preprocess.input_shape()[1:]),
                        dtype="float16" if preprocess.dtype == "float16" else "float32",
                        device=device)


def open_backend(model: str | os.PathLike[str], backend: str = "auto", *,
                 preprocess: Preprocess | None = None, threads: int | None = None,
                 plugins: Sequence[str | os.PathLike[str]] = ()) -> Backend:
    """Open the backend that runs the model file ``model``; the caller owns it (``close()``).

    ``backend``: ``"auto"`` (by suffix, :func:`backend_kind`), ``"onnxruntime"``,
    ``"tensorrt"`` or ``"torch"``. ``threads``: ONNX Runtime's intra-op threads. ``plugins``
    (TensorRT engines only): plugin libraries to load, none unless named. ``preprocess`` (torch
    files only): gives the input shape; default :func:`resolve_preprocess`.
    Raises ``InvalidModelError`` for a missing or broken file, ``EngineLoadError`` for one that
    cannot run here.
    """
    path = check_model_file(model)
    kind = backend_kind(path, backend)
    if plugins and kind != "tensorrt":
        raise ValueError(f"plugins= applies to TensorRT engines; {str(path)!r} is run by "
                         f"{kind or 'no backend'!r}")
    if kind is None:
        raise EngineLoadError(
            f"cannot load {str(path)!r}: unknown model type {path.suffix.lower()!r} "
            f"(backend={backend!r}); pass an .onnx model, a TensorRT .engine or a PyTorch "
            ".pt/.pt2 file")
    if kind == "onnxruntime":
        check_onnx(path)
        return OnnxRuntimeBackend(path, threads=threads)
    if kind == "tensorrt":
        from ._load import load_engine

        return load_engine(path, plugins=plugins)
    return open_torch(path, resolve_preprocess(path, preprocess))


# -- its Preprocess -----------------------------------------------------------------------------
def find_preprocess(model: str | os.PathLike[str]) -> Preprocess | None:
    """The Preprocess recorded for ``model``: its sidecar (``model.int8.onnx`` ->
    ``model.int8.preprocess.json``), else, for an engine, its metadata, else, for an ONNX
    detector exported by Ultralytics, the input its metadata describes (:func:`
    ultralytics_preprocess`); None when none holds one. ``InvalidModelError`` when a file that
    should hold one is unreadable."""
    sidecar = preprocess_path_for(model)
    if sidecar.exists():
        return Preprocess.load(sidecar)
    if metadata_path_for(model).exists():
        return read_metadata(model).preprocess
    if Path(model).suffix.lower() in ONNX_SUFFIXES and Path(model).is_file():
        return ultralytics_preprocess(model)
    return None


def ultralytics_preprocess(model: str | os.PathLike[str]) -> Preprocess | None:
    """For an ONNX detector exported by Ultralytics (metadata ``author``/``docs`` naming
    Ultralytics, ``task`` ``detect``, ``imgsz`` ``[H, W]``): its documented input,
    ``Preprocess.for_detector("yolov8", imgsz)`` in the input's dtype (float16 for ``half=True``
    exports). None for any other model."""
    import onnx

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ours to judge here: the backend's loader reports it
        return None
    meta = {p.key: p.value for p in proto.metadata_props}
    by_ultralytics = any("ultralytics" in meta.get(k, "").lower() for k in ("author", "docs"))
    if not by_ultralytics or meta.get("task") != "detect":
        return None
    try:
        size = [int(v) for v in meta["imgsz"].strip("[]() ").split(",")]
    except (KeyError, ValueError):
        return None
    if len(size) != 2 or min(size) <= 0 or not proto.graph.input:
        return None
    half = proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    return Preprocess.for_detector("yolov8", (size[0], size[1]),
                                   dtype="float16" if half else "float32")


def resolve_preprocess(model: str | os.PathLike[str], explicit: Preprocess | None = None
                       ) -> Preprocess:
    """``explicit`` when given, else :func:`find_preprocess`, else
    :class:`~xinfer_stream.PreprocessNotFoundError` saying what to do."""
    if explicit is not None:
        return explicit
    found = find_preprocess(model)
    if found is None:
        raise PreprocessNotFoundError(Path(model), preprocess_path_for(model))
    return found


def check_preprocess_fits(pre: Preprocess, image: ImageInput, model_name: str) -> None:
    """``InvalidModelError`` when ``pre`` would not produce the model's input tensor."""
    problems = []
    if pre.layout != image.layout:
        problems.append(f"layout {pre.layout!r} but the model input is {image.layout!r}")
    h, w = pre.size
    if (image.height is not None and image.height != h) or (
            image.width is not None and image.width != w):
        problems.append(f"size {pre.size} but the model input is "
                        f"{image.height or '?'}x{image.width or '?'}")
    if pre.dtype != image.spec.dtype:
        problems.append(f"dtype {pre.dtype!r} but the model input is {image.spec.dtype!r}")
    if problems:
        raise InvalidModelError(
            f"the Preprocess does not fit {model_name!r} (input {image.spec.describe()}): "
            + "; ".join(problems) + ". Fix the Preprocess (or its .preprocess.json).")
