"""Live sources through the whole runtime, against real servers on loopback started by the tests.

tests/test_video_live.py covers the source itself over HTTP (kill and restart, a server that
never comes back, open timeouts). Here the same outages go through ``engine.stream`` (results
resume; the outage shows in the stream's statistics; ``BrokenStreamError`` reaches the ``async
for`` and the CLI prints one line), plus what that file does not try:

- a UDP MPEG-TS camera (a sender thread, paced in real time) that goes silent and comes back:
  FFmpeg's read timeout notices, the source reconnects;
- an HTTP server that stalls without closing the connection (the read timeout, not an EOF, must
  end the wait), then refuses new connections for a while (the open timeout), then recovers.

Servers are pure Python (no ffmpeg binary). RTSP, against GStreamer's RTSP server, is in
tests/test_reliability_rtsp.py. Every wait in these tests is bounded, and so is every test.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import xinfer_stream as xs
from xinfer_stream.cli import main
from xinfer_stream.video import Reconnect, open_source
from xinfer_stream.video._write import write_video

from .test_cli import tiny_classifier
from .test_runtime import FakeBackend

pytestmark = pytest.mark.slow

PRE = xs.Preprocess(size=(8, 8))
FPS = 30
CHUNK = 188 * 7   # MPEG-TS packets per write / datagram


@pytest.fixture(scope="module")
def ts_data(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("live") / "clip.ts"
    rng = np.random.default_rng(0)
    write_video(path, [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(FPS)],
                fps=FPS, gop=FPS // 2, format="mpegts")
    return path.read_bytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("xinfer")]


class TsServer:
    """HTTP MPEG-TS at one second a loop, looping, no Content-Length (a live stream to FFmpeg).

    ``stall()``: every connection stops sending but stays open, and new ones are held too;
    ``resume()`` ends that. ``kill()``: drop every client and stop listening.
    """

    def __init__(self, data: bytes, port: int = 0) -> None:
        self.data = data
        self.delay = CHUNK / len(data)
        self.connections = 0
        self._stop = threading.Event()
        self._stalled = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.connections += 1
                while server._stalled.is_set() and not server._stop.is_set():
                    time.sleep(0.01)   # accepted, then silence
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()
                try:
                    while not server._stop.is_set():
                        for start in range(0, len(server.data), CHUNK):
                            while server._stalled.is_set() and not server._stop.is_set():
                                time.sleep(0.01)
                            if server._stop.is_set():
                                return
                            self.wfile.write(server.data[start:start + CHUNK])
                            time.sleep(server.delay)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="test-ts-server")
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live.ts"

    def stall(self) -> None:
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def kill(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class UdpCamera:
    """Sends the MPEG-TS clip as UDP datagrams to 127.0.0.1:port in real time, looping;
    ``silence()`` stops sending (the camera drops), ``speak()`` starts again."""

    def __init__(self, data: bytes, port: int) -> None:
        self.data = data
        self.port = port
        self.delay = CHUNK / len(data)
        self._quiet = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._send, name="test-udp-camera")
        self.thread.start()

    def _send(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not self._stop.is_set():
                for start in range(0, len(self.data), CHUNK):
                    if self._stop.wait(self.delay):
                        return
                    if not self._quiet.is_set():
                        sock.sendto(self.data[start:start + CHUNK], ("127.0.0.1", self.port))

    def silence(self) -> None:
        self._quiet.set()

    def speak(self) -> None:
        self._quiet.clear()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)


@pytest.fixture
def server(ts_data: bytes) -> Iterator[TsServer]:
    live = TsServer(ts_data)
    yield live
    live.kill()


async def take(results: xs.ResultStream, n: int, within: float = 15.0) -> list[xs.Result]:
    """The next ``n`` results, or TimeoutError after ``within`` seconds."""
    async def collect() -> list[xs.Result]:
        got: list[xs.Result] = []
        async for r in results:
            got.append(r)
            if len(got) == n:
                break
        return got

    return await asyncio.wait_for(collect(), within)


async def after_reconnect(results: xs.ResultStream, n: int, within: float = 15.0) -> list[xs.Result]:
    """``n`` results decoded after the source reconnected (the queues still hold frames decoded
    before the outage: those are skipped)."""
    async def collect() -> list[xs.Result]:
        got: list[xs.Result] = []
        async for r in results:
            if results.statistics().source.reconnects >= 1:
                got.append(r)
                if len(got) == n:
                    break
        return got

    return await asyncio.wait_for(collect(), within)


# -- outages survived -------------------------------------------------------------------------
def test_http_server_killed_and_restarted_mid_stream(ts_data: bytes) -> None:
    first = TsServer(ts_data)
    port = first.port
    budget = Reconnect(attempts=10, initial_delay=0.2, max_delay=0.5)
    second: TsServer | None = None

    async def main() -> tuple[list[xs.Result], list[xs.Result], xs.StreamStatistics]:
        nonlocal second
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            async with engine.stream(first.url, timeout=(2.0, 2.0), reconnect=budget) as results:
                before = await take(results, 10)
                first.kill()
                await asyncio.sleep(1.0)             # an outage of a second or more
                second = TsServer(ts_data, port=port)
                after = await after_reconnect(results, 10)
                stats = results.statistics()
        return before, after, stats

    try:
        before, after, stats = asyncio.run(main())
    finally:
        first.kill()
        if second is not None:
            second.kill()
    source = stats.source
    assert source.reconnects == 1 and source.outages == 1 and source.outage_seconds >= 0.8
    indices = [r.frame_index for r in before + after]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)  # numbering goes on
    assert second is not None and second.connections >= 1
    assert our_threads() == []


def test_udp_camera_goes_silent_and_comes_back() -> None:
    port = free_port()
    camera = UdpCamera(ts_data_for_udp(), port)
    budget = Reconnect(attempts=10, initial_delay=0.2, max_delay=0.5)

    async def main() -> tuple[list[xs.Result], list[xs.Result], xs.StreamStatistics, float]:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            # Policy "latest" (the live default): the decoder keeps reading while the consumer
            # sleeps, so it is the one to meet the silence.
            async with engine.stream(f"udp://127.0.0.1:{port}", timeout=(3.0, 1.0),
                                     reconnect=budget) as results:
                before = await take(results, 15)
                camera.silence()
                silent_at = time.monotonic()
                await asyncio.sleep(2.5)              # longer than the 1 s read timeout
                camera.speak()
                after = await after_reconnect(results, 15)
                waited = time.monotonic() - silent_at
                stats = results.statistics()
        return before, after, stats, waited

    try:
        before, after, stats, waited = asyncio.run(main())
    finally:
        camera.stop()
    source = stats.source
    assert source.outages == 1 and source.reconnects == 1
    assert 1.0 <= source.outage_seconds <= waited
    assert [r.frame_index for r in before + after] == sorted(r.frame_index for r in before + after)
    assert our_threads() == []


_UDP_DATA: list[bytes] = []


def ts_data_for_udp() -> bytes:
    """The clip as MPEG-TS, made once (outside the fixture so the sender can start first)."""
    if not _UDP_DATA:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "clip.ts"
            rng = np.random.default_rng(1)
            write_video(path, [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(FPS)],
                        fps=FPS, gop=FPS // 2, format="mpegts")
            _UDP_DATA.append(path.read_bytes())
    return _UDP_DATA[0]


def test_a_stalled_server_is_timed_out_and_reconnected(server: TsServer) -> None:
    """The server stops sending but keeps the connection open, then holds new connections
    silent too: only timeouts can end those waits. When it recovers, so does the stream."""
    budget = Reconnect(attempts=20, initial_delay=0.2, max_delay=0.5)

    async def main() -> tuple[int, xs.StreamStatistics]:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            async with engine.stream(server.url, timeout=(1.0, 1.0), reconnect=budget) as results:
                await take(results, 10)
                server.stall()
                await asyncio.sleep(3.0)      # a read timeout, then open timeouts
                server.resume()
                after = await after_reconnect(results, 10)
                stats = results.statistics()
        return len(after), stats

    count, stats = asyncio.run(main())
    source = stats.source
    assert count == 10 and source.reconnects >= 1 and source.outages == source.reconnects
    assert 0.5 <= source.outage_seconds <= 3.5   # within the 3 s stall, timeouts included
    assert server.connections >= 2


# -- outages not survived ---------------------------------------------------------------------
def killed_for_good(url: str, kill: Callable[[], None]) -> float:
    """Stream ``url`` with a 3-attempt retry budget, ``kill()`` the server after 5 results, and
    check the stream ends in ``BrokenStreamError`` within 8 s with its outage counted and no
    thread left; returns the seconds from the kill to the error."""
    budget = Reconnect(attempts=3, initial_delay=0.1, max_delay=0.2)

    async def main() -> tuple[int, float, xs.StreamStatistics]:
        async with xs.load(FakeBackend(), preprocess=PRE) as engine:
            results = engine.stream(url, timeout=(1.0, 1.0), reconnect=budget)
            async with results:
                got = len(await take(results, 5))
                kill()
                started = time.monotonic()
                with pytest.raises(xs.BrokenStreamError, match="did not come back after 3 reconnect"):
                    got += len(await take(results, 10_000, within=20.0))
                return got, time.monotonic() - started, results.statistics()

    got, seconds, stats = asyncio.run(main())
    assert got >= 5 and seconds < 8.0
    assert stats.source.outages == 1 and stats.source.reconnects == 0
    assert our_threads() == []
    return seconds


def test_a_server_that_never_returns_breaks_the_stream(server: TsServer) -> None:
    killed_for_good(server.url, server.kill)


def test_the_cli_reports_a_camera_that_never_returns_in_one_line(ts_data: bytes, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]
                                                                 ) -> None:
    """With the default retry budget (5 attempts, 0.5 s doubling to 8 s): about 16 s."""
    model = tiny_classifier(tmp_path / "tiny.onnx")
    PRE.save(tmp_path / "tiny.preprocess.json")
    live = TsServer(ts_data)
    killer = threading.Timer(1.5, live.kill)
    killer.start()
    started = time.monotonic()
    try:
        code = main(["run", str(model), live.url, "--policy", "every"])
    finally:
        killer.join()
        live.kill()
    out, err = capsys.readouterr()
    assert code == 1 and time.monotonic() - started < 40
    assert out.count("frame ") > 10
    err = err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("xinfer-stream: BrokenStreamError:") and live.url in err
    assert "check the camera or server" in err


def test_a_read_timeout_is_not_called_a_damaged_file() -> None:
    port = free_port()
    camera = UdpCamera(ts_data_for_udp(), port)
    try:
        with open_source(f"udp://127.0.0.1:{port}", timeout=(3.0, 1.0), reconnect=False) as source:
            assert source.get(timeout=5) is not None
            camera.silence()
            with pytest.raises(xs.VideoError) as info:
                while source.get(timeout=5) is not None:
                    pass
    finally:
        camera.stop()
    message = str(info.value)
    assert "timeout" in message and "re-copy" not in message
