"""When a CUDA graph capture that failed is tried again: the one rule for every owner of graphs
(the GPU runner's slots, runtime/_gpu_runner.py; the GPU detect stage, runtime/_detect_gpu.py).

Another thread's CUDA work on the same device can invalidate a capture in progress, even in
thread-local capture mode (seen on an H100 while NVDEC decoders of other cameras were starting),
and that passes. So a failed capture is tried again :data:`CAPTURE_RETRY` seconds later, the delay
doubling with each failure, the work meanwhile run without a graph; after :data:`CAPTURE_TRIES`
failures the owner runs without graphs for good and says why (:meth:`CaptureRetry.mode`).
"""

from __future__ import annotations

import threading
import time

__all__ = ["CAPTURE_RETRY", "CAPTURE_TRIES", "CaptureRetry"]

CAPTURE_TRIES = 5     # failed captures before an owner gives graphs up
CAPTURE_RETRY = 0.25  # seconds from the first failed capture to the next try; doubles each time


class CaptureRetry:
    """The failed captures of one owner of graphs and when it may capture next. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures = 0
        self._failing = False  # whether the last capture tried failed
        self._after = 0.0      # time.monotonic() before which no capture is tried
        self._error: str | None = None

    @property
    def failures(self) -> int:
        return self._failures

    @property
    def gave_up(self) -> bool:
        return self._failures >= CAPTURE_TRIES

    def due(self) -> bool:
        """Whether a capture may be tried now."""
        with self._lock:
            return self._failures < CAPTURE_TRIES and time.monotonic() >= self._after

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._error = f"{type(exc).__name__}: {exc}"
            self._failures += 1
            self._failing = True
            self._after = time.monotonic() + CAPTURE_RETRY * 2 ** (self._failures - 1)

    def succeeded(self) -> None:
        with self._lock:
            self._failing = False

    def mode(self) -> str:
        """``"graph"``, ``"retrying a failed capture (ERROR)"`` (work runs without graphs until a
        capture succeeds) or ``"plain (capture failed: ERROR)"`` (graphs given up)."""
        with self._lock:
            if self._failures >= CAPTURE_TRIES:
                return f"plain (capture failed: {self._error})"
            if self._failing:
                return f"retrying a failed capture ({self._error})"
            return "graph"
