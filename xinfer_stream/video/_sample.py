"""``sample_frames``: a few frames that represent the footage, for calibration.

Strategies (per video; several videos share ``n`` by duration, largest remainder):

- ``uniform``: targets evenly spaced in time (slot centres). For each target the sampler seeks
  to the keyframe before it only when that skips work (a keyframe lies between the decoder's
  position and the target), then decodes forward and takes the frame nearest the target. So a
  file with one keyframe (walk.mkv) is decoded once, front to back, up to the last target, and
  a long file with regular keyframes costs about ``n`` half-GOPs. Header frame counts are never
  used; durations are, and when a duration lies (the file ends before the last target) the
  sampler counts the real frames and tries again.
- ``keyframes``: only keyframes are decoded (``skip_frame="NONKEY"``); ``n`` of them evenly
  spaced in the keyframe list. Fast, but a file has only so many keyframes.
- ``diverse``: a candidate pool (``uniform`` with ``pool_factor * n`` targets) is decoded to
  32x32 thumbnails, then ``n`` candidates are chosen by farthest-point selection (the first one
  drawn with ``seed``), so a long static scene contributes one or two frames, not most of them;
  the chosen frames are then decoded at full size.

Every pick is a distinct frame; picks come back in time order per video, videos in the order
given. Asking for more frames than a video has returns all of them with a
:class:`SamplingWarning`. ``uniform`` and ``keyframes`` do not use ``seed``.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, TypeVar

import av
import av.container
import av.error
import av.video.stream
import numpy as np
import numpy.typing as npt

from .._errors import InvalidVideoError, VideoError
from ._container import OpenOptions, Target, open_container, resolve_targets
from ._decode import configure_threads
from ._frame import convert_frame
from ._progress import Progress, ProgressCallback

__all__ = ["SampledFrame", "SamplingWarning", "Strategy", "sample_frames"]

_log = logging.getLogger("xinfer_stream.video")

Strategy = Literal["uniform", "keyframes", "diverse"]
_STRATEGIES = ("uniform", "keyframes", "diverse")
_THUMB = 32
# Without a keyframe index, decode forward rather than seek when the target is this close.
_FORWARD_WINDOW_S = 2.0


class SamplingWarning(UserWarning):
    """Fewer frames than asked for could be sampled (the video has fewer)."""


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: RGB uint8 ``image`` (H, W, 3) and where it came from.

    ``time`` is the presentation time in seconds, ``pts`` the same in ``time_base`` units.
    ``index`` is the frame's position in decode order (what :func:`open_source` would number it):
    counted exactly when the sampler decoded from the start or the container indexes every
    frame (mp4, mov, avi), otherwise estimated from ``time`` and the frame rate.
    """

    source: str
    index: int
    time: float
    image: npt.NDArray[np.uint8] = field(repr=False, compare=False)
    pts: int | None = None
    time_base: Fraction | None = field(default=None, compare=False)


@dataclass(frozen=True)
class _Probe:
    """What the container header says about one video (durations may lie: see module doc)."""

    target: Target
    start: float
    duration: float
    rate: float
    keyframes: tuple[float, ...] | None  # seconds, from the container index; None if unindexed
    ordinals: dict[float, int]           # keyframe time -> frame position, per-frame indexes only


def _stream_start(stream: av.video.stream.VideoStream) -> float:
    if stream.start_time is not None and stream.time_base is not None:
        return max(0.0, float(stream.start_time * stream.time_base))
    return 0.0


def _probe(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
           target: Target) -> _Probe:
    tb = stream.time_base
    rate_q = stream.average_rate or stream.guessed_rate or stream.base_rate
    rate = float(rate_q) if rate_q else 25.0
    if stream.duration and tb is not None:
        duration = float(stream.duration * tb)
    elif container.duration:
        duration = container.duration / av.time_base
    else:
        duration = 0.0  # unknown: the sampler counts frames instead
    keyframes: tuple[float, ...] | None = None
    ordinals: dict[float, int] = {}
    if tb is not None:
        entries = list(stream.index_entries)
        key_times = [(i, float(e.timestamp * tb)) for i, e in enumerate(entries) if e.is_keyframe]
        keyframes = tuple(t for _, t in key_times) or None
        if len(entries) > len(key_times):  # a per-frame index: positions are countable
            ordinals = {t: i for i, t in key_times}
    return _Probe(target=target, start=_stream_start(stream), duration=duration, rate=rate,
                  keyframes=keyframes, ordinals=ordinals)


