"""Held-out frames that mean something: split by source, and say when they cannot tell.

Accuracy measured on frames interleaved with the calibration frames of the same scenes says how
the INT8 model does on more of the footage it was fitted to, and can rank calibration choices
backwards on other footage. :func:`split_holdout` therefore holds out whole sources (videos) when
the frames come from several, and one long contiguous stretch (the end of the video) when they
come from one; :func:`check_holdout` warns when every held-out frame shares a source with the
calibration frames, or shares calibration frames outright.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ._calibrator import CalibrationWarning, Calibrator

__all__ = ["HoldoutSplit", "check_holdout", "split_holdout"]


class Sourced(Protocol):
    """A frame that knows where it came from (``xinfer_stream.video.SampledFrame``)."""

    @property
    def source(self) -> str: ...


S = TypeVar("S", bound=Sourced)


@dataclass(frozen=True)
class HoldoutSplit(Generic[S]):
    """Calibration and held-out frames, and the sources of each (in order of first frame)."""

    calibration: list[S]
    held_out: list[S]
    calibration_sources: tuple[str, ...]
    held_out_sources: tuple[str, ...]

    @property
    def same_sources(self) -> bool:
        """Whether every held-out frame comes from a source the calibration frames come from."""
        return set(self.held_out_sources) <= set(self.calibration_sources)

    def describe(self) -> str:
        """One line: what was held out."""
        if self.same_sources:
            return (f"held out the last {len(self.held_out)} frames of "
                    f"{', '.join(self.held_out_sources)} (one contiguous stretch; the calibration "
                    "frames come from the same video)")
        return (f"held out {len(self.held_out_sources)} of "
                f"{len(self.held_out_sources) + len(self.calibration_sources)} videos, "
                f"{len(self.held_out)} frames: {', '.join(self.held_out_sources)}")


def split_holdout(frames: Sequence[S], holdout: int) -> HoldoutSplit[S]:
    """Split ``frames`` (in time order within each source) into calibration and held-out frames.

    From several sources, whole sources are held out: those whose frames add up nearest to
    ``holdout`` (at least one source held out and one kept; so the held-out count is near
    ``holdout``, not exactly it). From one source, its last ``holdout`` frames: one contiguous
    stretch, not frames interleaved with the calibration frames. Deterministic.
    """
    total = len(frames)
    if not 0 < holdout < total:
        raise ValueError(f"cannot hold out {holdout} of {total} frames; hold out at least one "
                         "and leave at least one for calibration")
    counts: dict[str, int] = {}
    for frame in frames:
        counts[frame.source] = counts.get(frame.source, 0) + 1
    if len(counts) == 1:
        source = next(iter(counts))
        return HoldoutSplit(list(frames[:total - holdout]), list(frames[total - holdout:]),
                            (source,), (source,))
    held = _nearest_sources(counts, holdout)
    return HoldoutSplit([f for f in frames if f.source not in held],
                        [f for f in frames if f.source in held],
                        tuple(s for s in counts if s not in held),
                        tuple(s for s in counts if s in held))


def _nearest_sources(counts: dict[str, int], target: int) -> set[str]:
    """Sources whose counts add up near ``target``: largest first, each taken when it brings
    the sum nearer; at least one, never all."""
    chosen: set[str] = set()
    got = 0
    for source in sorted(counts, key=lambda s: -counts[s]):
        if len(chosen) + 1 < len(counts) and abs(got + counts[source] - target) < abs(got - target):
            chosen.add(source)
            got += counts[source]
    if not chosen:
        chosen.add(min(counts, key=lambda s: abs(counts[s] - target)))
    return chosen


def check_holdout(calibrator: Calibrator, holdout: Calibrator, *, stacklevel: int) -> None:
    """Warn (:class:`CalibrationWarning`) when the held-out frames cannot tell how the model
    does on other footage: some are calibration frames, or all come from calibration sources."""
    if calibrator.frame_hashes() & holdout.frame_hashes():
        warnings.warn(
            "some held-out frames are also calibration frames; accuracy measured on them will "
            "look better than it is", CalibrationWarning, stacklevel=stacklevel + 1)
        return
    held, calibrated = holdout.source_names, calibrator.source_names
    if held and calibrated and set(held) <= set(calibrated):
        warnings.warn(
            f"every held-out frame comes from a video the calibration frames come from "
            f"({', '.join(held)}): the accuracy says how the model does on more of that "
            "footage, not on other footage; calibrate on several videos so that whole videos "
            "can be held out", CalibrationWarning, stacklevel=stacklevel + 1)
