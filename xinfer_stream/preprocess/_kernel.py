"""The GPU side of :class:`Preprocess`: one fused CUDA kernel from raw frame to model input.

``PreprocessKernel(device, spec)`` compiles ``_kernel.cu`` once per device (NVRTC, cached in memory
and on disk; see ``xinfer_stream.cuda``) and launches it: a batch of raw uint8 frames (yuv420p,
nv12, rgb24 or bgr24, packed as :class:`FrameLayout` describes) in a device buffer becomes the
normalised float32 / float16 / uint8 NCHW or NHWC batch the engine reads, in one kernel, written
straight into the engine's input buffer. Its output equals :func:`preprocess_raw` (the numpy
oracle) to the last bit on the same input.

Ownership: the kernel object owns no CUDA resource (the compiled module belongs to the device);
it holds one argument block, so one ``PreprocessKernel`` must not be launched from two threads at
once (the runtime keeps one per slot). ``enqueue`` only enqueues, on the ``stream`` given.
"""

from __future__ import annotations

import ctypes
from importlib import resources

from ..cuda import Device, DeviceBuffer, KernelArgs, Stream
from ._color import YuvColor
from ._frames import FrameLayout
from ._spec import Preprocess

__all__ = ["PreprocessKernel", "kernel_source"]

_BLOCK = (32, 8, 1)
_OPTIONS = ("--fmad=false", "--std=c++17")
_DTYPE_CODES = {"float32": 0, "float16": 1, "uint8": 2}
_ITEMSIZE = {"float32": 4, "float16": 2, "uint8": 1}


def kernel_source() -> str:
    """The CUDA C++ source of the fused kernel (shipped as package data)."""
    return resources.files(__package__).joinpath("_kernel.cu").read_text(encoding="utf-8")


class _Params(ctypes.Structure):
    """Mirror of ``struct Params`` in ``_kernel.cu`` (same order; natural C alignment)."""

    _fields_ = [
        ("src", ctypes.c_void_p),
        ("src_frame_stride", ctypes.c_uint64),
        ("plane1_offset", ctypes.c_uint64),
        ("plane2_offset", ctypes.c_uint64),
        ("dst", ctypes.c_void_p),
        ("dst_frame_stride", ctypes.c_uint64),
        ("scale_y", ctypes.c_double),
        ("scale_x", ctypes.c_double),
        ("src_h", ctypes.c_int), ("src_w", ctypes.c_int),
        ("out_h", ctypes.c_int), ("out_w", ctypes.c_int),
        ("resized_h", ctypes.c_int), ("resized_w", ctypes.c_int),
        ("offset_y", ctypes.c_int), ("offset_x", ctypes.c_int),
        ("chroma_pitch", ctypes.c_int),
        ("dst_dtype", ctypes.c_int),
        ("nhwc", ctypes.c_int),
        ("bgr_out", ctypes.c_int),
        ("batch", ctypes.c_int),
        ("mean", ctypes.c_float * 3),
        ("std_", ctypes.c_float * 3),
        ("pad", ctypes.c_float * 3),
        ("y_offset", ctypes.c_float), ("y_scale", ctypes.c_float),
        ("r_v", ctypes.c_float), ("g_u", ctypes.c_float), ("g_v", ctypes.c_float),
        ("b_u", ctypes.c_float),
    ]


