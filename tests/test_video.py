"""xinfer_stream.video: sources, frames, decode threads (synthetic clips in tmp_path + real clips)."""

from __future__ import annotations

import gc
import inspect
import itertools
import logging
import os
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from xinfer_stream import video
from xinfer_stream._errors import ClosedResourceError, InvalidVideoError, VideoError
from xinfer_stream.video import FrameSource, VideoFrame, open_source
from xinfer_stream.video._write import write_audio_only, write_video

from .census import left_behind, steady
from .conftest import shared

W, H, N = 64, 48, 30


def level_frames(n: int = N, w: int = W, h: int = H) -> list[np.ndarray]:
    """Frame i is flat grey 8*(i % 30)+8: identifiable after lossy coding."""
    return [np.full((h, w, 3), 8 * (i % 30) + 8, np.uint8) for i in range(n)]


def level_of(frame: VideoFrame) -> int:
    return round((float(frame.image[h_mid(frame), :, 0].mean()) - 8) / 8)


def level_of_yuv(frame: VideoFrame) -> int:
    # Limited range: Y = 16 + grey * 219 / 255.
    grey = (float(frame.planes[0].mean()) - 16) * 255 / 219
    return round((grey - 8) / 8)


def h_mid(frame: VideoFrame) -> int:
    return frame.height // 2


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "levels.mp4"
    write_video(path, level_frames(), gop=10)
    return path


def decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("xinfer-decode")]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_all_is_sorted_and_complete() -> None:
    assert video.__all__ == sorted(video.__all__)
    public = {name for name in dir(video) if not name.startswith("_")}
    assert set(video.__all__) <= public
    for name in video.__all__:
        value = getattr(video, name)
        if isinstance(value, int):  # a constant: defined by one of the package's modules
            homes = [m for m in vars(video).values() if inspect.ismodule(m) and name in vars(m)]
            assert homes and all(m.__name__.startswith("xinfer_stream.video") for m in homes)
        else:
            assert value.__module__.startswith("xinfer_stream.video")


def test_frame_source_has_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="open_source"):
        FrameSource(object())  # type: ignore[call-arg]


# ---- a file, every frame -------------------------------------------------------------------

def test_file_yields_every_frame_in_order(clip: Path) -> None:
    with open_source(clip) as source:
        assert not source.is_live and source.policy == "every" and source.source == str(clip)
        frames = list(source)
        stats = source.statistics()
    assert [f.index for f in frames] == list(range(N))
    assert [level_of(f) for f in frames] == list(range(N))
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and pts[0] == 0.0
    assert pts[1] == pytest.approx(1 / 30, abs=1e-3)
    first = frames[0]
    assert first.format == "rgb24" and first.image.shape == (H, W, 3) and first.image.dtype == np.uint8
    assert first.image.flags["C_CONTIGUOUS"] and first.width == W and first.height == H
    assert first.time_base == Fraction(1, 15360) or first.time_base is not None
    assert first.colorspace == "bt601" and first.color_range == "limited"
    assert all(f.decoded_at <= g.decoded_at for f, g in itertools.pairwise(frames))
    assert stats.frames_decoded == stats.frames_delivered == N and stats.drops == 0
    assert source.closed


def test_get_returns_none_at_end_and_raises_after_close(clip: Path) -> None:
    source = open_source(clip)
    for _ in range(N):
        assert source.get(timeout=10) is not None
    assert source.get(timeout=10) is None
    assert source.get(timeout=10) is None
    source.close()
    source.close()  # idempotent
    with pytest.raises(ClosedResourceError):
        source.get()
    with pytest.raises(ClosedResourceError):
        source.start()


