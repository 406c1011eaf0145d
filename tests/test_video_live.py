"""Live sources against servers on loopback, all in this process (pure Python, no ffmpeg binary).

The HTTP server streams an MPEG-TS file made with PyAV, paced in real time, looping, with no
Content-Length: to FFmpeg that is a live stream. Tests kill it mid-stream and restart it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from xinfer_stream._errors import BrokenStreamError, VideoError
from xinfer_stream.video import Reconnect, open_source
from xinfer_stream.video._write import write_video

FPS = 30
TS_CHUNK = 188 * 7


class LiveTsServer:
    """Serve ``data`` (MPEG-TS) at http://127.0.0.1:port/live.ts, looping, at ``seconds`` a loop."""

    def __init__(self, data: bytes, seconds: float, port: int = 0) -> None:
        self.data = data
        self.delay = seconds * TS_CHUNK / len(data)
        self.connections = 0
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    while not server._stop.is_set():
                        for start in range(0, len(server.data), TS_CHUNK):
                            if server._stop.is_set():
                                return
                            self.wfile.write(server.data[start:start + TS_CHUNK])
                            time.sleep(server.delay)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="test-ts-server")
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live.ts"

    def kill(self) -> None:
        """Stop answering and drop every client mid-stream."""
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def ts_data(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("live") / "clip.ts"
    rng = np.random.default_rng(0)
    write_video(path, [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(FPS)],
                fps=FPS, gop=FPS // 2, format="mpegts")
    return path.read_bytes()


@pytest.fixture
def server(ts_data: bytes) -> Iterator[LiveTsServer]:
    live = LiveTsServer(ts_data, seconds=1.0)
    yield live
    live.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def no_decode_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("xinfer-decode")]


def test_refused_connection_fails_fast() -> None:
    url = f"http://127.0.0.1:{free_port()}/live.ts"
    started = time.monotonic()
    with pytest.raises(VideoError, match=r"127\.0\.0\.1.*connection refused"):
        open_source(url, timeout=(2.0, 2.0))
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("scheme", ["http", "rtsp", "tcp"])
def test_silent_server_times_out_within_the_open_timeout(scheme: str) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)  # accepts connections (the kernel does), never says a word
    try:
        url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/stream"
        started = time.monotonic()
        with pytest.raises(VideoError, match=r"no answer within the 0\.5 s open timeout"):
            open_source(url, timeout=(0.5, 0.5))
        assert time.monotonic() - started < 3.0
    finally:
        listener.close()


def test_rtsp_password_is_not_repeated_in_messages() -> None:
    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/cam"
    with pytest.raises(VideoError) as info:
        open_source(url, timeout=(1.0, 1.0))
    assert "hunter2" not in str(info.value) and "admin:***@" in str(info.value)


def test_http_stream_is_live_and_keeps_the_latest_frame(server: LiveTsServer) -> None:
    with open_source(server.url, timeout=(5.0, 5.0)) as source:
        assert source.is_live and source.policy == "latest"
        frames = [source.get(timeout=5.0) for _ in range(10)]
        time.sleep(0.5)  # fall behind: the source keeps only the newest frame
        late = source.get(timeout=5.0)
        stats = source.statistics()
    assert all(f is not None and f.source == server.url for f in frames)
    assert late is not None and late.decoded_at > time.perf_counter() - 1.0
    assert stats.drops >= 5
    assert no_decode_threads()


@pytest.mark.slow
def test_reconnects_after_the_server_restarts(ts_data: bytes) -> None:
    first = LiveTsServer(ts_data, seconds=1.0)
    port = first.port
    budget = Reconnect(attempts=10, initial_delay=0.2, max_delay=0.5)
    with open_source(first.url, timeout=(2.0, 2.0), reconnect=budget, policy="every") as source:
        before = [source.get(timeout=5.0) for _ in range(15)]
        first.kill()
        time.sleep(0.8)  # an outage
        second = LiveTsServer(ts_data, seconds=1.0, port=port)
        try:
            after = []
            deadline = time.monotonic() + 15
            while len(after) < 15 and time.monotonic() < deadline:
                frame = source.get(timeout=5.0)
                assert frame is not None
                if source.statistics().reconnects:
                    after.append(frame)
            stats = source.statistics()
        finally:
            second.kill()
    assert all(f is not None for f in before) and len(after) == 15
    assert stats.reconnects == 1 and stats.outages == 1 and stats.outage_seconds >= 0.5
    indices = [f.index for f in before if f is not None] + [f.index for f in after]
    assert indices == sorted(indices)  # numbering continues across the reconnect
    assert second.connections >= 1
    assert no_decode_threads()


@pytest.mark.slow
def test_a_server_that_never_comes_back_breaks_the_stream(ts_data: bytes) -> None:
    live = LiveTsServer(ts_data, seconds=1.0)
    budget = Reconnect(attempts=3, initial_delay=0.1, max_delay=0.2)
    started = None
    with open_source(live.url, timeout=(1.0, 1.0), reconnect=budget) as source:
        assert source.get(timeout=5.0) is not None
        live.kill()
        started = time.monotonic()
        with pytest.raises(BrokenStreamError, match=r"did not come back after 3 reconnect") as info:
            while source.get(timeout=10.0) is not None:
                pass
        stats = source.statistics()
    assert time.monotonic() - started < 8.0
    assert isinstance(info.value.__cause__, VideoError)
    assert stats.outages == 1 and stats.reconnects == 0
    assert no_decode_threads()


def test_without_reconnect_the_first_drop_ends_the_stream(server: LiveTsServer) -> None:
    with open_source(server.url, timeout=(2.0, 2.0), reconnect=False) as source:
        assert source.get(timeout=5.0) is not None
        server.kill()
        deadline = time.monotonic() + 10
        ended = False
        while time.monotonic() < deadline:
            try:
                if source.get(timeout=5.0) is None:
                    ended = True
                    break
            except VideoError:
                ended = True
                break
        assert ended


def test_closing_a_live_source_mid_stream_is_prompt(server: LiveTsServer) -> None:
    source = open_source(server.url, timeout=(2.0, 2.0))
    assert source.get(timeout=5.0) is not None
    started = time.monotonic()
    source.close()
    assert time.monotonic() - started < 2.5  # at most one read timeout
    assert no_decode_threads()


def test_file_served_over_http_with_length_is_not_live(tmp_path: Path, ts_data: bytes) -> None:
    clip = tmp_path / "clip.mp4"
    # Index first: this little server ignores Range requests, so FFmpeg must not need to seek.
    write_video(clip, [np.zeros((48, 64, 3), np.uint8)] * 10,
                container_options={"movflags": "faststart"})
    body = clip.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever)
    thread.start()
    try:
        with open_source(f"http://127.0.0.1:{httpd.server_address[1]}/clip.mp4",
                         timeout=(5.0, 5.0)) as source:
            assert not source.is_live and source.policy == "every"
            assert len(list(source)) == 10
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
