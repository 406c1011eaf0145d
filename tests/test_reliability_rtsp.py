"""RTSP live sources through the whole runtime, against a real RTSP server on loopback.

The server is GStreamer's RTSP server (``tests/rtsp_server.py``), run by the system Python
(``/usr/bin/python3``, which has ``python3-gi``; the project's Python need not) as a subprocess
the tests start, SIGKILL (an outage) or SIGSTOP (a server that hangs) and restart on the same
port. It serves an H.264 clip made here with PyAV, without re-encoding, paced in real time, as
one shared media, on 127.0.0.1 only, RTP interleaved over the RTSP TCP connection (our default
``rtsp_transport=tcp``).

Needs the Debian packages ``python3-gi``, ``gir1.2-gst-rtsp-server-1.0``,
``gstreamer1.0-plugins-base`` and ``gstreamer1.0-plugins-good`` (``.ci/run`` installs them when
missing). Without them these tests skip, naming what is missing, except when the environment
variable ``CI`` is set: then they fail, so CI never skips them silently.

Every wait here is bounded (the server's "ready" line, results, the subprocess's exit), and
every server is killed on every path.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np
import numpy.typing as npt
import pytest

import xinfer_stream as xs
from xinfer_stream.cli import main
from xinfer_stream.video import Reconnect, open_source
from xinfer_stream.video._write import write_video

from .test_cli import tiny_classifier
from .test_reliability_live import after_reconnect, killed_for_good, our_threads, take
from .test_runtime import FakeBackend

pytestmark = pytest.mark.slow

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
PRE = xs.Preprocess(size=(8, 8))
FPS = 30
READY_WITHIN = 20.0   # seconds for the server to print "ready" (gi and GStreamer start slowly)


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail under CI (where the packages must be there)."""
    message = (f"RTSP server unavailable: {reason}; install the Debian packages python3-gi "
               f"gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good")
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: not skipping)")
    pytest.skip(message)


class RtspServer:
    """``tests/rtsp_server.py`` as a subprocess; the constructor returns once it listens."""

    def __init__(self, clip: Path, port: int = 0, mount: str = "/cam") -> None:
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            unavailable(f"{SYSTEM_PYTHON} does not exist")
        self.process = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER_SCRIPT), str(clip), str(port), mount],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, name="test-rtsp-output", daemon=True)
        self._reader.start()
        try:
            self.url = self._wait_ready()
        except BaseException:
            self.kill()
            raise
        self.port = int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + READY_WITHIN
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"the RTSP server printed no 'ready' line within "
                                   f"{READY_WITHIN:g} s; it said {self.output!r}") from None
            if line is None:
                code = self.process.wait(5)
                said = " | ".join(self.output)
                if code == 2:
                    unavailable(said)
                raise RuntimeError(f"the RTSP server exited with status {code}: {said!r}")
            if line.startswith("ready "):
                return line.split(" ", 1)[1]
            self.output.append(line)

    def kill(self) -> None:
        """SIGKILL (clients see the connection drop, as when a camera loses power); idempotent."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is sent, new ones are accepted by the kernel
        and never answered."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


def gradient_frames(count: int) -> Iterator[npt.NDArray[np.uint8]]:
    y, x = np.mgrid[0:48, 0:64]
    for i in range(count):
        v = ((x + y + 2 * i) % 256).astype(np.uint8)
        yield np.stack([v, 255 - v, np.full_like(v, i % 256)], axis=-1)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two minutes of H.264 in mp4 (longer than any test here; the server does not loop)."""
    path = tmp_path_factory.mktemp("rtsp") / "clip.mp4"
    write_video(path, gradient_frames(120 * FPS), fps=FPS, gop=FPS // 2)
    return path


@pytest.fixture
def server(clip: Path) -> Iterator[RtspServer]:
    live = RtspServer(clip)
    yield live
    live.resume()
    live.kill()


def test_the_server_streams_in_real_time(server: RtspServer) -> None:
    """The setup itself: a live source, 30 frames a second, over TCP."""
    with open_source(server.url, timeout=(5.0, 5.0), policy="every") as source:
        assert source.is_live
        first = source.get(timeout=10.0)
        started = time.monotonic()
        frames = [source.get(timeout=5.0) for _ in range(30)]
        seconds = time.monotonic() - started
    assert first is not None and all(f is not None for f in frames)
    assert 0.5 < seconds < 3.0   # paced (not the whole clip at once), not stalled
    assert [f.index for f in frames if f is not None] == list(range(1, 31))


# -- outages survived -------------------------------------------------------------------------
def test_rtsp_server_killed_and_restarted_mid_stream(clip: Path) -> None:
    first = RtspServer(clip)
    budget = Reconnect(attempts=10, initial_delay=0.2, max_delay=0.5)
    second: RtspServer | None = None

    async def run() -> tuple[list[xs.Result], list[xs.Result], xs.StreamStatistics, float]:
        nonlocal second
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            async with engine.stream(first.url, timeout=(2.0, 2.0), reconnect=budget) as results:
                before = await take(results, 10)
                first.kill()
                killed_at = time.monotonic()
                await asyncio.sleep(1.0)             # an outage of a second or more
                second = await asyncio.to_thread(RtspServer, clip, first.port)
                after = await after_reconnect(results, 10, within=20.0)
                waited = time.monotonic() - killed_at
                stats = results.statistics()
        return before, after, stats, waited

    try:
        before, after, stats, waited = asyncio.run(run())
    finally:
        first.kill()
        if second is not None:
            second.kill()
    source = stats.source
    print(f"rtsp kill/restart: outage {source.outage_seconds:.2f} s, {waited:.2f} s from the "
          f"kill to 10 results after it")
    assert source.reconnects == 1 and source.outages == 1
    assert 1.0 <= source.outage_seconds <= waited
    indices = [r.frame_index for r in before + after]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)  # numbering goes on
    assert our_threads() == []


