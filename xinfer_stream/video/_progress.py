"""Progress of long video work (sampling, decoding), reported to a caller's callback.

The library draws nothing: ``progress(label, done, total)`` is called as work is done (``total``
0 when unknown), and the caller decides how to show it (the command line draws a bar on a
terminal and lines elsewhere, ``cli/_progress.py``).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "ProgressCallback"]

ProgressCallback = Callable[[str, int, int], None]


class Progress:
    """``Progress(total, "sampling", callback)``; :meth:`advance` as work is done; :meth:`close`
    at the end. ``callback`` None counts silently. ``total`` None means unknown (reported as 0)."""

    def __init__(self, total: int | None, label: str, callback: ProgressCallback | None) -> None:
        self.total = total
        self.count = 0
        self.label = label
        self._callback = callback

    def advance(self, n: int = 1) -> None:
        self.count += n
        if self._callback is not None:
            self._callback(self.label, self.count, self.total or 0)

    def close(self) -> None:
        """Nothing to release: a counter. Present so callers can use it as a context manager."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