class _Cursor:
    """Sequential decoding with seeks and a one-frame push-back; tracks frame positions."""

    def __init__(self, container: av.container.InputContainer,
                 stream: av.video.stream.VideoStream, probe: _Probe) -> None:
        self.container = container
        self.stream = stream
        self.probe = probe
        self._frames: Iterator[av.VideoFrame] | None = None
        self._pushed: tuple[av.VideoFrame, float, int | None] | None = None
        self.position: float | None = None    # time of the last frame handed out
        self._next_index: int | None = 0      # position of the next frame, when known
        self.exhausted = False
        self.decoded = 0
        self.seeks = 0
        # With skip_frame="NONKEY" only keyframes come out: positions cannot be counted, only
        # looked up in the container index.
        self.keyframes_only = False

    def seek(self, t: float) -> None:
        tb = self.stream.time_base
        assert tb is not None
        self._close_frames()
        self._pushed = None
        self.container.seek(math.floor(t / tb), stream=self.stream, backward=True,
                            any_frame=False)
        self._next_index = None
        self.position = None
        self.exhausted = False
        self.seeks += 1

    def decode_keyframes_only(self) -> None:
        """From here on the decoder skips every non-keyframe (``skip_frame="NONKEY"``)."""
        self.stream.codec_context.skip_frame = "NONKEY"
        self.keyframes_only = True
        self._next_index = None

    def _close_frames(self) -> None:
        if self._frames is not None:
            self._frames.close()  # type: ignore[attr-defined]
            self._frames = None

    def _time_of(self, frame: av.VideoFrame) -> float:
        if frame.time is not None:
            return float(frame.time)
        step = 1.0 / self.probe.rate
        return (self.position + step) if self.position is not None else self.probe.start

    def _index_after_seek(self, time: float) -> int | None:
        """Position of the first frame after a seek: the keyframe the seek landed on.

        Looked up by time in the container index (whose timestamps may be decode times, a
        reorder delay away from the frame's presentation time, hence the tolerance). The
        frame's own dts is no help: with frame threading and skipped frames it belongs to
        another packet.
        """
        if not self.probe.ordinals:
            return 0 if time <= self.probe.start + 0.5 / self.probe.rate else None
        nearest = min(self.probe.ordinals, key=lambda k: abs(k - time))
        if abs(nearest - time) <= 3.0 / self.probe.rate:
            return self.probe.ordinals[nearest]
        return None

    def next(self) -> tuple[av.VideoFrame, float, int | None] | None:
        """(frame, time, index or None) of the next decoded frame; ``None`` at the end."""
        if self._pushed is not None:
            item, self._pushed = self._pushed, None
            self.position = item[1]
            return item
        if self.exhausted:
            return None
        if self._frames is None:
            self._frames = self.container.decode(self.stream)
        try:
            frame = next(self._frames)
        except StopIteration:
            self.exhausted = True
            self._close_frames()
            return None
        self.decoded += 1
        time = self._time_of(frame)
        index = self._next_index
        if index is None:
            index = self._index_after_seek(time)
        self._next_index = index + 1 if index is not None and not self.keyframes_only else None
        self.position = time
        return frame, time, index

    def push_back(self, item: tuple[av.VideoFrame, float, int | None], previous: float | None
                  ) -> None:
        self._pushed = item
        self.position = previous

    def close(self) -> None:
        self._close_frames()


def _index_or_estimate(index: int | None, time: float, probe: _Probe) -> int:
    if index is not None:
        return index
    return max(0, round((time - probe.start) * probe.rate))


def _rgb(frame: av.VideoFrame, probe: _Probe, time: float, index: int | None) -> SampledFrame:
    converted = convert_frame(frame, source=probe.target.id, index=0, fmt="rgb24")
    return SampledFrame(source=probe.target.id, index=_index_or_estimate(index, time, probe),
                        time=time, image=converted.image, pts=frame.pts,
                        time_base=Fraction(frame.time_base) if frame.time_base else None)


