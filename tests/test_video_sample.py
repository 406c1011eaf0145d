"""xinfer_stream.video sampling and calibration sets (synthetic clips in tmp_path + real clips)."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xinfer_stream.video._sample as sample_module
from xinfer_stream._errors import InvalidCalibrationInput, InvalidVideoError
from xinfer_stream._files import sha256_file
from xinfer_stream.video import (
    SampledFrame,
    SamplingWarning,
    load_calibration_set,
    open_source,
    sample_frames,
    save_calibration_set,
)
from xinfer_stream.video._progress import Progress
from xinfer_stream.video._write import write_video

from .conftest import shared


def numbered_frames(n: int, w: int = 64, h: int = 48) -> list[np.ndarray]:
    """Frame i shows i as two grey levels (coarse and fine), readable after lossy coding."""
    frames = []
    for i in range(n):
        frame = np.zeros((h, w, 3), np.uint8)
        frame[:, : w // 2] = 8 * (i // 30) + 8
        frame[:, w // 2:] = 8 * (i % 30) + 8
        frames.append(frame)
    return frames


def number_of(image: np.ndarray) -> int:
    w = image.shape[1]
    coarse = round((float(image[:, 2: w // 2 - 2].mean()) - 8) / 8)
    fine = round((float(image[:, w // 2 + 2: -2].mean()) - 8) / 8)
    return 30 * coarse + fine


@pytest.fixture
def long_clip(tmp_path: Path) -> Path:
    """300 frames (10 s at 30 fps), a keyframe every 10 frames."""
    path = tmp_path / "long.mp4"
    write_video(path, numbered_frames(300), gop=10)
    return path


class DecodeCounter:
    """Counts frames the sampler decodes (white-box: wraps the cursor)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decoded = 0
        self.seeks = 0
        original = sample_module._Cursor.close

        def close(cursor: Any) -> None:
            self.decoded += cursor.decoded
            self.seeks += cursor.seeks
            original(cursor)

        monkeypatch.setattr(sample_module._Cursor, "close", close)


def check_cover(frames: list[SampledFrame], n: int, duration: float) -> None:
    """Distinct, time-ordered picks, no gap over twice the ideal spacing, ends covered."""
    times = [f.time for f in frames]
    assert len(frames) == n
    assert times == sorted(times) and len(set(times)) == n
    assert len({(f.source, f.index) for f in frames}) == n
    spacing = duration / n
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 2 * spacing, (gaps, spacing)
    assert times[0] <= spacing and times[-1] >= duration - spacing