def test_a_hung_rtsp_server_is_timed_out_and_reconnected(server: RtspServer) -> None:
    """SIGSTOP: the connection stays open and silent, new ones are never answered; only the read
    and open timeouts can end those waits. After SIGCONT the stream resumes."""
    budget = Reconnect(attempts=20, initial_delay=0.2, max_delay=0.5)

    async def run() -> tuple[int, xs.StreamStatistics]:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            async with engine.stream(server.url, timeout=(1.0, 1.0), reconnect=budget) as results:
                await take(results, 10)
                server.pause()
                await asyncio.sleep(3.0)      # a read timeout, then open timeouts
                server.resume()
                after = await after_reconnect(results, 10, within=20.0)
                stats = results.statistics()
        return len(after), stats

    count, stats = asyncio.run(run())
    source = stats.source
    print(f"rtsp hung 3 s: reconnects {source.reconnects}, outages {source.outages}, outage "
          f"{source.outage_seconds:.2f} s")
    assert count == 10 and source.reconnects >= 1 and source.outages == source.reconnects
    assert 0.5 <= source.outage_seconds <= 5.0   # within the 3 s hang, timeouts included
    assert our_threads() == []


def test_a_hung_rtsp_server_is_noticed_within_two_read_timeouts(server: RtspServer) -> None:
    """FFmpeg's RTSP demuxer answers the first read timeout with the frame it was holding back
    (the timeout then starts over), so a hang is reported after about two read timeouts."""
    read_s = 0.5
    with open_source(server.url, timeout=(2.0, read_s), reconnect=False, policy="every") as source:
        for _ in range(10):
            assert source.get(timeout=5.0) is not None
        server.pause()
        started = time.monotonic()
        with pytest.raises(xs.VideoError, match="within the read timeout") as info:
            while source.get(timeout=5.0) is not None:
                pass
        seconds = time.monotonic() - started
    print(f"rtsp hang noticed after {seconds:.2f} s (read timeout {read_s:g} s)")
    assert read_s <= seconds < 2 * read_s + 1.0, seconds
    assert "re-copy" not in str(info.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer-decode")]


def test_closing_while_the_rtsp_server_hangs_is_prompt(server: RtspServer) -> None:
    read_s = 1.0
    source = open_source(server.url, timeout=(2.0, read_s), policy="every")
    try:
        for _ in range(5):
            assert source.get(timeout=5.0) is not None
        server.pause()
        time.sleep(0.2)                    # the decode thread is now waiting in FFmpeg's read
    finally:
        started = time.monotonic()
        source.close()
        seconds = time.monotonic() - started
    print(f"rtsp close while hung: {seconds:.2f} s")
    assert seconds < read_s + 1.0, seconds   # at most one read timeout
    assert not [t for t in threading.enumerate() if t.name.startswith("xinfer-decode")]


# -- outages not survived ---------------------------------------------------------------------
def test_an_rtsp_server_that_never_returns_breaks_the_stream(server: RtspServer) -> None:
    seconds = killed_for_good(server.url, server.kill)
    print(f"rtsp killed for good: BrokenStreamError {seconds:.2f} s after the kill")


def test_the_cli_reports_an_rtsp_camera_that_never_returns_in_one_line(
        server: RtspServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the default retry budget (5 attempts, 0.5 s doubling to 8 s): about 16 s."""
    model = tiny_classifier(tmp_path / "tiny.onnx")
    PRE.save(tmp_path / "tiny.preprocess.json")
    killer = threading.Timer(3.0, server.kill)   # opening takes about 1 s (probing)
    killer.start()
    started = time.monotonic()
    try:
        code = main(["run", str(model), server.url, "--policy", "every"])
    finally:
        killer.cancel()
        killer.join()
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    assert code == 1 and seconds < 40, (code, seconds)
    assert out.count("frame ") > 10
    err = err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("xinfer-stream: BrokenStreamError:") and server.url in err
    assert "check the camera or server" in err


def test_missing_packages_skip_or_fail_with_the_reason(tmp_path: Path, clip: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Without gi the server script says so (exit 2); the tests then skip, or fail under CI."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        unavailable(f"{SYSTEM_PYTHON} does not exist")
    (tmp_path / "gi.py").write_text("raise ImportError('No module named gi (test)')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([SYSTEM_PYTHON, str(SERVER_SCRIPT), str(clip), "0", "/x"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2 and "missing: ImportError" in done.stderr, done
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no gi"):
        unavailable("no gi")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no gi.*CI is set"):
        unavailable("no gi")
