"""``xinfer-stream serve CONFIG`` as users run it: a bad config is one line on stderr and exit
2; the service as a subprocess reloads its cameras on SIGHUP (cameras added and removed, the
others never missing a frame, the metrics showing the new camera) and stops cleanly on
SIGTERM (exit 0, the summary line, every frame taken delivered, no worker process or
shared-memory ring left behind)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue

import pytest

from xinfer_stream.cli import main

from .conftest import REPO
from .test_cli import one_line_error
from .test_service_run import camera, lines_by_camera, make_assets, samples, write_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_assets(tmp_path_factory.mktemp("service-cli"))


@pytest.mark.parametrize(("change", "needles"), [
    ("[health]\nstuck = 4\n", ("serve.toml: health.stuck: unknown key",)),
    ("[[cameras]]\nname = \"a\"\nsource = \"b.mp4\"\n",
     ("serve.toml: cameras[1].name: 'a' is used by an earlier camera",)),
    ("MODEL", ("serve.toml: model.path:", "missing.onnx' does not exist")),
])
def test_a_bad_config_is_one_line_and_exit_2(folder: Path, capsys: pytest.CaptureFixture[str],
                                             change: str, needles: tuple[str, ...]) -> None:
    path = write_config(folder, camera("a"), extra="" if change == "MODEL" else change)
    if change == "MODEL":
        path.write_text(path.read_text().replace("tiny.onnx", "missing.onnx"))
    code = main(["serve", str(path)])
    assert code == 2
    err = one_line_error(capsys, code, *needles)
    assert err.startswith("xinfer-stream: error: ")


class Service:
    """``xinfer-stream serve`` in a subprocess, its stderr read line by line on a thread."""

    def __init__(self, config: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xinfer_stream", "serve", str(config), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: Queue[str] = Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, within: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + within
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except Empty:
                raise AssertionError(f"no line matching {pattern!r} within {within} s; "
                                     f"saw {self.seen}") from None
            self.seen.append(line)
            if found := re.search(pattern, line):
                return found

    def wait_for_all(self, *patterns: str, within: float = 60.0) -> None:
        """Each pattern matched by a line still to come, in any order."""
        left = list(patterns)
        start = len(self.seen)
        while left:
            self.wait_for("|".join(f"(?:{p})" for p in left), within)
            left = [p for p in left if not any(re.search(p, line) for line in self.seen[start:])]

    def children(self) -> list[int]:
        """Processes whose parent is the service."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(entry))
        return pids

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped by init is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def running() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.close()


def test_sighup_adds_and_removes_cameras_and_sigterm_stops_cleanly(
        folder: Path, tmp_path: Path, running: list[Service]) -> None:
    out = tmp_path / "results.jsonl"
    sink = f'[[sinks]]\nkind = "jsonl"\npath = "{out}"\n'
    keep = camera("keep", "a.mp4", realtime=True, loop=True, process=True)
    config = write_config(tmp_path, keep, camera("gone", "b.mp4", realtime=True, loop=True),
                          extra=sink)
    config.write_text(config.read_text().replace('"tiny.onnx"', f'"{folder / "tiny.onnx"}"')
                      .replace('"a.mp4"', f'"{folder / "a.mp4"}"')
                      .replace('"b.mp4"', f'"{folder / "b.mp4"}"'))
    service = Service(config, "--metrics-port", "0")
    running.append(service)
    url = service.wait_for(r"metrics at (http://\S+)/metrics")[1]
    service.wait_for_all(r"camera keep: opened", r"camera gone: opened")
    time.sleep(0.5)

    config.write_text(config.read_text().replace('name = "gone"', 'name = "new"'))
    service.proc.send_signal(signal.SIGHUP)
    service.wait_for(r"reloaded .*: added new; removed gone$")
    service.wait_for(r"camera new: opened")
    time.sleep(0.5)
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        inferred = samples(response.read().decode(), "xinfer_camera_frames_inferred_total")
    assert set(inferred) == {"keep", "new"} and inferred["new"] > 0
    workers = service.children()
    assert workers, "the keep camera decodes in a worker process"
    rings = [n for n in os.listdir("/dev/shm") if n.startswith(f"xinfer_{service.proc.pid}_")]
    assert rings, "... into a shared-memory ring"

    service.proc.send_signal(signal.SIGTERM)
    # The summary counts the removed camera too; what its removal cut off in flight is lost.
    summary = service.wait_for(r"stopped after [\d.]+ s: 3 cameras, (\d+) results delivered, "
                               r"0 frames dropped by policy, (\d+) lost in flight \(gone (\d+), "
                               r"keep (\d+), new (\d+)\)$")
    assert service.proc.wait(30) == 0
    frames = lines_by_camera(out)
    assert frames["keep"] == list(range(len(frames["keep"]))), "keep never missed a frame"
    assert frames["new"] == list(range(len(frames["new"])))
    assert sum(map(len, frames.values())) == int(summary[1])
    assert [len(frames[c]) for c in ("gone", "keep", "new")] == [int(n) for n in summary.groups()[2:]]
    assert 0 < len(frames["gone"]) and int(summary[2]) <= 8  # a queue or two of gone's
    deadline = time.monotonic() + 5  # multiprocessing's resource tracker ends just after
    while (alive := [p for p in workers if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, [Path(f"/proc/{p}/cmdline").read_bytes() for p in alive]
    assert not [n for n in os.listdir("/dev/shm") if n in rings], "a ring outlived it"
    assert not any("Traceback" in line for line in service.seen)


def test_a_reload_that_fails_to_read_keeps_the_running_config(
        folder: Path, tmp_path: Path, running: list[Service]) -> None:
    config = write_config(tmp_path, camera("a", str(folder / "a.mp4"), realtime=True,
                                           loop=True))
    config.write_text(config.read_text().replace('"tiny.onnx"', f'"{folder / "tiny.onnx"}"'))
    service = Service(config)
    running.append(service)
    service.wait_for(r"camera a: opened")
    config.write_text(config.read_text() + "\n[batching]\nmax_batch = 2\n")  # a duplicate table
    service.proc.send_signal(signal.SIGHUP)
    service.wait_for(r"warning: reload of .* not applied: .*serve.toml: not valid TOML")
    service.proc.send_signal(signal.SIGINT)
    service.wait_for(r"stopped after .* 1 cameras, \d+ results delivered")
    assert service.proc.wait(30) == 0


def test_until_done_ends_when_every_file_has_ended(folder: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.jsonl"
    config = write_config(folder, camera("a"), camera("c"),
                          extra=f'[[sinks]]\nkind = "jsonl"\npath = "{out}"\n',
                          name="done.toml")
    assert main(["serve", str(config), "--until-done"]) == 0
    err = capsys.readouterr().err
    assert "idle after" in err and "2 cameras, 21 results delivered" in err, err
    assert {k: len(v) for k, v in lines_by_camera(out).items()} == {"a": 12, "c": 9}
    assert json.loads(out.read_text().splitlines()[0])["camera"] in ("a", "c")
