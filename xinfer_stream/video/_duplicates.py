"""Near-duplicate videos among sampled frames: two copies (or re-encodes) of one scene.

Sampling shares frames between videos by duration, so a scene present twice gets twice its
share, and a calibration set can end up mostly one scene without anybody noticing.
:func:`duplicate_sources` finds such videos from the frames themselves: each frame is reduced to
a 16x16 grey thumbnail, and two videos are copies of one scene when most frames of the one with
fewer have a near-identical thumbnail (mean absolute difference under ``tolerance`` grey levels of
255) among the other's. Copies are grouped transitively. Cost: one small resize per frame and a
distance matrix per pair of videos (a few thousand frames take well under a second).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ._sample import SampledFrame

__all__ = ["duplicate_sources"]

_SIDE = 16


def duplicate_sources(frames: Sequence[SampledFrame], *, tolerance: float = 4.0,
                      share: float = 0.5) -> list[tuple[str, ...]]:
    """Groups (two or more sources each, in first-seen order) of videos among ``frames`` that
    look like copies of one scene: at least ``share`` of the frames of the one with fewer frames
    have a thumbnail within ``tolerance`` of one of the other's."""
    sources: list[str] = []
    thumbs: dict[str, list[npt.NDArray[np.float32]]] = {}
    for frame in frames:
        if frame.source not in thumbs:
            sources.append(frame.source)
            thumbs[frame.source] = []
        thumbs[frame.source].append(_thumbnail(frame.image))
    stacked = {s: np.stack(t) for s, t in thumbs.items()}
    parent = {s: s for s in sources}

    def root(s: str) -> str:
        while parent[s] != s:
            s = parent[s]
        return s

    for i, a in enumerate(sources):
        for b in sources[i + 1:]:
            small, big = sorted((stacked[a], stacked[b]), key=len)
            distance = np.abs(small[:, None, :] - big[None, :, :]).mean(axis=2)
            if (distance.min(axis=1) < tolerance).mean() >= share:
                parent[root(b)] = root(a)
    groups: dict[str, list[str]] = {}
    for s in sources:
        groups.setdefault(root(s), []).append(s)
    return [tuple(g) for g in groups.values() if len(g) > 1]


def _thumbnail(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """A 16x16 grey thumbnail by block means (crop to a multiple of 16, then average)."""
    grey = image.mean(axis=2, dtype=np.float32)
    h, w = grey.shape
    bh, bw = max(h // _SIDE, 1), max(w // _SIDE, 1)
    if h < _SIDE or w < _SIDE:  # tiny frames: nearest-neighbour up to 16x16
        rows = np.arange(_SIDE) * h // _SIDE
        cols = np.arange(_SIDE) * w // _SIDE
        tiny: npt.NDArray[np.float32] = grey[rows][:, cols].ravel()
        return tiny
    cropped = grey[:bh * _SIDE, :bw * _SIDE]
    blocks: npt.NDArray[np.float32] = cropped.reshape(_SIDE, bh, _SIDE, bw).mean(axis=(1, 3))
    return blocks.ravel()
