"""Decoding in a worker process, frames in a shared-memory ring this process owns.

``open_source(..., process=True)`` moves demuxing, decoding, conversion and PyAV's per-frame
Python out of this interpreter: a worker process (a fresh interpreter, one a source) runs an
ordinary ``open_source`` and writes each frame's planes into a slot of a ring of shared memory
that this process created and owns. Here a receiver thread (the source's "decode thread") turns each
message into a :class:`VideoFrame` whose planes are read-only numpy views into the slot, and
hands it to the source's bounded hand-off as any decode thread does: policies, drops and
statistics are :class:`FrameSource`'s own.

Slots: a byte a slot after the slots says who holds it (0: free, 1: the worker's, then the frame
made of it). The worker takes a free slot, writes the frame into it and sends its number; the
frame holds its slot until it is collected (its planes are views of one array per slot; a
finalizer on that array frees the slot, a byte written here: no message a frame), so nothing
can overwrite pixels someone still reads, and nobody has to remember to release a host frame.
While every slot is held (the consumer is behind), the worker waits for one to come back
(looking again every few hundred microseconds): the ring is the source's backpressure, so a
fast decoder never runs more than a ring ahead. A frame larger than a slot (the resolution
grew) travels inline through the pipe, copied in each process; so do frames while the consumer
keeps every slot's frame (no slot back within ``_SLOT_WAIT``, until one comes back): slow, but
such a consumer never stalls its source.

Pinned memory: given ``pin_memory`` (the GPU runtime's), the ring is registered as page-locked
memory once, when it is made, and unregistered right before it is unmapped; its frames then say
``pinned=True`` and a GPU copies their planes by DMA where they are. Where registering fails, the
ring works unpinned (one warning says why) and frames are packed into the GPU's staging instead.

Faults: a worker that dies (killed, crashed) is noticed by the receiver (end of the pipe) and
started again with the source's reconnect budget (its backoff, counted as an outage and a
reconnect); a file resumes after the last frame handed over, a live or paced source goes on
with the next frame it gets, its index continuing. Past the budget the source ends with
:class:`BrokenStreamError`. ``close()`` stops the worker (a message, then a kill if it does not
go within a second), joins the receiver, and unlinks the ring: nothing is left in ``/dev/shm``
on any path (a frame still held after close keeps only its own mapping, not the name).
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing.connection
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import BrokenStreamError, VideoError
from .._handoff import Delivery, Handoff
from ._decode import Reconnect
from ._frame import VideoFrame

__all__ = ["PinMemory", "ProcessWorker", "start_process_worker"]

PinMemory = Callable[[int, int], Callable[[], None]]
"""``pin(address, nbytes)`` registers host memory as page-locked and returns what undoes it."""

_log = logging.getLogger("xinfer_stream.video")

_EXTRA_SLOTS = 6      # slots beyond the hand-off's: frames in the consumer's hands, in flight
_SLOT_WAIT = 0.5      # seconds a worker waits for a slot before sending frames inline
_SLOT_LOOK = (0.0002, 0.002)  # seconds between a waiting worker's looks for a slot: first, most
_STOP_WAIT = 1.0      # seconds a worker gets to leave after "stop" before it is killed
_OPEN_WAIT = 60.0     # seconds a worker may take to open its source (a URL's own timeouts apply)
_PAGE = 4096
# The worker imports only the video package (PyAV, numpy): the package's __init__, which
# brings in ONNX and the quantizer, is skipped by registering the package by its path.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BOOT = ("import sys, types; p = types.ModuleType('xinfer_stream'); p.__path__ = [{package!r}]; "
         "sys.modules['xinfer_stream'] = p; "
         "from xinfer_stream.video._process import _child; _child({fd})")

def _child(fd: int) -> None:
    """The worker's entry point (``python -c``): its pipe is ``fd``; the first message says
    what to open."""
    conn = multiprocessing.connection.Connection(fd)
    try:
        source, options, skip = conn.recv()
    except (EOFError, OSError):
        conn.close()
        return
    _worker_main(conn, source, options, skip)


# -- the worker process -------------------------------------------------------------------------
def _worker_main(conn: multiprocessing.connection.Connection, source: Any,
                 options: dict[str, Any], skip: int) -> None:
    """Run in the worker: open, say so, then write frames into free slots of the ring until
    told to stop, the source ends, or the pipe closes (the owner is gone)."""
    from multiprocessing import resource_tracker

    from ._source import open_source
    ring: shared_memory.SharedMemory | None = None
    try:
        try:
            frames = open_source(source, policy="every", queue_size=2, **options)
        except Exception as exc:  # noqa: BLE001 - reported to the owner, who raises it
            conn.send(("error", _portable(exc)))
            return
        with frames:
            started = time.perf_counter()
            try:
                first = frames.get()
            except Exception as exc:  # noqa: BLE001 - reported to the owner, who raises it
                conn.send(("error", _portable(exc)))
                return
            # The first frame's size sizes the ring (the owner makes it once).
            conn.send(("opened", frames.source, frames.is_live,
                       sum(p.nbytes for p in first.planes) if first is not None else 0))
            msg = conn.recv()
            if msg[0] != "ring":
                return
            _, name, slot_bytes, slots = msg
            holders: npt.NDArray[np.uint8] | None = None
            if name is not None:  # else no ring: every frame goes inline
                ring = shared_memory.SharedMemory(name=name)
                holders = np.ndarray((slots,), np.uint8, ring.buf, slots * slot_bytes)
                # The owner created and unlinks it; this process must not (Python 3.11
                # registers every attach with the resource tracker, which would unlink it on
                # our exit).
                with contextlib.suppress(Exception):
                    resource_tracker.unregister(
                        ring._name, "shared_memory")  # type: ignore[attr-defined]
            slots_come_back = True  # False while the consumer keeps every slot's frame
            count = 0
            decoded_on_device = 0  # the source's count when the last frame was sent
            frame: VideoFrame | None = first
            while True:
                if count:
                    started = time.perf_counter()
                    try:
                        frame = frames.get()
                    except Exception as exc:  # noqa: BLE001 - reported, then this worker ends
                        conn.send(("error", _portable(exc)))
                        return
                if frame is None:
                    conn.send(("end",))
                    return
                seconds = time.perf_counter() - started
                count += 1
                if count <= skip:
                    continue  # handed over before the last worker died
                if conn.poll(0) and conn.recv()[0] == "stop":
                    return
                nbytes = sum(p.nbytes for p in frame.planes)
                slot = None
                if holders is not None and nbytes <= slot_bytes:
                    # With every slot held, wait for one (the consumer is behind: this is its
                    # backpressure), unless the last wait found none (it keeps frames) and
                    # none came back since.
                    slot = _take_slot(holders)
                    if slot is None and slots_come_back:
                        slot = _wait_for_slot(holders, conn)
                        if slot == -1:
                            return  # told to stop meanwhile
                    slots_come_back = slot is not None
                stats = frames.statistics()
                on_device = stats.frames_decoded_on_device > decoded_on_device
                decoded_on_device = stats.frames_decoded_on_device
                meta = (frame.source, frame.index, frame.pts, frame.format, frame.width,
                        frame.height, frame.colorspace, frame.color_range, frame.decoded_at,
                        tuple(p.shape for p in frame.planes), seconds, on_device,
                        stats.reconnects, stats.outages, stats.outage_seconds)
                if slot is None:
                    # Larger than a slot (the resolution grew), no ring, or no slot back
                    # within _SLOT_WAIT (a consumer keeping frames): copied through the pipe,
                    # which still backpressures this process when the owner's queue is full.
                    conn.send(("inline", meta, [p.tobytes() for p in frame.planes]))
                    continue
                assert ring is not None
                view = np.ndarray((nbytes,), np.uint8, ring.buf, slot * slot_bytes)
                offset = 0
                for plane in frame.planes:
                    view[offset:offset + plane.nbytes] = plane.reshape(-1)
                    offset += plane.nbytes
                del view
                conn.send(("frame", slot, meta))
    except (EOFError, OSError, BrokenPipeError):
        return  # the owner closed the pipe: nobody to send to
    finally:
        holders = None  # its view of the ring first: SharedMemory.close() unmaps
        if ring is not None:
            ring.close()
        conn.close()


def _take_slot(holders: npt.NDArray[np.uint8]) -> int | None:
    """A free slot, now the worker's (``holders[slot] = 1``), or ``None`` if every slot is held."""
    free = np.flatnonzero(holders == 0)
    if free.size == 0:
        return None
    slot = int(free[0])
    holders[slot] = 1
    return slot


