"""Progress on stderr for the command line: the printing side of the library's progress
callbacks (``progress(stage, done, total)`` of quantize, the budget search and frame sampling;
:class:`~xinfer_stream.engines.BuildProgress` events of the engine builder).

On a terminal a stage is one bar redrawn in place; anywhere else (logs, CI, pipes) it is plain
lines: one when the stage starts, one every ``interval`` seconds while it runs, one when it ends,
so a long run is never silent for minutes and a log never fills with carriage returns. Each line
counts in the stage's own unit (frames, layers, ops, steps) and gives an ETA once the rate is
known. ``--quiet`` passes ``enabled=False``. No dependency: tqdm would give the bar, not the
line form or the per-stage units, and nothing else here needs it.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # the engines package is heavy; --help must stay fast
    from xinfer_stream.engines import BuildProgress

__all__ = ["STAGE_UNITS", "BuildProgressPrinter", "StageProgress", "format_duration"]

# What each library stage counts (the callbacks pass bare numbers).
STAGE_UNITS = {
    "statistics": "frames",
    "reference": "frames",
    "bias correction": "layers",
    "sensitivity": "ops",
    "search": "steps",
    "floor check": "models",
    "write and verify": "models",
}


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if isatty is not None else False


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: an ETA or elapsed time as people read it."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _unit_for(stage: str) -> str:
    if stage in STAGE_UNITS:
        return STAGE_UNITS[stage]
    return "frames" if stage.startswith("sampling") else "items"


class StageProgress:
    """``progress(stage, done, total)`` as one bar per stage (terminal) or periodic lines
    (elsewhere); a new stage ends the previous one. :meth:`close` ends the last (idempotent) and
    draws nothing that is already on screen, so nothing is redrawn after a final report.
    """

    _INTERVAL = 0.1
    _WIDTH = 24

    def __init__(self, enabled: bool | None = None, *, stream: TextIO | None = None,
                 live: bool | None = None, interval: float = 10.0) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = True if enabled is None else enabled
        self._live = _is_terminal(self._stream) if live is None else live
        self._interval = interval
        self._stage: str | None = None
        self._unit = "items"
        self._done = 0
        self._total = 0
        self._started = 0.0
        self._first: tuple[float, int] = (0.0, 0)   # (time, done) of the stage's first report
        self._drawn_at = 0.0
        self._drawn: tuple[int, int] | None = None  # (done, total) last written

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self._stage:
            self.close()
            self._stage, self._unit, self._started = stage, _unit_for(stage), now
            self._first = (now, done)
            self._drawn = None
            self._done, self._total = done, total
            if self._enabled:
                self._draw(now)
            return
        self._done, self._total = done, total
        if not self._enabled:
            return
        if now - self._drawn_at >= (self._INTERVAL if self._live else self._interval):
            self._draw(now)

    def _rate(self, now: float) -> float | None:
        """Units a second since the stage's first report (the first batch may land at t=0)."""
        t0, d0 = self._first
        if now - t0 < 0.5 or self._done <= d0:
            return None
        return (self._done - d0) / (now - t0)

    def _line(self, now: float) -> str:
        unit, done, total = self._unit, self._done, self._total
        rate = self._rate(now)
        parts = [f"{done}/{total} {unit}" if total else f"{done} {unit}"]
        if rate is not None:
            singular = unit[:-1] if unit.endswith("s") else unit
            parts.append(f"{rate:.1f} {unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{singular}")
            if total and done < total:
                parts.append(f"ETA {format_duration((total - done) / rate)}")
        if total and done >= total:
            parts.append(f"in {format_duration(now - self._started)}")
        if self._live:
            filled = int(min(done / total, 1.0) * self._WIDTH) if total else 0
            return f"\r{self._stage} [{'#' * filled}{'-' * (self._WIDTH - filled)}] " + \
                   ", ".join(parts) + "\x1b[K"
        return f"{self._stage}: " + ", ".join(parts) + "\n"

    def _draw(self, now: float) -> None:
        self._drawn_at = now
        self._drawn = (self._done, self._total)
        self._stream.write(self._line(now))
        self._stream.flush()

    def note(self, text: str) -> None:
        """A line of its own between stages (an estimate, say): ends the current stage's output
        first, so a bar is not drawn over. Nothing when disabled."""
        if not self._enabled:
            return
        self.close()
        self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        """End the current stage's output: its final state (unless already shown), then a
        newline on a terminal. Safe to call twice."""
        if self._stage is not None and self._enabled:
            if self._drawn != (self._done, self._total):
                self._draw(time.monotonic())
            if self._live:
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
