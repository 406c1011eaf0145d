"""Results as JSON lines: one object a frame, written to a file that appears only once whole.

A line holds ``frame`` (index), ``pts`` (seconds or ``null``), ``source``, ``camera`` (``null``
outside ``stream_many``) and what the postprocess found: ``detections``, a list of
``{"label", "class_id", "score", "xyxy": [x1, y1, x2, y2]}`` (source-frame pixels, best first),
or ``classes``, a list of ``{"label", "class_id", "p"}`` (best first); neither without a
postprocess of those kinds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from .._files import AtomicWriter, atomic_text_file, discard_atomic
from ._result import Result

__all__ = ["JsonLinesWriter", "result_to_json"]


def result_to_json(result: Result) -> dict[str, Any]:
    """The JSON object of one :class:`Result` (see the module docstring)."""
    record: dict[str, Any] = {"frame": result.frame_index, "pts": result.pts,
                              "source": result.source, "camera": result.camera}
    p = result.prediction
    if p is not None and hasattr(p, "xyxy"):
        record["detections"] = [
            {"label": label, "class_id": int(cid), "score": round(float(score), 4),
             "xyxy": [round(float(v), 2) for v in box]}
            for box, score, cid, label in zip(p.xyxy, p.scores, p.class_ids, p.labels)]
    elif p is not None and hasattr(p, "top"):
        record["classes"] = [{"label": label, "class_id": int(cid), "p": round(float(prob), 4)}
                             for cid, label, prob in p.top]
    return record


class JsonLinesWriter(AtomicWriter):
    """Write one JSON line per :class:`Result` into ``path``, atomically: lines go to a temporary
    file beside ``path`` (made here, so an unwritable folder fails at construction), renamed over
    ``path`` by :meth:`close`; :meth:`abort`, or leaving the ``with`` block by an exception,
    discards it and leaves ``path`` as it was. ``close``/``abort`` are safe to call twice."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import contextlib

        self.path = Path(path)
        self._stack = contextlib.ExitStack()
        self._fh: IO[str] = self._stack.enter_context(atomic_text_file(self.path))
        self.lines = 0
        self.closed = False

    def write(self, result: Result) -> None:
        if self.closed:
            raise ValueError(f"the JsonLinesWriter for {str(self.path)!r} is closed")
        self._fh.write(json.dumps(result_to_json(result)) + "\n")
        self.lines += 1

    def close(self) -> None:
        """Finish the file and rename it over ``path``."""
        if not self.closed:
            self.closed = True
            self._stack.close()

    def abort(self) -> None:
        """Discard the lines written; ``path`` keeps its previous content (or stays absent)."""
        if not self.closed:
            self.closed = True
            discard_atomic(self._stack)
