"""A one-line progress bar on stderr, for sampling and long decodes.

It draws only when enabled: ``enabled=None`` means "when stderr is a terminal", so logs, CI and
pipes stay clean; the CLI's ``--quiet`` passes ``False``. Redraws are throttled to 10 per second.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``Progress(total, "sampling")``; :meth:`advance` as work is done; :meth:`close` at the end.

    ``total`` may be ``None`` (unknown): the bar then shows a count and a rate only.
    """

    _INTERVAL = 0.1
    _WIDTH = 24

    def __init__(self, total: int | None, label: str, *, enabled: bool | None = None,
                 stream: TextIO | None = None, unit: str = "frames") -> None:
        self._stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self._stream, "isatty", None)
            enabled = bool(isatty()) if isatty is not None else False
        self.enabled = enabled
        self.total = total
        self.count = 0
        self._label = label
        self._unit = unit
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._closed = False

    def advance(self, n: int = 1) -> None:
        self.count += n
        if self.enabled and time.monotonic() - self._drawn_at >= self._INTERVAL:
            self._draw()

    def _draw(self) -> None:
        self._drawn_at = time.monotonic()
        elapsed = max(self._drawn_at - self._started, 1e-9)
        rate = f"{self.count / elapsed:.1f} {self._unit}/s"
        if self.total:
            done = min(self.count / self.total, 1.0)
            filled = int(done * self._WIDTH)
            bar = "#" * filled + "-" * (self._WIDTH - filled)
            line = f"{self._label} [{bar}] {self.count}/{self.total} {rate}"
        else:
            line = f"{self._label} {self.count} {self._unit} {rate}"
        self._stream.write("\r" + line)
        self._stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