class PreprocessKernel:
    """The fused preprocessing kernel for ``spec`` on ``device``.

    Supports every ``Preprocess`` (stretch / letterbox, centred or top-left, with any pad value /
    shorter_crop; rgb / bgr; nchw / nhwc; float32 / float16 / uint8) for yuv420p, nv12, rgb24 and bgr24 input.
    """

    def __init__(self, device: Device, spec: Preprocess) -> None:
        self._device = device
        self._spec = spec
        module = device.load_module(kernel_source(), name="xinfer_stream_preprocess.cu",
                                    options=_OPTIONS)
        self._kernels = {fmt: module.kernel(f"preprocess_{fmt}")
                         for fmt in ("yuv420p", "nv12", "rgb24", "bgr24")}
        self._params = _Params()
        self._args = KernelArgs(self._params)
        self._configured: tuple[FrameLayout, YuvColor | None, int] | None = None
        out_h, out_w = spec.size
        self._frame_elements = 3 * out_h * out_w
        p = self._params
        p.out_h, p.out_w = out_h, out_w
        p.dst_dtype = _DTYPE_CODES[spec.dtype]
        p.nhwc = int(spec.layout == "nhwc")
        p.bgr_out = int(spec.color == "bgr")
        p.dst_frame_stride = self._frame_elements
        for c in range(3):
            p.mean[c] = spec.mean[c]
            p.std_[c] = spec.std[c]
            p.pad[c] = spec.pad[c]

    @property
    def spec(self) -> Preprocess:
        return self._spec

    def output_nbytes(self, batch: int = 1) -> int:
        """Bytes of the model input for ``batch`` frames."""
        return batch * self._frame_elements * _ITEMSIZE[self._spec.dtype]

    def enqueue(self, source: DeviceBuffer, layout: FrameLayout, destination: DeviceBuffer, *,
                stream: Stream, color: YuvColor | None = None, batch: int = 1,
                source_offset: int = 0, frame_stride: int | None = None,
                destination_index: int = 0) -> None:
        """Enqueue the kernel on ``stream``: ``batch`` frames of ``layout`` read from ``source``
        (frame ``i`` at ``source_offset + i * frame_stride``; default stride ``layout.nbytes``)
        become batch entries ``destination_index ..`` of the model input in ``destination``.

        ``color`` (the frames' :class:`YuvColor`) is required for yuv420p and nv12. Both buffers
        are bounds-checked before anything is enqueued; the work runs when ``stream`` reaches it.
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if layout.is_yuv and color is None:
            raise ValueError(f"a {layout.format} frame needs color=YuvColor(...) (matrix and range)")
        stride = layout.nbytes if frame_stride is None else frame_stride
        if stride < layout.nbytes:
            raise ValueError(f"frame_stride {stride} is smaller than one {layout.format} frame "
                             f"({layout.nbytes} bytes)")
        source.check_span(source_offset, (batch - 1) * stride + layout.nbytes,
                            "PreprocessKernel source")
        out_bytes = self.output_nbytes(1)
        destination.check_span(destination_index * out_bytes, batch * out_bytes,
                                  "PreprocessKernel destination")
        key = (layout, color if layout.is_yuv else None, batch)
        if key != self._configured:
            self._configure(layout, color, batch)
            self._configured = key
        p = self._params
        p.src = source.pointer + source_offset
        p.src_frame_stride = stride
        p.dst = destination.pointer + destination_index * out_bytes
        out_h, out_w = self._spec.size
        grid = ((out_w + _BLOCK[0] - 1) // _BLOCK[0], (out_h + _BLOCK[1] - 1) // _BLOCK[1], batch)
        self._kernels[layout.format].launch(grid, _BLOCK, self._args, stream=stream)

    def _configure(self, layout: FrameLayout, color: YuvColor | None, batch: int) -> None:
        g = self._spec.geometry(layout.height, layout.width)
        p = self._params
        p.src_h, p.src_w = layout.height, layout.width
        p.resized_h, p.resized_w = g.resized_h, g.resized_w
        p.offset_y, p.offset_x = g.offset_y, g.offset_x
        # The same float64 quotient numpy computes in _axis_taps (src / resized).
        p.scale_y = layout.height / g.resized_h
        p.scale_x = layout.width / g.resized_w
        p.batch = batch
        planes = layout.planes
        p.plane1_offset = planes[1].offset if len(planes) > 1 else 0
        p.plane2_offset = planes[2].offset if len(planes) > 2 else 0
        p.chroma_pitch = planes[1].row_bytes if len(planes) > 1 else 0
        if layout.is_yuv:
            assert color is not None
            k = color.coefficients()
            p.y_offset, p.y_scale = float(k.y_offset), float(k.y_scale)
            p.r_v, p.g_u, p.g_v, p.b_u = float(k.r_v), float(k.g_u), float(k.g_v), float(k.b_u)