def _thumbnail(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    return np.asarray(frame.to_ndarray(format="rgb24", width=_THUMB, height=_THUMB), np.uint8)


Picked = tuple[av.VideoFrame, float, int | None]
K = TypeVar("K")


def _should_seek(cursor: _Cursor, target: float) -> bool:
    probe = cursor.probe
    here = cursor.position if cursor.position is not None else probe.start - 1.0
    if target <= here:
        return False  # already past it: take the next frame
    if probe.keyframes is not None:
        # The keyframe a seek would land on: worth it only if it is ahead of where we are.
        landing = bisect.bisect_right(probe.keyframes, target) - 1
        return landing >= 0 and probe.keyframes[landing] > here + 0.5 / probe.rate
    return target - here > _FORWARD_WINDOW_S


def _walk(cursor: _Cursor, targets: Sequence[float], on_pick: Any) -> int:
    """Visit the frame nearest each target (distinct, in decode order); returns how many."""
    picked_at: float | None = None  # time of the last pick: later picks come after it
    count = 0
    seek_helps = True
    for target in targets:
        if seek_helps and _should_seek(cursor, target):
            before = cursor.position
            cursor.seek(target)
            first = cursor.next()
            if first is None:
                return count
            if cursor.probe.keyframes is None and before is not None and first[1] <= before:
                seek_helps = False  # this file's seeks land behind us: decode forward only
            cursor.push_back(first, None)
        previous: Picked | None = None
        chosen: Picked | None = None
        while True:
            item = cursor.next()
            if item is None:
                chosen = previous
                break
            if picked_at is not None and item[1] <= picked_at:
                continue  # not after the last pick (a seek landed early, or pts went back)
            if item[1] >= target:
                if previous is not None and target - previous[1] <= item[1] - target:
                    chosen = previous
                    cursor.push_back(item, previous[1])
                else:
                    chosen = item
                break
            previous = item
        if chosen is None:
            return count
        picked_at = chosen[1]
        on_pick(chosen)
        count += 1
    return count


def _targets(start: float, duration: float, n: int) -> list[float]:
    return [start + (i + 0.5) * duration / n for i in range(n)]


def _all_frames_if_at_most(cursor: _Cursor, n: int, keep: Callable[[av.VideoFrame], K]
                           ) -> tuple[list[tuple[K, float, int]] | None, int]:
    """Decode from the start: ``keep(frame)`` of every frame if there are at most ``n``.

    Returns (those frames or ``None`` if there are more than ``n``, the true frame count): the
    truth a missing or lying header hides.
    """
    cursor.seek(cursor.probe.start)
    frames: list[tuple[K, float, int]] | None = []
    count = 0
    while (item := cursor.next()) is not None:
        count += 1
        if frames is not None:
            frames.append((keep(item[0]), item[1], count - 1))
            if len(frames) > n:
                frames = None
    return frames, count


def _walk_positions(cursor: _Cursor, count: int, n: int, on_pick: Any) -> None:
    """Pick ``n`` of ``count`` frames evenly by position, decoding once from the start."""
    wanted = {int((i + 0.5) * count / n) for i in range(n)}
    cursor.seek(cursor.probe.start)
    position = 0
    while (item := cursor.next()) is not None:
        if position in wanted:
            on_pick((item[0], item[1], position))
        position += 1


def _warn_short(probe: _Probe, asked: int, got: int, strategy: str, what: str = "frames") -> None:
    warnings.warn(
        f"asked for {asked} {what} from {probe.target.id!r} but it has only {got} ({strategy} "
        f"sampling); returning all {got}. Ask for fewer, or add videos", SamplingWarning,
        stacklevel=4)


def _sample_uniform(cursor: _Cursor, n: int, progress: Progress) -> list[SampledFrame]:
    probe = cursor.probe
    picks: list[SampledFrame] = []

    def take(item: Picked) -> None:
        picks.append(_rgb(item[0], probe, item[1], item[2]))
        progress.advance()

    if probe.duration > 0:
        _walk(cursor, _targets(probe.start, probe.duration, n), take)
        if len(picks) == n:
            return picks
    # The header's duration is missing or wrong, or the video has fewer than n frames: count.
    progress.advance(-len(picks))
    picks.clear()
    every, count = _all_frames_if_at_most(cursor, n, lambda f: f)
    if every is not None:
        for item in every:
            take(item)
        if count < n:
            _warn_short(probe, n, count, "uniform")
    else:
        _walk_positions(cursor, count, n, take)
    return picks


def _keyframe_times(cursor: _Cursor) -> list[float]:
    """Keyframe times from the container index, or from one pass over the packets (no decode)."""
    if cursor.probe.keyframes is not None and len(cursor.probe.keyframes) > 1:
        return list(cursor.probe.keyframes)
    tb = cursor.stream.time_base
    assert tb is not None
    times = [float(p.pts * tb) for p in cursor.container.demux(cursor.stream)
             if p.is_keyframe and p.pts is not None]
    cursor.container.seek(0, stream=cursor.stream, backward=True, any_frame=False)
    return sorted(times)


def _sample_keyframes(cursor: _Cursor, n: int, progress: Progress) -> list[SampledFrame]:
    probe = cursor.probe
    cursor.decode_keyframes_only()
    keys = _keyframe_times(cursor)
    if len(keys) <= n:
        wanted = keys
    else:
        wanted = [keys[int((i + 0.5) * len(keys) / n)] for i in range(n)]
    picks: list[SampledFrame] = []
    half_frame = 0.5 / probe.rate
    for key in wanted:
        here = cursor.position
        # Seek unless decoding forward meets no other keyframe first (skip_frame makes the
        # non-keyframes free to pass).
        if here is None or here >= key - half_frame or any(
                here + half_frame < k < key - half_frame for k in keys):
            cursor.seek(key)
        while (item := cursor.next()) is not None:
            if item[1] >= key - 2 * half_frame and (not picks or item[1] > picks[-1].time):
                picks.append(_rgb(item[0], probe, item[1], item[2]))
                progress.advance()
                break
    if len(picks) < n:
        _warn_short(probe, n, len(picks), "keyframes", "keyframes")
    return picks


def farthest_point_order(features: npt.NDArray[np.float32], k: int, first: int) -> list[int]:
    """Greedy farthest-point selection of ``k`` rows of ``features``, starting at ``first``."""
    chosen = [first]
    nearest = np.linalg.norm(features - features[first], axis=1)
    while len(chosen) < min(k, len(features)):
        nxt = int(np.argmax(nearest))
        if nearest[nxt] <= 0.0:
            # Only duplicates left: fill evenly from what remains, in time order.
            rest = [i for i in range(len(features)) if i not in set(chosen)]
            step = len(rest) / (k - len(chosen))
            chosen += [rest[int(j * step)] for j in range(k - len(chosen))]
            break
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(features - features[nxt], axis=1))
    return chosen


