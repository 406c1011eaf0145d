"""Decoding into lent memory (``open_source(..., plane_allocator=...)``), the hook the GPU runtime
uses to have raw planes land in its pinned buffers: same pixels, one copy, and every lent buffer
given back exactly once on every path (consumed, dropped by ``latest``, discarded on close)."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from xinfer_stream.preprocess import Preprocess
from xinfer_stream.video import VideoFrame, open_source


class Lender:
    """A pool of ``count`` numpy buffers lent as PlaneStorage; counts lends and returns."""

    def __init__(self, count: int) -> None:
        self.free = list(range(count))
        self.buffers: list[npt.NDArray[np.uint8]] = []
        self.lent = 0
        self.returned: list[int] = []
        self.requests: list[int] = []
        self.lock = threading.Lock()

    def allocate(self, nbytes: int) -> Storage | None:
        with self.lock:
            self.requests.append(nbytes)
            if not self.free:
                return None
            index = self.free.pop()
            while len(self.buffers) <= index:
                self.buffers.append(np.zeros(0, np.uint8))
            if self.buffers[index].nbytes < nbytes:
                self.buffers[index] = np.zeros(nbytes + 64, np.uint8)
            self.lent += 1
            return Storage(self, index)

    def give_back(self, index: int) -> None:
        with self.lock:
            self.returned.append(index)
            self.free.append(index)


class Storage:
    def __init__(self, lender: Lender, index: int) -> None:
        self.lender = lender
        self.index = index
        self.released = False

    @property
    def array(self) -> npt.NDArray[np.uint8]:
        assert not self.released, "planes written after release"
        return self.lender.buffers[self.index]

    def release(self) -> None:
        if not self.released:  # idempotent, as PlaneStorage requires
            self.released = True
            self.lender.give_back(self.index)


def ordinary_frames(clip: Path, fmt: str, count: int) -> list[VideoFrame]:
    with open_source(str(clip), format=fmt) as source:
        return list(itertools.islice(source, count))


@pytest.mark.parametrize("fmt", ["yuv420p", "nv12"])
def test_planes_land_in_lent_memory_with_the_same_pixels(bundled_clip: Path, fmt: str) -> None:
    want = ordinary_frames(bundled_clip, fmt, 12)
    # One queued, one being decoded, one with the consumer: 3 buffers go round, none missing.
    lender = Lender(3)
    got = 0
    with open_source(str(bundled_clip), format=fmt, queue_size=1,
                     plane_allocator=lender.allocate) as source:
        for frame, expect in zip(source, want, strict=False):
            assert isinstance(frame.storage, Storage)
            packed = frame.storage.array
            offset = 0
            for plane, reference in zip(frame.planes, expect.planes, strict=True):
                np.testing.assert_array_equal(plane, reference)
                assert plane.flags.c_contiguous
                # Back to back in the lent buffer, rows unpadded: one DMA moves the frame.
                assert np.shares_memory(plane, packed)
                assert plane.__array_interface__["data"][0] == packed.ctypes.data + offset
                offset += plane.nbytes
            w, h = frame.width, frame.height
            assert lender.requests[-1] == offset == w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2)
            frame.release()
            frame.release()  # twice is harmless
            got += 1
            if got == len(want):
                break
    assert got == 12 and lender.requests.count(lender.requests[0]) == len(lender.requests)
    assert lender.lent == len(lender.returned) and sorted(lender.free) == [0, 1, 2]


@pytest.mark.parametrize("fmt", ["yuv420p", "nv12"])
def test_a_plane_window_copies_only_the_pixels_the_consumer_reads(bundled_clip: Path,
                                                                  fmt: str) -> None:
    """The GPU path passes ``Preprocess.source_window``: a centre crop. Inside the window (and the
    chroma samples its pixels use) the planes match ordinary decoding; every other byte of the
    loan is left as it was."""
    want = ordinary_frames(bundled_clip, fmt, 4)
    height, width = want[0].height, want[0].width
    spec = Preprocess((64, 64), "shorter_crop", (0, 0, 0), (1, 1, 1))
    (y0, y1), (x0, x1) = window = spec.source_window(height, width)
    assert x1 - x0 < 0.7 * width  # a wide clip: the crop skips its sides
    lender = Lender(1)
    sentinel = 0xA5
    lender.buffers = [np.full(want[0].nbytes, sentinel, np.uint8)]
    with open_source(str(bundled_clip), format=fmt, queue_size=1,
                     plane_allocator=lender.allocate, plane_window=spec.source_window) as source:
        frame = source.get()
    assert frame is not None and frame.window == window
    per_sample = 2 if fmt == "nv12" else 1
    chroma = (slice(y0 // 2, (y1 - 1) // 2 + 1),
              slice(per_sample * (x0 // 2), per_sample * ((x1 - 1) // 2 + 1)))
    for i, (plane, reference) in enumerate(zip(frame.planes, want[0].planes, strict=True)):
        rows, columns = (slice(y0, y1), slice(x0, x1)) if i == 0 else chroma
        np.testing.assert_array_equal(plane[rows, columns], reference[rows, columns])
        outside = np.ones(plane.shape, bool)
        outside[rows, columns] = False
        assert outside.any() and (plane[outside] == sentinel).all()
    frame.release()


def test_a_plane_window_outside_the_frame_is_an_error(bundled_clip: Path) -> None:
    with pytest.raises(ValueError, match="needs a plane_allocator"):
        open_source(str(bundled_clip), format="yuv420p", plane_window=lambda h, w: ((0, h), (0, w)))
    lender = Lender(2)
    with open_source(str(bundled_clip), format="yuv420p", plane_allocator=lender.allocate,
                     plane_window=lambda h, w: ((0, h + 1), (0, w))) as source:
        with pytest.raises(ValueError, match="not a window of a"):
            source.get()
    assert lender.lent == len(lender.returned)  # the loan came back on the error path


def test_without_a_lent_buffer_the_frame_uses_ordinary_memory(bundled_clip: Path) -> None:
    with open_source(str(bundled_clip), format="yuv420p",
                     plane_allocator=lambda nbytes: None) as source:
        frame = source.get()
    assert frame is not None and frame.storage is None
    frame.release()  # a no-op
    np.testing.assert_array_equal(frame.planes[0], ordinary_frames(bundled_clip, "yuv420p", 1)[0]
                                  .planes[0])


def test_packed_formats_ignore_the_allocator(bundled_clip: Path) -> None:
    lender = Lender(2)
    with open_source(str(bundled_clip), format="rgb24", plane_allocator=lender.allocate) as source:
        frame = source.get()
    assert frame is not None and frame.storage is None and lender.requests == []


def test_frames_dropped_by_latest_are_given_back(bundled_clip: Path) -> None:
    lender = Lender(4)
    taken = []
    with open_source(str(bundled_clip), format="yuv420p", policy="latest",
                     plane_allocator=lender.allocate) as source:
        for _ in range(5):
            frame = source.get()
            assert frame is not None
            taken.append(frame)
            frame.release()
            time.sleep(0.05)  # the decoder runs ahead: frames get replaced unseen
        drops = source.statistics().drops
    assert drops > 0
    # Every lent buffer came back: the consumer's 5, the dropped ones, and the one queued at
    # close. Decoding did not stall for buffers, so few frames fell back to ordinary memory.
    assert lender.lent == len(lender.returned)
    assert len(lender.free) == 4


def test_closing_early_gives_back_queued_frames(bundled_clip: Path) -> None:
    lender = Lender(8)
    with open_source(str(bundled_clip), format="yuv420p", queue_size=4,
                     plane_allocator=lender.allocate) as source:
        first = source.get()
        assert first is not None
        deadline = time.monotonic() + 10
        while source.statistics().queued < 4 and time.monotonic() < deadline:
            time.sleep(0.01)  # let the decoder fill the queue (and block on it)
        assert source.statistics().queued == 4
    # Closed with 4 frames queued and one held by a decoder blocked on put(): all given back;
    # only the frame the consumer took is still out, until it releases it.
    assert lender.lent - len(lender.returned) == 1
    first.release()
    assert lender.lent == len(lender.returned) and len(lender.free) == 8
