"""The examples run, as a user runs them, on a few frames: on the CPU with the bundled model and
clip, and (marked ``gpu``) with a PyTorch model file on the GPU.

Each example is run in a fresh interpreter with warnings as errors, so a leaked thread, stream
or container fails here as it would in the suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import pytest

from .conftest import REPO

EXAMPLES = REPO / "examples"
TS_CHUNK = 188 * 7


def run_example(name: str, *args: str, timeout: float = 180,
                warnings: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``python -W error examples/NAME ARGS`` (later ``-W`` filters in ``warnings`` win)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    filters = [arg for w in ("error", *warnings) for arg in ("-W", w)]
    return subprocess.run([sys.executable, *filters, str(EXAMPLES / name), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def check_ran(proc: subprocess.CompletedProcess[str], rc: int = 0) -> str:
    assert proc.returncode == rc, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    return proc.stdout


# -- a live network camera: the bundled clip as MPEG-TS over HTTP, paced, looping --------------
class LiveCamera:
    """Serves ``data`` at http://127.0.0.1:port/cam.ts in real time, looping, with no length:
    to FFmpeg that is a live stream, as a network camera's HTTP output is."""

    def __init__(self, data: bytes, seconds: float) -> None:
        delay = seconds * TS_CHUNK / len(data)
        stop = self._stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    while not stop.is_set():
                        for start in range(0, len(data), TS_CHUNK):
                            if stop.is_set():
                                return
                            self.wfile.write(data[start:start + TS_CHUNK])
                            time.sleep(delay)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="test-camera")
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/cam.ts"

    def close(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def live_camera(bundled_clip: Path, tmp_path: Path) -> Iterator[LiveCamera]:
    # The clip's first 90 packets (3 s), remuxed (not re-encoded) to MPEG-TS.
    ts = tmp_path / "cam.ts"
    with av.open(str(bundled_clip)) as inp, av.open(str(ts), "w", format="mpegts") as out:
        template = inp.streams.video[0]
        stream = out.add_stream_from_template(template)
        for n, packet in enumerate(p for p in inp.demux(template) if p.dts is not None):
            if n == 90:
                break
            packet.stream = stream
            out.mux(packet)
    camera = LiveCamera(ts.read_bytes(), seconds=3.0)
    yield camera
    camera.close()


def milliseconds(text: str, label: str) -> float:
    match = re.search(rf"{label} ([0-9.]+) ms", text)
    assert match, f"no '{label} N ms' in:\n{text}"
    return float(match.group(1))


# -- CPU: the bundled model and clip -------------------------------------------------------------
def test_robotics_loop_acts_on_fresh_results_and_reports_their_age() -> None:
    out = check_ran(run_example("robotics_loop.py", "--frames", "8"))
    assert "on onnxruntime (cpu)" in out and "replayed as a camera" in out
    match = re.search(r"acted on (\d+) results from (\d+) captured frames; (\d+) frames were "
                      r"replaced", out)
    assert match, out
    acted, captured, replaced = map(int, match.groups())
    assert acted == 8 and captured >= acted + replaced
    # The bundled clip shows a bottle: the loop saw it and acted.
    assert re.search(r"frame +\d+: approach +\((water|pop|beer|wine|pill)_bottle", out), out
    p50 = milliseconds(out, "glass-to-result: p50")
    inference = milliseconds(out, "inference p50")
    assert 0 < inference < p50 < 5000  # the age includes the inference, and is not absurd
    assert re.search(r"actions: .*approach \d+", out)


def test_camera_analytics_counts_classes_of_a_live_network_stream(live_camera: LiveCamera) -> None:
    out = check_ran(run_example("camera_analytics.py", live_camera.url, "--frames", "6",
                                "--read-timeout", "10"))
    assert "(live)" in out
    window = re.search(r"\[\d\d:\d\d:\d\d - \d\d:\d\d:\d\d\] \(partial\) (\d+) frames analysed, "
                       r"(\d+) skipped\n((?:    .*\n)+)", out)
    assert window, out
    counts = {line.split()[0]: int(line.split()[-1]) for line in window.group(3).splitlines()}
    assert int(window.group(1)) == 6 and sum(counts.values()) == 6
    assert "bottle" in max(counts, key=lambda k: counts[k])
    assert re.search(r"^6 frames analysed, \d+ skipped$", out, re.M)


def test_camera_analytics_counts_a_file_per_video_minute(bundled_clip: Path) -> None:
    out = check_ran(run_example("camera_analytics.py", str(bundled_clip), "--frames", "40",
                                "--window", "1"))
    assert "(file)" in out
    # 40 frames at 29.83 fps: one full video second, then a partial one.
    windows = re.findall(r"\[(\S+) - (\S+)\]( \(partial\))? (\d+) frames analysed", out)
    assert [(w[0], w[1], w[2] != "", int(w[3])) for w in windows] == [
        ("00:00:00.000", "00:00:01.000", False, 30),
        ("00:00:01.000", "00:00:02.000", True, 10)], out


@pytest.mark.parametrize("where", [(), ("--process",)], ids=["threads", "processes"])
def test_multi_camera_streams_several_sources_on_one_engine(bundled_clip: Path, tmp_path: Path,
                                                            where: tuple[str, ...]) -> None:
    missing = tmp_path / "unplugged.mp4"
    out = check_ran(run_example("multi_camera.py", str(bundled_clip), str(bundled_clip),
                                str(missing), "--frames", "5", *where), rc=1)
    assert "on onnxruntime (cpu); 3 cameras" in out
    for cam in ("cam0", "cam1"):
        assert re.search(rf"^{cam} \(.*\): 5 results, [0-9.]+ fps, .*last \w*bottle", out, re.M), out
    assert re.search(r"^cam2 \(.*unplugged.mp4\): FAILED after 0 results: InvalidVideoError", out,
                     re.M), out
    assert re.search(r"^all cameras: 10 results .*batches", out, re.M), out


def test_multi_camera_refuses_nvdec_for_a_cpu_model(bundled_clip: Path) -> None:
    proc = run_example("multi_camera.py", str(bundled_clip), "--decode", "nvdec")
    assert proc.returncode == 2, proc.stderr
    assert "error: --decode nvdec needs a GPU model" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- GPU: a PyTorch model file through the GPU runtime -------------------------------------------
# PyTorch deprecates TorchScript (2.10+) and warns when it loads such a file, attributing the
# warning to its caller; xinfer-stream itself raises neither category. Everything else, resource
# warnings included, stays an error.
TORCH_NOISE = ("ignore::DeprecationWarning", "ignore::FutureWarning")

@pytest.fixture(scope="module")
def torch_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A TorchScript classifier with 1000 outputs (random weights) and its Preprocess JSON."""
    torch = pytest.importorskip("torch")
    import xinfer_stream.cuda as xcuda

    reason = xcuda.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    import xinfer_stream as xs

    folder = tmp_path_factory.mktemp("torch_model")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(16, 1000)).eval()
    path = folder / "classifier.pt"
    with warnings.catch_warnings():  # torch 2.10+ deprecates TorchScript; it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    pre = xs.Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3,
                        std=(128.0,) * 3)
    return path, pre.save(folder / "classifier.preprocess.json")


@pytest.mark.gpu
@pytest.mark.parametrize("example", ["robotics_loop.py", "camera_analytics.py",
                                     "multi_camera.py"])
def test_examples_run_on_the_gpu_with_a_torch_model(example: str, torch_model: Any) -> None:
    model, preprocess = torch_model
    out = check_ran(run_example(example, "--model", str(model), "--preprocess", str(preprocess),
                                "--frames", "12", warnings=TORCH_NOISE))
    assert f"model {model.name} on torch (cuda)" in out
    if example != "camera_analytics.py":
        assert "GPU 2 slots, graph" in out or "GPU: 2 slots, graph" in out


@pytest.mark.gpu
def test_multi_camera_decodes_on_nvdec_into_gpu_memory(torch_model: Any) -> None:
    model, preprocess = torch_model
    out = check_ran(run_example("multi_camera.py", "--model", str(model), "--preprocess",
                                str(preprocess), "--frames", "12", "--decode", "nvdec",
                                warnings=TORCH_NOISE))
    read = [int(n) for n in re.findall(r"(\d+) frames read from GPU memory", out)]
    if read == [0]:
        pytest.skip("NVDEC did not decode the bundled clip here (software fallback, logged)")
    assert len(read) == 1 and read[0] >= 36, out


@pytest.mark.gpu
def test_multi_camera_mixes_nvdec_and_worker_processes(torch_model: Any) -> None:
    """``--decode mixed --process``: every other camera on NVDEC, the rest decoded in worker
    processes whose rings the GPU reads where they are."""
    model, preprocess = torch_model
    out = check_ran(run_example("multi_camera.py", "--model", str(model), "--preprocess",
                                str(preprocess), "--frames", "12", "--decode", "mixed",
                                "--process", warnings=TORCH_NOISE))
    read = re.findall(r"(\d+) frames read from GPU memory, (\d+) from worker processes' "
                      r"registered memory", out)
    assert len(read) == 1, out
    nvdec, pinned = (int(n) for n in read[0])
    assert pinned >= 12, out  # cam1's 12 frames at least (and warm-up replays)
    if nvdec == 0:
        pytest.skip("NVDEC did not decode the bundled clip here (software fallback, logged)")
    assert nvdec >= 24, out