class Sink:
    """A ``FrameSource.deliver_to`` sink that records what reaches it; it takes ``room`` frames
    and then waits in ``put`` until closed (``None``: room for all), or refuses after
    ``take`` frames."""

    def __init__(self, room: int | None = None, take: int | None = None) -> None:
        self.levels: list[int] = []
        self.finished: list[BaseException | None] = []
        self.closed = threading.Event()
        self.waiting = threading.Event()
        self.room, self.take = room, take

    def put(self, frame: VideoFrame) -> bool:
        if self.take is not None and len(self.levels) == self.take:
            return False
        if self.room is not None and len(self.levels) == self.room:
            self.waiting.set()
            self.closed.wait(10)
            return False
        self.levels.append(level_of(frame))
        return True

    def finish(self, error: BaseException | None) -> None:
        self.finished.append(error)

    def close(self) -> None:
        self.closed.set()


def test_a_source_can_hand_its_frames_to_a_sink_on_its_decode_thread(clip: Path) -> None:
    before = steady()
    with open_source(clip) as source:
        sink = Sink()
        source.deliver_to(sink)
        with pytest.raises(ValueError, match="deliver_to"):
            source.get()
        with pytest.raises(ValueError, match="once"):
            source.deliver_to(Sink())
        deadline = time.monotonic() + 10
        while not sink.finished and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = source.statistics()
    assert sink.levels == list(range(N)) and sink.finished == [None], "every frame, then the end"
    assert stats.frames_delivered == N and stats.queued == 0
    assert sink.closed.is_set(), "close() tells the sink"
    # A sink that says stop ends decoding there, with one finish.
    with open_source(clip) as source:
        stopping = Sink(take=5)
        source.deliver_to(stopping)
        source._worker.thread.join(10)  # type: ignore[union-attr]
        assert source.statistics().frames_delivered == 5
    assert stopping.levels == list(range(5)) and stopping.finished == [None]
    assert left_behind(before) == []


def test_closing_a_source_unblocks_its_sinks_put(clip: Path) -> None:
    with open_source(clip) as source:
        sink = Sink(room=3)
        source.deliver_to(sink)
        assert sink.waiting.wait(10)
        started = time.monotonic()
    assert time.monotonic() - started < 5, "close() did not wait out the sink's put"
    assert sink.levels == [0, 1, 2] and sink.finished == [None]
    assert not decode_threads()


def test_a_decoding_error_reaches_the_sink_after_the_frames_before_it() -> None:
    frames = [np.zeros((8, 8, 3), np.uint8)] * 3 + [np.zeros((8, 8), np.uint8)]
    with open_source(iter(frames)) as source:
        sink = Sink()
        got: list[int] = []
        sink.put = lambda frame: got.append(frame.index) is None  # type: ignore[method-assign]
        source.deliver_to(sink)
        source._worker.thread.join(10)  # type: ignore[union-attr]
    assert got == [0, 1, 2] and len(sink.finished) == 1
    assert isinstance(sink.finished[0], InvalidVideoError)


def test_a_closed_source_refuses_to_deliver(clip: Path) -> None:
    source = open_source(clip)
    source.close()
    sink = Sink()
    with pytest.raises(ClosedResourceError):
        source.deliver_to(sink)
    assert sink.finished == [], "nothing started, so nothing finishes"
    with open_source(clip) as source:
        assert source.get(timeout=10) is not None
        with pytest.raises(ValueError, match="already"):
            source.deliver_to(sink)