def _sample_diverse(cursor: _Cursor, n: int, seed: int, pool_factor: int, progress: Progress
                    ) -> list[SampledFrame]:
    probe = cursor.probe
    pool: list[tuple[npt.NDArray[np.uint8], float]] = []

    def collect(item: Picked) -> None:
        pool.append((_thumbnail(item[0]), item[1]))

    size = max(pool_factor * n, n)
    if probe.duration > 0:
        _walk(cursor, _targets(probe.start, probe.duration, size), collect)
    if len(pool) < size:
        # Short clip or lying header: count the frames, then spread the pool by position.
        pool.clear()
        every, count = _all_frames_if_at_most(cursor, size, _thumbnail)
        if every is None:
            _walk_positions(cursor, count, size, collect)
        else:
            pool = [(thumb, t) for thumb, t, _ in every]
    if len(pool) <= n:
        chosen_times = sorted(t for _, t in pool)
        if len(pool) < n:
            _warn_short(probe, n, len(pool), "diverse")
    else:
        features = np.stack([thumb.reshape(-1) for thumb, _ in pool]).astype(np.float32) / 255.0
        first = int(np.random.default_rng(seed).integers(len(pool)))
        chosen_times = sorted(pool[i][1] for i in farthest_point_order(features, n, first))
    # Decode the chosen frames at full size: the nearest frame to each chosen time is that frame.
    picks: list[SampledFrame] = []

    def take(item: Picked) -> None:
        picks.append(_rgb(item[0], probe, item[1], item[2]))
        progress.advance()

    cursor.seek(probe.start)
    _walk(cursor, chosen_times, take)
    return picks


