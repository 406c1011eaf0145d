"""Built-in postprocessing: classification (softmax, top-k, labels)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["Classification", "Postprocess", "classify", "read_labels"]

Postprocess = Callable[[Mapping[str, npt.NDArray[np.generic]]], object]


@dataclass(frozen=True)
class Classification:
    """Top-k classes of one frame, best first: ``(class index, label, probability)``."""

    top: tuple[tuple[int, str, float], ...]

    @property
    def best(self) -> tuple[int, str, float]:
        return self.top[0]


def read_labels(path: str | Path) -> list[str]:
    """One class name a line, in index order."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def classify(top: int = 5, labels: Sequence[str] | None = None, output: str | None = None,
             ) -> Callable[[Mapping[str, npt.NDArray[np.generic]]], Classification]:
    """A postprocess for classifiers: softmax over ``output`` (default: the first output), top-k.

    The output must hold one frame's logits (shape ``[1, classes]`` or ``[classes]``).
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top!r}")
    names = list(labels) if labels is not None else None

    def postprocess(outputs: Mapping[str, npt.NDArray[np.generic]]) -> Classification:
        logits = np.asarray(outputs[output] if output is not None else next(iter(outputs.values())),
                            dtype=np.float64).reshape(-1)
        e = np.exp(logits - logits.max())
        probs = e / e.sum()
        k = min(top, probs.size)
        idx = np.argpartition(-probs, k - 1)[:k]
        idx = idx[np.argsort(-probs[idx], kind="stable")]
        return Classification(tuple(
            (int(i), names[i] if names is not None and i < len(names) else str(int(i)), float(probs[i]))
            for i in idx))

    return postprocess
