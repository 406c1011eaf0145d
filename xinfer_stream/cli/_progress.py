"""Progress on stderr for the command line: the printing side of the library's progress
callbacks (``progress(stage, done, total)`` of quantize and the budget search;
:class:`~xinfer_stream.engines.BuildProgress` events of the engine builder).

Bars draw only on a terminal unless told otherwise (``enabled``), so logs, CI and pipes stay
clean; ``--quiet`` passes ``enabled=False``.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from xinfer_stream.engines import BuildProgress

__all__ = ["BuildProgressPrinter", "StageProgress"]


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if isatty is not None else False


class StageProgress:
    """``progress(stage, done, total)`` drawn as one bar per stage, redrawn at most 10 times a
    second; a new stage ends the previous one's line. :meth:`close` ends the last (idempotent).
    """

    _INTERVAL = 0.1
    _WIDTH = 24

    def __init__(self, enabled: bool | None = None, *, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = _is_terminal(self._stream) if enabled is None else enabled
        self._stage: str | None = None
        self._done = 0
        self._total = 0
        self._started = 0.0
        self._drawn_at = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._stage, self._started = stage, time.monotonic()
        self._done, self._total = done, total
        if self._enabled and time.monotonic() - self._drawn_at >= self._INTERVAL:
            self._draw()

    def _draw(self) -> None:
        self._drawn_at = time.monotonic()
        rate = self._done / max(self._drawn_at - self._started, 1e-9)
        filled = int(min(self._done / self._total, 1.0) * self._WIDTH) if self._total else 0
        self._stream.write(f"\r{self._stage} [{'#' * filled}{'-' * (self._WIDTH - filled)}] "
                           f"{self._done}/{self._total} {rate:.1f}/s")
        self._stream.flush()

    def close(self) -> None:
        if self._stage is not None and self._enabled:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()
        self._stage = None


class BuildProgressPrinter:
    """Engine-build progress on a text stream: a live line on a terminal, one line per top-level
    phase otherwise (logs stay readable)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._live = _is_terminal(stream)
        self._top: set[str] = set()

    def __call__(self, event: BuildProgress) -> None:
        if event.kind == "elapsed":
            if self._live:
                self._write(f"\rbuilding... {event.elapsed:5.0f} s")
            return
        if event.kind == "start" and event.parent is None:
            self._top.add(event.phase)
            if not self._live:
                self._write(f"[{event.elapsed:6.1f} s] {event.phase}\n")
        if self._live and event.steps:
            done = round(20 * event.step / event.steps)
            self._write(f"\r[{event.elapsed:6.1f} s] {event.phase[:40]:<40} "
                        f"[{'#' * done}{'.' * (20 - done)}] {event.step}/{event.steps}")
        if event.kind == "finish" and event.phase in self._top:
            self._top.discard(event.phase)
            if self._live:
                self._write("\n")

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()
