"""Status checking for cuda-python calls: every call's result goes through one of these.

cuda-python returns ``(status, *results)`` from every binding instead of raising. ``runtime``,
``driver`` and ``nvrtc`` each have their own status enum; the helpers here turn a failed status
into :class:`~xinfer_stream.CudaError` reading ``NAME: explanation (in call)`` and otherwise return
the results (one value unwrapped, several as a tuple, ``None`` for none).

This module and its siblings in ``xinfer_stream.cuda`` are the only importers of cuda-python.
"""

from __future__ import annotations

from typing import Any

from cuda.bindings import driver, nvrtc
from cuda.bindings import runtime as cudart

from .._errors import CudaError

__all__ = ["check_driver", "check_nvrtc", "check_runtime", "library_error"]

_RUNTIME_OK = cudart.cudaError_t.cudaSuccess
_DRIVER_OK = driver.CUresult.CUDA_SUCCESS
_NVRTC_OK = nvrtc.nvrtcResult.NVRTC_SUCCESS


def _unwrap(result: tuple[Any, ...]) -> Any:
    if len(result) == 1:
        return None
    if len(result) == 2:
        return result[1]
    return result[1:]


def check_runtime(result: tuple[Any, ...], call: str) -> Any:
    """The results of a ``cuda.bindings.runtime`` call, or ``CudaError`` naming ``call``."""
    status = result[0]
    if status == _RUNTIME_OK:
        return _unwrap(result)
    raise runtime_error(status, call)


def runtime_error(status: Any, call: str) -> CudaError:
    """The ``CudaError`` for a failed runtime status (also used for expected non-success codes)."""
    name_result = cudart.cudaGetErrorName(status)
    text_result = cudart.cudaGetErrorString(status)
    name = name_result[1].decode() if name_result[0] == _RUNTIME_OK else f"cudaError {int(status)}"
    text = text_result[1].decode() if text_result[0] == _RUNTIME_OK else "unknown CUDA runtime error"
    return CudaError(name, text, call)


def check_driver(result: tuple[Any, ...], call: str) -> Any:
    """The results of a ``cuda.bindings.driver`` call, or ``CudaError`` naming ``call``."""
    status = result[0]
    if status == _DRIVER_OK:
        return _unwrap(result)
    name_result = driver.cuGetErrorName(status)
    text_result = driver.cuGetErrorString(status)
    name = name_result[1].decode() if name_result[0] == _DRIVER_OK else f"CUresult {int(status)}"
    text = text_result[1].decode() if text_result[0] == _DRIVER_OK else "unknown CUDA driver error"
    raise CudaError(name, text, call)


def check_nvrtc(result: tuple[Any, ...], call: str, log: str = "") -> Any:
    """The results of a ``cuda.bindings.nvrtc`` call, or ``CudaError`` naming ``call``.

    ``log`` (the compiler's log, when there is one) is appended to the explanation.
    """
    status = result[0]
    if status == _NVRTC_OK:
        return _unwrap(result)
    text_result = nvrtc.nvrtcGetErrorString(status)
    name = text_result[1].decode() if text_result[0] == _NVRTC_OK else f"nvrtcResult {int(status)}"
    explanation = "NVRTC could not compile the program"
    if log.strip():
        explanation += f"; compiler log:\n{log.strip()}"
    raise CudaError(name, explanation, call)


def library_error(exc: RuntimeError, library: str, call: str) -> CudaError:
    """A ``CudaError`` for a CUDA library that cuda-python could not load (no driver, no NVRTC).

    cuda-python raises ``RuntimeError`` subclasses (``cuda.pathfinder.DynamicLibNotFoundError``)
    the first time a binding needs a shared library that is not installed.
    """
    return CudaError(
        "libraryNotFound",
        f"cuda-python could not load {library} ({exc}); install the NVIDIA driver"
        + (" or the nvidia-cuda-nvrtc wheel" if library == "NVRTC" else "")
        + " on a machine with an NVIDIA GPU",
        call)
