"""``run --save`` on a live source: the results' own frames (``images=True``) make the video, so
an RTSP camera (the loopback GStreamer server of tests/test_reliability_rtsp.py) records like a
file; its frame rate is measured from the stream's timestamps, and Ctrl-C, the way a live
recording ends, finishes the video and the JSON lines instead of discarding them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import av
import pytest

from .conftest import REPO
from .test_cli import tiny_classifier
from .test_reliability_rtsp import FPS, RtspServer, clip  # noqa: F401  (clip: a fixture)

pytestmark = pytest.mark.slow


def test_save_records_an_rtsp_camera_until_ctrl_c(tmp_path: Path, clip: Path) -> None:  # noqa: F811
    model = tiny_classifier(tmp_path / "tiny.onnx")
    video, lines, shots = tmp_path / "camera.mp4", tmp_path / "camera.jsonl", tmp_path / "shots"
    server = RtspServer(clip)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "xinfer_stream", "run", str(model), server.url,
             "--size", "8", "8", "--top", "1", "--policy", "every", "--print-every", "1",
             "--save", str(video), "--json", str(lines), "--save-frames", str(shots)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # the header
            for _ in range(45):     # 1.5 s of the camera, drawn and encoded as it comes
                assert proc.stdout.readline().startswith("frame ")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        server.kill()
    assert proc.returncode == 130, err
    assert "xinfer-stream: interrupted" in err
    saved = [line for line in out.splitlines() if line.startswith("saved ")]
    assert len(saved) == 3, out
    assert f"to {str(video)!r} (H.264, 30 fps: measured from the stream's timestamps)" in saved[0]
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(records) >= 45
    assert [r["frame"] for r in records] == list(range(len(records)))  # policy every: no gap
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == FPS
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == len(records)  # every result drawn, none lost at Ctrl-C
    assert frames[0].shape[2] == 3 and frames[0].shape[:2] == (frames[-1].shape[:2])
    # The top class's label, white on black, in the corner; the camera's frames never have
    # red and green dark together (its red is v, its green 255 - v).
    for frame in (frames[0], frames[-1]):
        corner = frame[:8, :20].astype(int)
        assert ((corner[..., 0] < 40) & (corner[..., 1] < 40)).mean() > 0.3
        rest = frame[24:, :].astype(int)
        assert ((rest[..., 0] < 40) & (rest[..., 1] < 40)).mean() < 0.02
    assert sorted(p.name for p in shots.iterdir())[:2] == ["cam_000000.jpg", "cam_000030.jpg"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
