"""Run-time compiled CUDA kernels: NVRTC, a two-level cache, and launches.

``Device.load_module(source, name=..., options=...)`` compiles CUDA C++ with NVRTC to a CUBIN for
that device's architecture (or, when this NVRTC is older than the GPU, to PTX for the newest
architecture it knows, which the driver then compiles). The result is cached:

* on disk, under ``cache_dir/<sha256>.cubin``, keyed by the source, the options, the target and
  the NVRTC version, written atomically; a cache that cannot be written (read-only home) is
  skipped, and one that cannot be loaded is recompiled and overwritten;
* in memory, per device (``Device`` keeps its loaded modules).

A :class:`Module` is owned by its device. :class:`Kernel` launches take a :class:`KernelArgs`,
built once and updated in place between launches, so a launch costs one cuda-python call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cuda.bindings import driver, nvrtc

from .._errors import ClosedResourceError, CudaError
from .._files import atomic_write_bytes
from .._lifecycle import NoPublicConstructor, leak_net
from ._status import check_driver, check_nvrtc, library_error

if TYPE_CHECKING:
    from ._device import Device
    from ._stream import Stream

__all__ = ["Kernel", "KernelArgs", "Module", "compile_cached", "default_cache_dir",
           "nvrtc_version"]

_CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/xinfer-stream/kernels`` (``~/.cache/...`` when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xinfer-stream" / "kernels"


def nvrtc_version() -> tuple[int, int]:
    """The NVRTC library's (major, minor); ``CudaError`` when NVRTC cannot be loaded."""
    try:
        major, minor = check_nvrtc(nvrtc.nvrtcVersion(), "nvrtcVersion")
    except RuntimeError as exc:
        if isinstance(exc, CudaError):
            raise
        raise library_error(exc, "NVRTC", "nvrtcVersion") from exc
    return int(major), int(minor)


def _target(capability: tuple[int, int]) -> tuple[str, bool]:
    """The ``--gpu-architecture`` value and whether it yields a CUBIN (else PTX)."""
    wanted = capability[0] * 10 + capability[1]
    supported = [int(a) for a in check_nvrtc(nvrtc.nvrtcGetSupportedArchs(),
                                             "nvrtcGetSupportedArchs")]
    if wanted in supported:
        return f"sm_{wanted}", True
    older = [a for a in supported if a <= wanted]
    if not older:
        raise CudaError("NVRTC_ERROR_INVALID_OPTION",
                        f"this NVRTC {nvrtc_version()} supports architectures {supported}, none of "
                        f"which runs on a compute capability {capability} GPU; install an NVRTC "
                        "that matches the GPU", "nvrtcGetSupportedArchs")
    return f"compute_{max(older)}", False