def test_uniform_picks_the_frames_nearest_the_slot_centres(long_clip: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    counter = DecodeCounter(monkeypatch)
    frames = sample_frames(long_clip, 4)
    # Slot centres at 1.25, 3.75, 6.25, 8.75 s -> frames 37.5, 112.5, 187.5, 262.5 (ties go early).
    assert [f.index for f in frames] == [37, 112, 187, 262]
    assert [number_of(f.image) for f in frames] == [37, 112, 187, 262]
    assert [f.time for f in frames] == pytest.approx([37 / 30, 112 / 30, 187 / 30, 262 / 30])
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    # Seeks to the keyframe before each target: a few GOPs decoded, never the whole file.
    assert counter.seeks == 4 and counter.decoded <= 4 * 10


def test_uniform_is_deterministic_and_covers(long_clip: Path) -> None:
    a = sample_frames(long_clip, 16)
    b = sample_frames(long_clip, 16, seed=7)
    assert [(f.index, f.time) for f in a] == [(f.index, f.time) for f in b]
    check_cover(a, 16, 10.0)
    for f in a:
        assert number_of(f.image) == f.index


def test_uniform_survives_a_lying_duration(long_clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = sample_module._probe
    for factor in (0.4, 3.0):  # the header says 4 s, or 30 s, for a 10 s clip
        def lying(*args: Any, factor: float = factor) -> Any:
            probe = original(*args)
            return sample_module._Probe(**{**probe.__dict__, "duration": probe.duration * factor})

        monkeypatch.setattr(sample_module, "_probe", lying)
        frames = sample_frames(long_clip, 8)
        assert len(frames) == 8 and len({f.index for f in frames}) == 8
        if factor > 1:  # targets past the end: the sampler counts the frames and spreads again
            check_cover(frames, 8, 10.0)
        assert [number_of(f.image) for f in frames] == [f.index for f in frames]


def test_more_frames_than_exist_returns_all_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "short.mkv"
    write_video(path, numbered_frames(12))
    for strategy in ("uniform", "diverse"):
        with pytest.warns(SamplingWarning, match=r"asked for 20 frames .* only 12"):
            frames = sample_frames(path, 20, strategy=strategy)
        assert [f.index for f in frames] == list(range(12))
        assert [number_of(f.image) for f in frames] == list(range(12))


def test_keyframes_decodes_only_keyframes(long_clip: Path) -> None:
    frames = sample_frames(long_clip, 5, strategy="keyframes")
    assert len(frames) == 5
    assert all(f.index % 10 == 0 for f in frames) and len({f.index for f in frames}) == 5
    assert [number_of(f.image) for f in frames] == [f.index for f in frames]
    gaps = np.diff([f.index for f in frames])
    assert gaps.min() >= 50 and gaps.max() <= 70  # evenly spread over the 30 keyframes
    with pytest.warns(SamplingWarning, match="keyframes"):
        assert len(sample_frames(long_clip, 40, strategy="keyframes")) == 30


def test_diverse_does_not_let_a_static_stretch_dominate(tmp_path: Path) -> None:
    # 100 frames: 10 varied, 80 identical (a held frame), 10 varied.
    rng = np.random.default_rng(3)
    varied = [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(20)]
    still = rng.integers(0, 256, (48, 64, 3), np.uint8)
    frames = varied[:10] + [still] * 80 + varied[10:]
    path = tmp_path / "static.mkv"
    write_video(path, frames, codec="ffv1", pix_fmt="yuv420p")

    def static_picks(picked: list[SampledFrame]) -> int:
        return sum(10 <= f.index < 90 for f in picked)

    uniform = sample_frames(path, 10, strategy="uniform")
    diverse = sample_frames(path, 10, strategy="diverse", seed=0)
    assert static_picks(uniform) == 8
    assert static_picks(diverse) <= 2
    assert len({f.index for f in diverse}) == 10
    assert [f.time for f in diverse] == sorted(f.time for f in diverse)
    again = sample_frames(path, 10, strategy="diverse", seed=0)
    assert [f.index for f in again] == [f.index for f in diverse]


def test_farthest_point_order_prefers_far_points() -> None:
    points = np.array([[0.0], [0.1], [10.0], [5.0], [0.2]], np.float32)
    assert sample_module.farthest_point_order(points, 3, 0) == [0, 2, 3]
    dupes = np.zeros((6, 2), np.float32)
    assert sorted(sample_module.farthest_point_order(dupes, 3, 0)) == [0, 1, 3]


def test_quotas_split_by_duration() -> None:
    assert sample_module._quotas([10.0, 30.0], 8) == [2, 6]
    assert sample_module._quotas([1.0, 1000.0, 1.0], 3) == [1, 1, 1]
    assert sum(sample_module._quotas([3.0, 7.0, 0.0], 11)) == 11
    assert sample_module._quotas([1.0, 100.0], 1) == [0, 1]


def test_several_videos_share_n_in_order(tmp_path: Path) -> None:
    write_video(tmp_path / "a.mp4", numbered_frames(30))   # 1 s
    write_video(tmp_path / "b.mp4", numbered_frames(90))   # 3 s
    frames = sample_frames(sorted(tmp_path.glob("*.mp4")), 8)
    sources = [Path(f.source).name for f in frames]
    assert sources == ["a.mp4"] * 2 + ["b.mp4"] * 6
    for f in frames:
        assert number_of(f.image) == f.index


def test_sampling_rejects_bad_arguments(long_clip: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="strategy"):
        sample_frames(long_clip, 4, strategy="random")
    with pytest.raises(ValueError, match="positive"):
        sample_frames(long_clip, 0)
    with pytest.raises(InvalidVideoError, match="needs video files"):
        sample_frames("rtsp://127.0.0.1:9/x", 4)
    with pytest.raises(InvalidVideoError, match="no such file"):
        sample_frames(tmp_path / "missing.mp4", 4)


def test_progress_reports_to_the_callback_and_draws_nothing(
        capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[tuple[str, int, int]] = []
    with Progress(4, "sampling", lambda *report: seen.append(report)) as bar:
        for _ in range(4):
            bar.advance()
    with Progress(None, "decoding", lambda *report: seen.append(report)) as bar:
        bar.advance(2)
    with Progress(4, "silent", None) as bar:
        bar.advance(4)
    assert seen == [("sampling", 1, 4), ("sampling", 2, 4), ("sampling", 3, 4),
                    ("sampling", 4, 4), ("decoding", 2, 0)]
    assert capsys.readouterr() == ("", "")


# ---- calibration sets ----------------------------------------------------------------------

def test_calibration_set_round_trip(tmp_path: Path, long_clip: Path) -> None:
    other = tmp_path / "other.mp4"
    write_video(other, numbered_frames(30, w=32, h=32))
    frames = sample_frames([long_clip, other], 6)
    manifest_path = save_calibration_set(frames, tmp_path / "calib", metadata={"seed": 0})
    manifest = json.loads(manifest_path.read_text())
    assert manifest["count"] == 6 and manifest["metadata"] == {"seed": 0}
    assert len(manifest["shards"]) == 2  # one per frame shape
    assert {s["source"] for s in manifest["sources"]} == {str(long_clip), str(other)}
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"])
    loaded = load_calibration_set(tmp_path / "calib", verify_frames=True)
    assert [(f.source, f.index, f.time, f.pts, f.time_base) for f in loaded] == [
        (f.source, f.index, f.time, f.pts, f.time_base) for f in frames]
    for a, b in zip(loaded, frames, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        assert not a.image.flags.writeable  # memory-mapped, read-only


def test_resaving_replaces_the_set_and_removes_stale_shards(tmp_path: Path, long_clip: Path) -> None:
    first = sample_frames(long_clip, 4)
    save_calibration_set(first, tmp_path)
    second = sample_frames(long_clip, 2)
    save_calibration_set(second, tmp_path)
    assert [f.index for f in load_calibration_set(tmp_path)] == [f.index for f in second]
    assert len(list(tmp_path.glob("shard-*.npy"))) == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_damaged_calibration_sets_are_reported(tmp_path: Path, long_clip: Path) -> None:
    with pytest.raises(InvalidCalibrationInput, match=r"manifest\.json is missing"):
        load_calibration_set(tmp_path)
    save_calibration_set(sample_frames(long_clip, 2), tmp_path)
    shard = next(tmp_path.glob("shard-*.npy"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(InvalidCalibrationInput, match="does not match its SHA-256"):
        load_calibration_set(tmp_path)
    shard.unlink()
    with pytest.raises(InvalidCalibrationInput, match="is missing"):
        load_calibration_set(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InvalidCalibrationInput, match="not valid JSON"):
        load_calibration_set(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "xinfer-stream/calibration-set",
                                                        "version": 1, "shards": [{"file": "../x"}],
                                                        "frames": []}))
    with pytest.raises(InvalidCalibrationInput, match=r"lacks a valid 'file'|not a file in the set"):
        load_calibration_set(tmp_path)


def test_saving_rejects_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(InvalidCalibrationInput, match="empty"):
        save_calibration_set([], tmp_path)
    bad = SampledFrame(source="x", index=0, time=0.0, image=np.zeros((4, 4), np.uint8))
    with pytest.raises(InvalidCalibrationInput, match="RGB uint8"):
        save_calibration_set([bad], tmp_path)


# ---- real clips (issue 3 acceptance) -------------------------------------------------------

@pytest.mark.parametrize("name", ["car-detection.mp4", "bottle-detection.mp4", "walk.mkv",
                                  "people-detection.gif", "box.mp4", "cup.mp4"])
def test_real_clips_sample_16_covering_frames(name: str) -> None:
    path = shared(f"video/{name}")
    with open_source(path, width=16, height=16) as source:
        truth = {f.pts: f.index for f in source}
    duration = max(t for t in truth if t is not None) + 1 / 30
    frames = sample_frames(path, 16)
    check_cover(frames, 16, duration)
    for f in frames:  # each pick is the frame open_source numbers the same way
        assert truth[f.time] == f.index


def test_walk_mkv_with_one_keyframe_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = DecodeCounter(monkeypatch)
    frames = sample_frames(shared("video/walk.mkv"), 16)
    assert len(frames) == 16
    assert counter.decoded <= 89 and counter.seeks <= 1


def test_more_than_a_real_clip_has(recwarn: pytest.WarningsRecorder) -> None:
    with pytest.warns(SamplingWarning, match="only 89"):
        frames = sample_frames(shared("video/walk.mkv"), 100)
    assert [f.index for f in frames] == list(range(89))
    with pytest.warns(SamplingWarning, match="only 23"):
        assert len(sample_frames(shared("video/people-detection.gif"), 30)) == 23


def test_sample_command_writes_a_set(tmp_path: Path, long_clip: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from xinfer_stream.cli import _sample

    parser = argparse.ArgumentParser()
    _sample.add_parser(parser.add_subparsers())
    args = parser.parse_args(["sample", str(long_clip), "-n", "3", "--strategy", "diverse",
                              "-o", str(tmp_path / "set")])
    assert args.func(args) == 0
    assert "wrote 3 frames from 1 video(s)" in capsys.readouterr().out
    loaded = load_calibration_set(tmp_path / "set")
    assert len(loaded) == 3
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert manifest["metadata"]["strategy"] == "diverse"


# ---- the manifest parser, fuzzed: a damaged set is an error, never a crash ------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8)


def shard_records(name: str, sha: str) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({
        "file": st.sampled_from([name, "../escape.npy", "shard-missing.npy", "x"]) | json_values,
        "sha256": st.sampled_from([sha, "0" * 64]) | json_values,
        "frames": st.integers(-1, 3) | json_values})


frame_records = st.fixed_dictionaries({
    "source": st.text(max_size=5) | json_values, "index": st.integers() | json_values,
    "time": st.floats(allow_nan=False) | st.integers() | json_values,
    "pts": json_values, "time_base": st.sampled_from(["1/30", "1/0", "x", None]) | json_values,
    "shard": st.integers(-1, 2) | json_values, "row": st.integers(-1, 3) | json_values,
    "sha256": st.text(max_size=4) | json_values})


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_manifest_parser_never_crashes(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shard = root / "shard-good.npy"
        np.save(shard, np.zeros((2, 4, 4, 3), np.uint8))
        sha = sha256_file(shard)
        manifest = data.draw(st.fixed_dictionaries({
            "format": st.sampled_from(["xinfer-stream/calibration-set"]) | json_values,
            "version": st.sampled_from([1]) | json_values,
            "count": st.integers(0, 3) | json_values,
            "shards": st.lists(shard_records(shard.name, sha), max_size=2) | json_values,
            "frames": st.lists(frame_records, max_size=3) | json_values}) | json_values)
        (root / "manifest.json").write_text(json.dumps(manifest))
        try:
            frames = load_calibration_set(root, verify_frames=data.draw(st.booleans()))
        except InvalidCalibrationInput:
            return
        assert all(f.image.shape == (4, 4, 3) for f in frames)