def _wait_for_slot(holders: npt.NDArray[np.uint8],
                   conn: multiprocessing.connection.Connection) -> int | None:
    """A slot that came back within ``_SLOT_WAIT``, ``None`` if none did, ``-1`` if the owner
    said "stop" meanwhile (listened for between looks)."""
    deadline = time.monotonic() + _SLOT_WAIT
    pause = _SLOT_LOOK[0]
    while (left := deadline - time.monotonic()) > 0:
        if conn.poll(min(pause, left)) and conn.recv()[0] == "stop":
            return -1
        slot = _take_slot(holders)
        if slot is not None:
            return slot
        pause = min(2 * pause, _SLOT_LOOK[1])
    return None


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it pickles (our errors do), else a VideoError saying what it was."""
    import pickle
    try:
        pickle.dumps(exc)
    except Exception:  # noqa: BLE001
        return VideoError(f"{type(exc).__name__}: {exc}")
    return exc


# -- the owner's side ---------------------------------------------------------------------------
class _Ring:
    """The shared memory: ``slots`` slots of ``slot_bytes``, then a byte a slot saying who holds
    it (``holders``: 0 free, 1 the worker's or a frame's), created and unlinked here.

    Frames read it through numpy arrays that hold no buffer export (numpy keeps a reference to
    the memoryview, not the export), so the mapping is closed only once the name is unlinked
    *and* no frame array is left (``lease`` / ``unlease``): closing it under a live frame would
    unmap pixels someone reads.
    """

    def __init__(self, slots: int, slot_bytes: int, pin_memory: PinMemory | None) -> None:
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.shm = shared_memory.SharedMemory(
            name=f"xinfer_{os.getpid()}_{uuid.uuid4().hex[:12]}", create=True,
            size=slots * slot_bytes + slots)
        self.holders: npt.NDArray[np.uint8] = np.ndarray((slots,), np.uint8, self.shm.buf,
                                                        slots * slot_bytes)
        self._lock = threading.Lock()
        self._leases = 0
        self._unlinked = False
        self._closed = False
        self._unpin: Callable[[], None] | None = None
        if pin_memory is not None:
            address = np.ndarray((slots * slot_bytes,), np.uint8, self.shm.buf).ctypes.data
            try:
                self._unpin = pin_memory(address, slots * slot_bytes)
            except Exception as exc:  # noqa: BLE001 - the ring still works, unpinned
                _log.warning("could not register a decoder ring of %d MB as pinned memory "
                             "(%s: %s): its frames are copied into staging instead (slower)",
                             slots * slot_bytes >> 20, type(exc).__name__, exc)

    @property
    def pinned(self) -> bool:
        """Whether the ring is registered as page-locked memory."""
        return self._unpin is not None

    def lease(self) -> None:
        with self._lock:
            self._leases += 1

    def unlease(self) -> None:
        with self._lock:
            self._leases -= 1
            close = self._unlinked and self._leases == 0
        if close:
            self._close()

    def unlink(self) -> None:
        """Remove the name from /dev/shm (idempotent); the mapping goes now, or with the last
        frame still holding a view of it."""
        with self._lock:
            if self._unlinked:
                return
            self._unlinked = True
            close = self._leases == 0
        with contextlib.suppress(FileNotFoundError):
            self.shm.unlink()
        if close:
            self._close()

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self._unpin is not None:
                self._unpin()  # before unmapping: no frame of it is left to copy from
        except Exception as exc:  # noqa: BLE001 - any thread (a finalizer): say it, unmap anyway
            _log.warning("could not unregister a decoder ring's pinned memory: %s: %s",
                         type(exc).__name__, exc)
        finally:
            self.shm.close()


class ProcessWorker:
    """What a FrameSource drives when its decoding runs in a worker process: ``handoff``,
    ``stop``, ``start()`` and ``shutdown()``, as the in-process decode thread's worker."""

    def __init__(self, source: Any, options: dict[str, Any], policy: str | None, slots: int,
                 stop: threading.Event, reconnect: Reconnect | None,
                 on_decoded: Callable[[float, bool], None],
                 on_outage: Callable[[float, bool], None],
                 on_live_stats: Callable[[int, int, float], None],
                 on_copied: Callable[[], None], pin_memory: PinMemory | None) -> None:
        # Made once the source opened: its policy defaults by whether it is live.
        self.handoff: Handoff[VideoFrame] | Delivery[VideoFrame] = Handoff("every", 1)
        self.policy = policy
        self.stop = stop
        self._source = source
        self._options = options
        self._reconnect = reconnect
        self._on_decoded = on_decoded
        self._on_outage = on_outage
        self._on_live_stats = on_live_stats
        self._on_copied = on_copied
        self._slots = slots
        self._pin_memory = pin_memory
        self._first_nbytes = 0
        self._remote_base = (0, 0, 0.0)   # live-source outages of workers that died
        self._remote = (0, 0, 0.0)
        self._ring: _Ring | None = None
        self._no_ring = False
        self._send_lock = threading.Lock()
        self._leased: set[int] = set()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._delivered = 0
        self._index_offset = 0
        self._last_index = -1
        self._lock = threading.Lock()
        self.ran = False  # the receiver was started (it ends by finishing its handoff)
        self.source_id = "<process>"
        self.is_live = False
        self.thread = threading.Thread(target=self._main, name="xinfer-decode:process",
                                       daemon=True)

    # -- worker processes ---------------------------------------------------------------------
    def open(self) -> None:
        """Start the first worker and wait until its source opened; raises what opening
        raised (a missing file: InvalidVideoError), with the worker gone."""
        self._spawn(skip=0)
        self.thread.name = f"xinfer-decode:{self.source_id}"
        self.policy = self.policy or ("latest" if self.is_live else "every")
        self.handoff = Handoff("latest" if self.policy == "latest" else "every", self._slots,
                               on_discard=VideoFrame.release)

    def _spawn(self, skip: int) -> None:
        # A fresh interpreter, not multiprocessing's spawn or forkserver: those re-run the
        # user's main script in the child, which breaks any script without a __main__ guard.
        parent_sock, child_sock = socket.socketpair()
        parent = multiprocessing.connection.Connection(parent_sock.detach())
        child_fd = child_sock.detach()
        process: subprocess.Popen[bytes] | None = None
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOT.format(package=_PACKAGE, fd=child_fd)],
                pass_fds=(child_fd,), stdin=subprocess.DEVNULL, close_fds=True)
            os.close(child_fd)
            child_fd = -1
            parent.send((self._source, self._options, skip))
            if not parent.poll(_OPEN_WAIT):
                raise VideoError(f"the decoder process for {self._source!r} did not open it "
                                 f"within {_OPEN_WAIT:.0f} s")
            msg = parent.recv()
            if msg[0] == "error":
                raise msg[1]
            _, self.source_id, self.is_live, self._first_nbytes = msg
        except (EOFError, OSError) as exc:
            _end_process(process, parent)
            raise VideoError(f"the decoder process for {self._source!r} ended before it "
                             f"opened the source: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            _end_process(process, parent)
            raise
        finally:
            if child_fd >= 0:
                os.close(child_fd)
        with self._send_lock:
            self._process, self._conn = process, parent
        if self.stop.is_set():  # closed meanwhile: shutdown() may have looked already
            raise VideoError("the source was closed while its decoder process started")

    def _attach_ring(self) -> None:
        """Make the ring (once, sized by the first frame) and tell the worker; slots a dead
        worker held (taken, never sent) are free again. Where /dev/shm has no room for it (a
        container's default is 64 MB), there is no ring: frames travel inline, slower but never
        a SIGBUS on a page tmpfs cannot back."""
        assert self._conn is not None
        if self._ring is None and not self._no_ring:
            slot_bytes = -(-max(self._first_nbytes, 1) // _PAGE) * _PAGE
            slots = self._slots + _EXTRA_SLOTS
            if _shm_free() < 2 * slots * slot_bytes:
                self._no_ring = True
                _log.warning("/dev/shm has less than %d MB free: frames of %r come through "
                             "the pipe instead of shared memory (slower); give the container "
                             "more shared memory (docker run --shm-size)",
                             2 * slots * slot_bytes >> 20, self._source)
            else:
                self._ring = _Ring(slots, slot_bytes, self._pin_memory)
        ring = self._ring
        if ring is None:
            self._conn.send(("ring", None, 0, 0))
            return
        with self._send_lock:  # frames still held keep their slots
            ring.holders[:] = [slot in self._leased for slot in range(ring.slots)]
        self._conn.send(("ring", ring.shm.name, ring.slot_bytes, ring.slots))

    def _give_back(self, ring: _Ring, slot: int) -> None:
        """A frame's slot array was collected: the slot is free again (any thread). Written
        before the frame's lease goes: the mapping stays while a lease is held."""
        with self._send_lock:
            self._leased.discard(slot)
            ring.holders[slot] = 0
        ring.unlease()

    # -- the receiver thread ------------------------------------------------------------------
    def start(self) -> bool:
        """Start the receiver (once); whether it runs or ran (``False``: shut down first)."""
        with self._lock:
            if not self.ran and not self.stop.is_set():
                self.ran = True
                self.thread.start()
            return self.ran

    def _main(self) -> None:
        error: BaseException | None = None
        try:
            self._attach_ring()
            while not self.stop.is_set():
                try:
                    assert self._conn is not None
                    msg = self._conn.recv()
                except (EOFError, OSError):
                    if self.stop.is_set():
                        return
                    self._restart()
                    continue
                if msg[0] == "end":
                    return
                if msg[0] == "error":
                    error = msg[1]
                    return
                frame: VideoFrame | None = self._frame(msg)
                accepted = self.handoff.put(frame)  # type: ignore[arg-type]
                # Not kept here: an error raised later holds this frame's locals through its
                # traceback, and a frame in them would hold its slot (and the ring) with it.
                frame = None
                if not accepted:
                    return
        except BaseException as exc:  # noqa: BLE001 - delivered to the consumer by get()
            error = exc
        finally:
            self.handoff.finish(error)

    def _frame(self, msg: tuple[Any, ...]) -> VideoFrame:
        kind = msg[0]
        (source, index, pts, fmt, width, height, colorspace, color_range, decoded_at, shapes,
         seconds, on_device, reconnects, outages, outage_seconds) = (
            msg[2] if kind == "frame" else msg[1])
        self._on_decoded(seconds, on_device)
        self._remote = (reconnects, outages, outage_seconds)
        base = self._remote_base
        self._on_live_stats(base[0] + reconnects, base[1] + outages, base[2] + outage_seconds)
        if kind == "frame":
            slot = msg[1]
            assert self._ring is not None
            sizes = [math.prod(shape) for shape in shapes]  # not np.prod: 20x dearer on tuples
            size = sum(sizes)
            whole: npt.NDArray[np.uint8] = np.ndarray(
                (size,), np.uint8, self._ring.shm.buf, slot * self._ring.slot_bytes)
            whole.flags.writeable = False
            with self._send_lock:
                self._leased.add(slot)
            self._ring.lease()
            weakref.finalize(whole, self._give_back, self._ring, slot)
            planes = []
            offset = 0
            for shape, n in zip(shapes, sizes, strict=True):
                planes.append(whole[offset:offset + n].reshape(shape))
                offset += n
        else:
            planes = [np.frombuffer(b, np.uint8).reshape(s) for b, s in zip(msg[2], shapes,
                                                                               strict=True)]
            self._on_copied()
        self._delivered += 1
        index += self._index_offset
        self._last_index = index
        return VideoFrame(source=source, index=index, pts=pts, format=fmt, planes=tuple(planes),
                          width=width, height=height, colorspace=colorspace,
                          color_range=color_range, decoded_at=decoded_at,
                          pinned=kind == "frame" and self._ring is not None and self._ring.pinned)

    def _restart(self) -> None:
        """The worker died: start another within the reconnect budget, resuming after the last
        frame handed over (a file) or going on (a live or paced source)."""
        budget = self._reconnect or Reconnect(attempts=0)
        down = time.monotonic()
        with self._send_lock:
            old_process, old_conn = self._process, self._conn
            self._process, self._conn = None, None
        base, remote = self._remote_base, self._remote
        self._remote_base = (base[0] + remote[0], base[1] + remote[1], base[2] + remote[2])
        self._remote = (0, 0, 0.0)
        _end_process(old_process, old_conn)
        last: BaseException | None = None
        for attempt in range(1, budget.attempts + 1):
            if self.stop.wait(budget.delay(attempt)):
                return
            try:
                self._spawn(skip=0 if self._paced_or_live() else self._delivered)
            except VideoError as exc:
                if self.stop.is_set():
                    return
                last = exc
                continue
            # A file's new worker skips what was handed over, so its indices go on by
            # themselves; a live or paced one starts again at 0.
            self._index_offset = self._last_index + 1 if self._paced_or_live() else 0
            self._attach_ring()
            self._on_outage(time.monotonic() - down, True)
            return
        self._on_outage(time.monotonic() - down, False)
        raise BrokenStreamError(
            f"the decoder process for {self._source!r} died and could not be started again "
            f"within {budget.attempts} attempts; allow more with reconnect=Reconnect(...)"
        ) from last

    def _paced_or_live(self) -> bool:
        return self.is_live or bool(self._options.get("realtime") or self._options.get("loop"))

    # -- shutdown -----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop the worker and the receiver, unlink the ring; idempotent, any thread.

        The worker is terminated, not asked: it owns nothing the OS does not reclaim (its
        containers, its mapping of the ring), and a hundred cameras close in one go rather than
        one polite second each. Its end of the pipe closing wakes the receiver, which is
        joined before this end is closed (closing a descriptor a thread reads is a race)."""
        self.stop.set()
        self.handoff.close()
        with self._send_lock:
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
        with self._lock:
            ran = self.ran  # stop is set: no start() from now on
        if ran and self.thread is not threading.current_thread():
            self.thread.join()
        with self._send_lock:
            process, conn = self._process, self._conn
            self._process, self._conn = None, None
        _end_process(process, conn, ask=False)
        if self._ring is not None:
            self._ring.unlink()


def _shm_free() -> int:
    """Bytes free in /dev/shm (where POSIX shared memory lives on Linux)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _end_process(process: subprocess.Popen[bytes] | None,
                 conn: multiprocessing.connection.Connection | None, *, ask: bool = True
                 ) -> None:
    """End the worker (asked to stop, else terminated; killed if it does not go within a
    second) and close the pipe."""
    if process is not None and process.poll() is None:
        if ask and conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
        else:
            process.terminate()
        try:
            process.wait(_STOP_WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if conn is not None:
        conn.close()


def start_process_worker(source: Any, options: dict[str, Any], policy: str | None,
                         slots: int, stop: threading.Event, reconnect: Reconnect | None,
                         on_decoded: Callable[[float, bool], None],
                         on_outage: Callable[[float, bool], None],
                         on_live_stats: Callable[[int, int, float], None],
                         on_copied: Callable[[], None],
                         pin_memory: PinMemory | None = None) -> ProcessWorker:
    """A :class:`ProcessWorker` whose first worker has opened ``source`` (or the error)."""
    worker = ProcessWorker(source, options, policy, slots, stop, reconnect, on_decoded,
                           on_outage, on_live_stats, on_copied, pin_memory)
    worker.open()
    return worker