def _compile(source: str, name: str, options: Sequence[str], arch: str, cubin: bool) -> bytes:
    prog = check_nvrtc(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []),
                       "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), *(o.encode() for o in options)]
        status = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            size = check_nvrtc(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            log = b" " * int(size)
            check_nvrtc(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            check_nvrtc((status,), f"nvrtcCompileProgram({name}, {' '.join(options)})",
                        log=log.decode(errors="replace").rstrip("\0 "))
        if cubin:
            size = check_nvrtc(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            image = b" " * int(size)
            check_nvrtc(nvrtc.nvrtcGetCUBIN(prog, image), "nvrtcGetCUBIN")
        else:
            size = check_nvrtc(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
            image = b" " * int(size)
            check_nvrtc(nvrtc.nvrtcGetPTX(prog, image), "nvrtcGetPTX")
        return image
    finally:
        check_nvrtc(nvrtc.nvrtcDestroyProgram(prog), "nvrtcDestroyProgram")


def compile_cached(source: str, *, name: str, options: tuple[str, ...],
                   capability: tuple[int, int], cache_dir: Path, refresh: bool = False) -> bytes:
    """The compiled image (CUBIN, or PTX on a GPU newer than NVRTC) of ``source``, from the disk
    cache when present and ``refresh`` is false (the caller refreshes an entry that fails to
    load)."""
    try:
        version = nvrtc_version()
        arch, cubin = _target(capability)
    except RuntimeError as exc:
        if isinstance(exc, CudaError):
            raise
        raise library_error(exc, "NVRTC", "nvrtcGetSupportedArchs") from exc
    key = hashlib.sha256("\0".join(
        [str(_CACHE_FORMAT), f"nvrtc {version}", arch, *options, source]).encode()).hexdigest()
    path = cache_dir / f"{key}.{'cubin' if cubin else 'ptx'}"
    if not refresh:
        try:
            cached = path.read_bytes()
            if cached:
                return cached
        except OSError:
            pass  # not cached yet (or unreadable): compile
    image = _compile(source, name, options, arch, cubin)
    try:
        atomic_write_bytes(path, image)
    except OSError:
        pass  # a read-only or full cache directory only costs a recompile next time
    return image


def _unload(module: Any) -> None:
    check_driver(driver.cuModuleUnload(module), "cuModuleUnload")


class Module(metaclass=NoPublicConstructor):
    """A compiled program loaded on one device. Made by :meth:`Device.load_module`."""

    def __init__(self, device: Device, image: bytes, name: str) -> None:
        self._device = device
        self._name = name
        self._raw = check_driver(driver.cuModuleLoadData(image), f"cuModuleLoadData({name})")
        self._kernels: dict[str, Kernel] = {}
        self._finalizer = leak_net(self, f"CUDA module {name!r}", _unload, self._raw)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def device(self) -> Device:
        return self._device

    def kernel(self, name: str) -> Kernel:
        """The ``extern "C" __global__`` function ``name`` of this module."""
        if self.closed:
            raise ClosedResourceError(f"the CUDA module {self._name!r} is closed")
        found = self._kernels.get(name)
        if found is None:
            function = check_driver(driver.cuModuleGetFunction(self._raw, name.encode()),
                                    f"cuModuleGetFunction({name!r})")
            found = self._kernels[name] = Kernel._create(self, name, function)
        return found

    def close(self) -> None:
        """Unload the module. Safe to call twice."""
        if self._finalizer.detach() is not None:
            _unload(self._raw)


class KernelArgs:
    """The argument block of a kernel: ctypes values whose addresses ``cuLaunchKernel`` reads.

    Build it once with the kernel's parameters in order (``ctypes.c_int(0)``, a
    ``ctypes.Structure``, ...), change the values in place between launches; each launch copies
    them, so a later change never affects work already enqueued. One ``KernelArgs`` must not be
    shared between threads that launch concurrently.
    """

    def __init__(self, *values: ctypes._SimpleCData[Any] | ctypes.Structure) -> None:
        self.values = values
        self._pointers = (ctypes.c_void_p * max(1, len(values)))(
            *(ctypes.addressof(v) for v in values))

    @property
    def address(self) -> int:
        return ctypes.addressof(self._pointers)


class Kernel(metaclass=NoPublicConstructor):
    """One ``__global__`` function of a :class:`Module`."""

    def __init__(self, module: Module, name: str, function: Any) -> None:
        self._module = module
        self._name = name
        self._function = function

    @property
    def name(self) -> str:
        return self._name

    def attribute(self, attribute: str) -> int:
        """A ``CU_FUNC_ATTRIBUTE_*`` value, e.g. ``"NUM_REGS"`` or ``"MAX_THREADS_PER_BLOCK"``."""
        attr = getattr(driver.CUfunction_attribute, f"CU_FUNC_ATTRIBUTE_{attribute}")
        return int(check_driver(driver.cuFuncGetAttribute(attr, self._function),
                                f"cuFuncGetAttribute({attribute})"))

    def launch(self, grid: tuple[int, int, int], block: tuple[int, int, int], args: KernelArgs,
               *, stream: Stream | int, shared_bytes: int = 0) -> None:
        """Enqueue one launch on ``stream`` (a :class:`Stream`, or a raw ``cudaStream_t`` as int
        from another library); returns before the kernel runs."""
        if self._module.closed:
            raise ClosedResourceError(f"the module of kernel {self._name!r} is closed")
        check_driver(driver.cuLaunchKernel(self._function, grid[0], grid[1], grid[2],
                                           block[0], block[1], block[2], shared_bytes,
                                           stream if isinstance(stream, int) else stream.raw,
                                           args.address, 0),
                     f"cuLaunchKernel({self._name})")