def test_formats_share_the_same_pixels(clip: Path) -> None:
    with open_source(clip, format="yuv420p") as source:
        yuv = source.get()
    with open_source(clip, format="nv12") as source:
        nv12 = source.get()
    with open_source(clip, format="bgr24") as source:
        bgr = source.get()
    with open_source(clip) as source:
        rgb = source.get()
    assert yuv is not None and nv12 is not None and bgr is not None and rgb is not None
    assert [p.shape for p in yuv.planes] == [(H, W), (H // 2, W // 2), (H // 2, W // 2)]
    assert [p.shape for p in nv12.planes] == [(H, W), (H // 2, W)]
    np.testing.assert_array_equal(nv12.planes[0], yuv.planes[0])
    np.testing.assert_array_equal(nv12.planes[1][:, 0::2], yuv.planes[1])
    np.testing.assert_array_equal(nv12.planes[1][:, 1::2], yuv.planes[2])
    np.testing.assert_array_equal(bgr.image, rgb.image[:, :, ::-1])
    with pytest.raises(ValueError, match="no packed image"):
        _ = yuv.image
    # Limited-range bt601 grey 8 (frame 0) is Y = 16 + 8 * 219/255 ~ 23.
    assert abs(int(yuv.planes[0].mean()) - 23) <= 2
    assert yuv.nbytes == W * H * 3 // 2


def test_planes_drop_the_row_padding(tmp_path: Path) -> None:
    # 100 pixels wide: FFmpeg pads each row (line_size > width); planes must come back unpadded.
    path = tmp_path / "wide.mkv"
    rng = np.random.default_rng(1)
    write_video(path, [rng.integers(0, 256, (36, 100, 3), np.uint8) for _ in range(3)],
                codec="ffv1", pix_fmt="yuv420p")
    with av.open(str(path)) as container:
        ref = next(container.decode(video=0))
        assert ref.planes[0].line_size > 100
        stacked = ref.to_ndarray(format="yuv420p")  # (H * 3/2, W): Y, then U and V rows
    with open_source(path, format="yuv420p") as source:
        frame = source.get()
    assert frame is not None
    y, u, v = frame.planes
    assert y.shape == (36, 100) and u.shape == (18, 50) and all(p.flags["C_CONTIGUOUS"] for p in frame.planes)
    np.testing.assert_array_equal(y, stacked[:36])
    np.testing.assert_array_equal(u.reshape(-1), stacked[36:45].reshape(-1))
    np.testing.assert_array_equal(v.reshape(-1), stacked[45:54].reshape(-1))


def test_raw_planes_outlive_the_decoder_and_are_read_only(tmp_path: Path) -> None:
    clip = tmp_path / "w128.mp4"  # 128 wide: FFmpeg's rows are unpadded, planes are views
    write_video(clip, level_frames(w=128))
    with open_source(clip, format="yuv420p") as source:
        kept = list(source)  # the decoder and its container are closed after this block
    with open_source(clip, format="yuv420p") as source:
        again = list(source)
    for a, b in zip(kept, again, strict=True):
        for pa, pb in zip(a.planes, b.planes, strict=True):
            np.testing.assert_array_equal(pa, pb)
            assert pa.flags["C_CONTIGUOUS"]
    assert [level_of_yuv(f) for f in kept] == list(range(N))
    y = kept[0].planes[0]
    assert not any(p.flags.writeable for p in kept[0].planes)  # the decoder's own buffers
    with pytest.raises(ValueError, match="read-only"):
        y[0, 0] = 1
    with open_source(clip) as source:
        rgb = source.get()
    assert rgb is not None and rgb.image.flags.writeable  # swscale's output is the caller's


def test_resize_happens_in_swscale(clip: Path) -> None:
    with open_source(clip, width=32, height=24) as source:
        frames = list(source)
    assert {f.image.shape for f in frames} == {(24, 32, 3)}
    assert [level_of(f) for f in frames] == list(range(N))
    with pytest.raises(ValueError, match="both width and height"):
        open_source(clip, width=32)
    with open_source(clip, width=32, height=24, interpolation="AREA") as source:
        assert [level_of(f) for f in source] == list(range(N))
    with pytest.raises(ValueError, match="interpolation"):
        open_source(clip, width=32, height=24, interpolation="nearest")


def test_threads_option_decodes_the_same_frames(clip: Path) -> None:
    with open_source(clip, threads=1) as one, open_source(clip, threads=2) as two:
        a, b = list(one), list(two)
    assert len(a) == len(b) == N
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.image, y.image)


# ---- several files, directories, globs ------------------------------------------------------

def test_several_files_play_in_order_with_index_restarting(tmp_path: Path) -> None:
    write_video(tmp_path / "a.mp4", level_frames(5))
    write_video(tmp_path / "b.mkv", level_frames(7)[::-1])
    expected = [(str(tmp_path / "a.mp4"), i, i) for i in range(5)] + [
        (str(tmp_path / "b.mkv"), i, 6 - i) for i in range(7)]
    for source_arg in ([tmp_path / "a.mp4", tmp_path / "b.mkv"], tmp_path, str(tmp_path / "*.m*")):
        with open_source(source_arg) as source:
            got = [(f.source, f.index, level_of(f)) for f in source]
        assert got == expected, source_arg


def test_a_bad_file_in_a_list_fails_at_open(tmp_path: Path, clip: Path) -> None:
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(InvalidVideoError, match=r"notes\.mp4"):
        open_source([clip, tmp_path / "notes.mp4"])


# ---- numpy frames ---------------------------------------------------------------------------

def test_numpy_frames_in_every_format() -> None:
    frames = level_frames(4)
    with open_source(frames) as source:
        got = list(source)
    assert [f.source for f in got] == ["<frames>"] * 4 and [f.pts for f in got] == [None] * 4
    np.testing.assert_array_equal(got[2].image, frames[2])
    with open_source(np.stack(frames), format="nv12") as source:
        nv12 = list(source)
    assert [p.shape for p in nv12[0].planes] == [(H, W), (H // 2, W)]
    with open_source(iter(frames), format="bgr24", width=32, height=16) as source:
        small = list(source)
    assert small[0].image.shape == (16, 32, 3)


def test_numpy_frames_are_checked() -> None:
    with pytest.raises(InvalidVideoError, match="uint8"):
        open_source(np.zeros((2, 8, 8, 3), np.float32))
    with open_source([np.zeros((8, 8), np.uint8)]) as source:
        with pytest.raises(InvalidVideoError, match=r"frame 0 .*\(H, W, 3\)"):
            source.get(timeout=10)
    with pytest.raises(InvalidVideoError, match="cannot open 42"):
        open_source(42)


def test_an_iterable_that_raises_reaches_the_consumer_chained() -> None:
    def frames():  # type: ignore[no-untyped-def]
        yield np.zeros((8, 8, 3), np.uint8)
        raise RuntimeError("camera unplugged")

    with open_source(frames()) as source:
        assert source.get(timeout=10) is not None
        with pytest.raises(VideoError, match="frame 1") as info:
            source.get(timeout=10)
        assert isinstance(info.value.__cause__, RuntimeError)
        assert source.get(timeout=10) is None


def test_get_times_out_and_close_unblocks_the_producer() -> None:
    release = threading.Event()

    def frames():  # type: ignore[no-untyped-def]
        release.wait(10)
        yield np.zeros((8, 8, 3), np.uint8)

    source = open_source(frames())
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        source.get(timeout=0.05)
    assert time.monotonic() - started < 2
    release.set()
    source.close()
    assert not decode_threads()


# ---- policies and backpressure ----------------------------------------------------------------

def test_every_policy_backpressures_the_decoder(tmp_path: Path) -> None:
    path = tmp_path / "long.mp4"
    write_video(path, level_frames(60))
    with open_source(path, queue_size=2) as source:
        source.start()
        time.sleep(0.5)
        stats = source.statistics()
        assert stats.queued == 2 and stats.frames_decoded <= 3 and stats.drops == 0
        assert len(list(source)) == 60


def test_latest_policy_keeps_the_newest_and_counts_drops(tmp_path: Path) -> None:
    path = tmp_path / "long.mp4"
    write_video(path, level_frames(60))
    with open_source(path, policy="latest") as source:
        assert source.policy == "latest"
        got = []
        while (frame := source.get(timeout=10)) is not None:
            got.append(frame)
            time.sleep(0.02)  # a slow consumer
        stats = source.statistics()
    indices = [f.index for f in got]
    assert indices == sorted(indices) and indices[-1] == 59 and len(got) < 60
    assert stats.drops == 60 - len(got) == stats.frames_decoded - stats.frames_delivered


def test_bad_policy_and_format_are_rejected(clip: Path) -> None:
    with pytest.raises(ValueError, match="policy"):
        open_source(clip, policy="newest")
    with pytest.raises(ValueError, match="format"):
        open_source(clip, format="rgba")
    with pytest.raises(ValueError, match="queue_size"):
        open_source(clip, queue_size=0)


# ---- lifetime: threads, file descriptors, warnings -------------------------------------------

def test_early_exit_leaves_no_thread_and_no_descriptor(clip: Path) -> None:
    before = steady()
    for _ in range(3):
        with open_source(clip) as source:
            for i, _frame in enumerate(source):
                if i == 3:
                    break
    assert not decode_threads()
    assert left_behind(before) == []  # FFmpeg's codec threads and the file are gone too


def test_close_before_start_closes_the_container(clip: Path) -> None:
    fds = open_fds()
    source = open_source(clip)
    assert open_fds() > fds  # opened eagerly
    source.close()
    assert open_fds() == fds and not decode_threads()


def test_close_from_another_thread_unblocks_get() -> None:
    release = threading.Event()

    def frames():  # type: ignore[no-untyped-def]
        while not release.wait(0.01):
            pass
        yield np.zeros((8, 8, 3), np.uint8)

    source = open_source(frames())
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            source.get()
        except BaseException as exc:  # noqa: BLE001 (recorded for the assertion below)
            errors.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(0.1)
    closer = threading.Thread(target=source.close)
    closer.start()
    time.sleep(0.1)
    release.set()
    closer.join(10)
    consumer.join(10)
    assert not consumer.is_alive() and not closer.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ClosedResourceError)
    assert not decode_threads()


def test_collected_open_source_warns_and_is_closed(clip: Path) -> None:
    source = open_source(clip)
    source.get()
    with pytest.warns(ResourceWarning, match="unclosed FrameSource"):
        del source  # no reference cycle: collected right here
    gc.collect()
    assert not decode_threads()


# ---- bad input --------------------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidVideoError, match=r"missing\.mp4.*no such file"):
        open_source(tmp_path / "missing.mp4")


def test_directory_without_videos(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(InvalidVideoError, match="holds no file ending in"):
        open_source(tmp_path)


def test_glob_matching_nothing(tmp_path: Path) -> None:
    with pytest.raises(InvalidVideoError, match="matches no file"):
        open_source(str(tmp_path / "*.mp4"))


def test_missing_camera_device() -> None:
    with pytest.raises(InvalidVideoError, match=r"camera '/dev/video\d+'.*check the device exists"):
        open_source("/dev/video97")


def test_zero_length_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(InvalidVideoError, match=r"empty\.mp4.*empty \(0 bytes\)"):
        open_source(tmp_path / "empty.mp4")


def test_text_renamed_mp4(tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("these are my notes, not a video\n" * 10)
    with pytest.raises(InvalidVideoError, match=r"notes\.mp4.* as a video") as info:
        open_source(tmp_path / "notes.mp4")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value.__cause__, av.error.FFmpegError)


def test_audio_only_file(tmp_path: Path) -> None:
    write_audio_only(tmp_path / "tone.m4a")
    with pytest.raises(InvalidVideoError, match=r"tone\.m4a.*no video stream \(found 1 audio\)"):
        open_source(tmp_path / "tone.m4a")


def test_truncated_mp4_with_index_first_gives_frames_then_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.mp4"
    write_video(path, level_frames(), container_options={"movflags": "faststart"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with open_source(path) as source:
        got = []
        with pytest.raises(VideoError, match=r"cut\.mp4.*truncated"):
            while (frame := source.get(timeout=10)) is not None:
                got.append(frame)
    assert 5 < len(got) < N
    assert [level_of(f) for f in got] == list(range(len(got)))


STRICT = {"err_detect": "aggressive+explode"}  # stop at damage instead of concealing it


def test_decoder_error_gives_the_frames_before_it_then_a_chained_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "damaged.mp4"
    write_video(path, [rng.integers(0, 256, (H, W, 3), np.uint8) for _ in range(N)], gop=10,
                container_options={"movflags": "faststart"})
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 400):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with open_source(path, decoder_options=STRICT) as source:
        got = []
        with pytest.raises(VideoError) as info:
            while (frame := source.get(timeout=10)) is not None:
                got.append(frame)
        assert source.get(timeout=10) is None  # the error is reported once, then the end
    assert 5 < len(got) < N and [f.index for f in got] == list(range(len(got)))
    message = str(info.value)
    assert "damaged.mp4" in message and f"after frame {len(got) - 1}" in message
    assert isinstance(info.value.__cause__, av.error.InvalidDataError)
    with open_source(path) as source:  # FFmpeg's default: conceal and go on
        assert len(list(source)) == N


def test_truncated_mp4_with_index_last_fails_at_open(tmp_path: Path, clip: Path) -> None:
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidVideoError, match=r"cut\.mp4.*truncated or damaged"):
        open_source(cut)


def test_resolution_change_mid_stream(tmp_path: Path) -> None:
    # Two encoders, one MPEG-TS stream: the second segment's SPS announces the new size.
    path = tmp_path / "resize.ts"
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        pts = 0
        for w, h in ((64, 48), (96, 64)):
            encoder = av.CodecContext.create("libx264", "w")
            encoder.width, encoder.height, encoder.pix_fmt = w, h, "yuv420p"
            encoder.time_base = Fraction(1, 30)
            encoder.options = {"preset": "ultrafast"}
            for i in range(10):
                frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 20 * i, np.uint8), format="rgb24")
                frame.pts = i
                for packet in encoder.encode(frame):
                    packet.stream = stream
                    packet.pts = packet.dts = pts
                    packet.time_base = Fraction(1, 30)
                    pts += 1
                    out.mux(packet)
            for packet in encoder.encode(None):
                packet.stream = stream
                packet.pts = packet.dts = pts
                packet.time_base = Fraction(1, 30)
                pts += 1
                out.mux(packet)
    with open_source(path) as source:
        sizes = [(f.width, f.height, f.image.shape) for f in source]
    assert sizes[0] == (64, 48, (48, 64, 3)) and sizes[-1] == (96, 64, (64, 96, 3))
    assert len(sizes) == 20
    with open_source(path, format="nv12", width=64, height=48) as source:
        assert {f.planes[1].shape for f in source} == {(24, 64)}


def test_colour_metadata_defaults_by_resolution_and_matches_swscale(tmp_path: Path) -> None:
    # 1280x720 with no colour tags: bt709 by default, and the RGB must be converted with it.
    path = tmp_path / "hd.mp4"
    rng = np.random.default_rng(0)
    write_video(path, [rng.integers(0, 256, (720, 1280, 3), np.uint8)])
    with open_source(path, format="yuv420p") as source:
        yuv = source.get()
    with open_source(path) as source:
        rgb = source.get()
    assert yuv is not None and rgb is not None
    assert (yuv.colorspace, yuv.color_range) == ("bt709", "limited")
    with av.open(str(path)) as container:
        ref = next(container.decode(video=0))
        as709 = ref.to_ndarray(format="rgb24", src_colorspace="ITU709", src_color_range="MPEG")
        as601 = ref.to_ndarray(format="rgb24", src_colorspace="ITU601", src_color_range="MPEG")
    np.testing.assert_array_equal(rgb.image, as709)
    assert not np.array_equal(rgb.image, as601)


def test_hardware_decode_falls_back_to_software_with_a_reason(clip: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xinfer_stream.video"):
        with open_source(clip, hwaccel="cuda") as source:
            frames = list(source)
            stats = source.statistics()
    assert len(frames) == N
    # Either NVDEC worked (a GPU is present) or the fallback said why it was not used; the
    # statistics say which.
    fell_back = [r for r in caplog.records if "hardware decode" in r.getMessage()]
    assert not fell_back or "software" in fell_back[0].getMessage()
    assert stats.frames_decoded == N
    assert stats.frames_decoded_on_device == (0 if fell_back else N)


def test_frames_kept_on_the_gpu_need_cuda_nv12_at_the_decoded_size(clip: Path) -> None:
    with pytest.raises(ValueError, match="device_frames=True keeps NVDEC's frames on the GPU: it "
                                         "needs hwaccel='cuda', got hwaccel=None"):
        open_source(clip, format="nv12", device_frames=True)
    with pytest.raises(ValueError, match="pass format='nv12' with device_frames=True, not 'rgb24'"):
        open_source(clip, hwaccel="cuda", device_frames=True)
    with pytest.raises(ValueError, match="keep their decoded size"):
        open_source(clip, format="nv12", hwaccel="cuda", device_frames=True, width=64, height=48)
    with pytest.raises(ValueError, match="an iterable of arrays is decoded already"):
        open_source([np.zeros((8, 8, 3), np.uint8)], format="nv12", hwaccel="cuda",
                    device_frames=True)
    with pytest.raises(ValueError, match="hwaccel_device must be a device ordinal"):
        open_source(clip, hwaccel="cuda", hwaccel_device=-1)
    assert not decode_threads()


def test_frames_kept_on_the_gpu_arrive_as_host_frames_when_nvdec_is_missing(
        clip: Path, caplog: pytest.LogCaptureFixture) -> None:
    from xinfer_stream.cuda import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("a CUDA device is present, so NVDEC may decode (tests/test_gpu_runtime.py "
                    "checks the frames it keeps on the GPU)")
    with caplog.at_level(logging.WARNING, logger="xinfer_stream.video"):
        with open_source(clip, format="nv12", hwaccel="cuda", device_frames=True) as source:
            frames = list(source)
    assert len(frames) == N
    assert all(f.device is None and f.format == "nv12" and len(f.planes) == 2 for f in frames)
    assert any("hardware decode 'cuda'" in r.getMessage() and "software" in r.getMessage()
               for r in caplog.records)


# ---- real clips -------------------------------------------------------------------------------

def test_car_detection_yields_all_377_frames_in_order() -> None:
    with open_source(shared("video/car-detection.mp4")) as source:
        frames = [(f.index, f.pts) for f in source]
    assert [i for i, _ in frames] == list(range(377))
    pts = [p for _, p in frames]
    assert all(p is not None for p in pts) and pts == sorted(pts)
    assert pts[-1] == pytest.approx(376 * 0.08)


def test_car_detection_break_after_ten_leaves_no_thread() -> None:
    before = steady()
    with open_source(shared("video/car-detection.mp4"), format="nv12") as source:
        for frame in source:
            if frame.index == 9:
                break
    assert not decode_threads()
    assert [t.name for t in threading.enumerate() if t is not threading.main_thread()
            and t.name.startswith("xinfer")] == []
    assert left_behind(before) == []


def test_megamind_bugy_decodes_what_ffmpeg_can() -> None:
    # The "damaged" AVI (packed B-frames, visibly corrupted blocks) decodes without a decoder
    # error on FFmpeg 7/8 (PyAV 18): its 270 frames all arrive. Its timestamps come from the
    # AVI's decode-order stamps, so they are not monotonic (packed B-frames).
    path = shared("video/Megamind_bugy.avi")
    with open_source(path, format="yuv420p") as source:
        frames = list(source)
    assert [f.index for f in frames] == list(range(270))
    assert {(f.width, f.height) for f in frames} == {(720, 528)}


def test_megamind_bugy_with_strict_error_detection_stops_at_the_damage() -> None:
    with open_source(shared("video/Megamind_bugy.avi"), decoder_options=STRICT) as source:
        got = []
        with pytest.raises(VideoError, match=r"Megamind_bugy\.avi.*failed after frame") as info:
            while (frame := source.get(timeout=10)) is not None:
                got.append(frame)
    assert len(got) >= 1 and isinstance(info.value.__cause__, av.error.FFmpegError)


@pytest.mark.parametrize("name, count", [("walk.mkv", 89), ("people-detection.gif", 23),
                                         ("box.mp4", 455), ("cup.mp4", 217)])
def test_real_clips_decode_completely(name: str, count: int) -> None:
    with open_source(shared(f"video/{name}"), width=64, height=48) as source:
        frames = list(source)
    assert len(frames) == count and frames[-1].index == count - 1
    if name == "walk.mkv":
        assert frames[0].color_range == "full"  # yuvj420p