def _quotas(durations: Sequence[float], n: int) -> list[int]:
    """Split ``n`` over videos in proportion to duration (largest remainder, each >= 1 if n allows)."""
    weights = [d if d > 0 else 1.0 for d in durations]
    total = sum(weights)
    exact = [n * w / total for w in weights]
    quotas = [math.floor(x) for x in exact]
    if n >= len(weights):
        quotas = [max(q, 1) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True)
    i = 0
    while sum(quotas) < n:
        quotas[order[i % len(order)]] += 1
        i += 1
    while sum(quotas) > n:  # the ">= 1" floor overshot: take back from the largest
        quotas[max(range(len(quotas)), key=lambda j: quotas[j])] -= 1
    return quotas


def sample_frames(sources: Any, n: int, *, strategy: str = "uniform", seed: int = 0,
                  progress: ProgressCallback | None = None,
                  threads: int | None = None,
                  pool_factor: int = 4) -> list[SampledFrame]:
    """Sample ``n`` frames from one or more video files, for calibration.

    ``sources``: a path, a list of paths, a directory or a glob (files only: sampling seeks).
    ``strategy``: ``"uniform"``, ``"keyframes"`` or ``"diverse"`` (module docstring). ``n`` is
    shared between videos in proportion to their durations. Returns the frames in time order per
    video, videos in the order given; deterministic for given inputs and ``seed``. ``progress``:
    called as ``progress(label, frames_done, n)`` while sampling (the caller shows it; this
    function draws nothing). ``threads``: codec threads.

    Raises :class:`InvalidVideoError` for unusable inputs and :class:`VideoError` when decoding
    fails; warns :class:`SamplingWarning` when a video has fewer frames than its share.
    """
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(_STRATEGIES)}, got {strategy!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if pool_factor < 1:
        raise ValueError(f"pool_factor must be at least 1, got {pool_factor!r}")
    targets = resolve_targets(sources)
    if targets is None or any(t.kind != "file" for t in targets):
        raise InvalidVideoError(
            f"cannot sample frames from {sources!r}: sampling needs video files (a path, a list "
            f"of paths, a directory or a glob); record a stream to a file first")
    options = OpenOptions()
    probes: list[_Probe] = []
    for target in targets:
        container = open_container(target, options)
        try:
            probes.append(_probe(container, container.streams.video[0], target))
        finally:
            container.close()
    quotas = _quotas([p.duration for p in probes], n)
    label = "sampling " + (os.path.basename(targets[0].id) if len(targets) == 1
                           else f"{len(targets)} videos")
    frames: list[SampledFrame] = []
    with Progress(n, label, progress) as bar:
        for probe, quota in zip(probes, quotas, strict=True):
            if quota == 0:
                continue
            frames += _sample_one(probe, quota, strategy, seed, pool_factor, threads, options, bar)
    return frames



def _sample_one(probe: _Probe, n: int, strategy: str, seed: int, pool_factor: int,
                threads: int | None, options: OpenOptions, bar: Progress) -> list[SampledFrame]:
    container = open_container(probe.target, options)
    stream = container.streams.video[0]
    configure_threads(stream, threads)
    cursor = _Cursor(container, stream, probe)
    try:
        if strategy == "uniform":
            picks = _sample_uniform(cursor, n, bar)
        elif strategy == "keyframes":
            picks = _sample_keyframes(cursor, n, bar)
        else:
            picks = _sample_diverse(cursor, n, seed, pool_factor, bar)
    except av.error.FFmpegError as exc:
        where = f" near {cursor.position:.3f} s" if cursor.position is not None else ""
        raise VideoError(
            f"sampling {probe.target.id!r} failed{where}: FFmpeg reported {type(exc).__name__}: "
            f"{exc.strerror!r}; the file is damaged there: re-encode it or leave it out") from exc
    finally:
        cursor.close()
        container.close()
    _log.debug("sampled %s: %d %s picks, %d frames decoded, %d seeks", probe.target.id,
               len(picks), strategy, cursor.decoded, cursor.seeks)
    return sorted(picks, key=lambda f: f.time)
