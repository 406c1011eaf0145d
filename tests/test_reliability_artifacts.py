"""Artifacts: every write is atomic, a write killed midway leaves the previous artifact intact,
and the parsers of our own files answer garbage with our errors, never a crash or a hang.

- A child process writing through ``atomic_output`` is SIGKILLed mid-write: the destination
  keeps its previous bytes; the killed writer's temporary (nobody can remove it at that instant)
  is removed by the next write to that destination, while a live writer's is left alone.
- A real ``xinfer-stream quantize`` and a real engine build (TensorRT test double) are killed
  in a child process while writing: the previous model, engine and sidecars are intact.
- A disk that fills (``ENOSPC`` on flush) fails each writer cleanly: previous artifacts intact,
  no temporary left, and the CLI prints one line.
- A static check: every call in the package that writes a file is inside ``atomic_output``.
- hypothesis fuzzes the calibration cache, the engine metadata sidecar and the Preprocess JSON.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import xinfer_stream as xs
from xinfer_stream import _files
from xinfer_stream._files import atomic_output, atomic_write_bytes
from xinfer_stream.cli import main
from xinfer_stream.engines._builder import EngineBuilder
from xinfer_stream.engines._metadata import metadata_path_for, read_metadata
from xinfer_stream.quantize._cache import read_calibration_cache, write_calibration_cache
from xinfer_stream.video._write import write_video

from .fake_tensorrt import FakeTensorRT
from .test_cli import tiny_classifier
from .trt_testing import h100, tiny_model

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "xinfer_stream"
PRE = xs.Preprocess(size=(8, 8))


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()
            and not p.name.endswith(".tmp")}


# -- SIGKILL mid-write ------------------------------------------------------------------------
CHILD_WRITER = textwrap.dedent("""
    import sys, time
    from xinfer_stream._files import atomic_output
    dest, fill = sys.argv[1], sys.argv[2].encode()
    with atomic_output(dest) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(fill * (8 << 20))          # 8 MiB of the new version...
            fh.flush()
            print("writing", flush=True)
            while True:                          # ...and more, until killed
                fh.write(fill * (1 << 20))
                time.sleep(0.01)
""")


def start_writer(dest: Path, fill: str) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", CHILD_WRITER, str(dest), fill], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "writing"
    return child


def kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    if child.stdout is not None:
        child.stdout.close()


def test_a_write_killed_midway_leaves_the_previous_artifact(tmp_path: Path) -> None:
    dest = tmp_path / "model.int8.onnx"
    atomic_write_bytes(dest, b"version 1\n" * 1000)
    child = start_writer(dest, "2")
    kill(child)
    assert dest.read_bytes() == b"version 1\n" * 1000
    assert len(temporaries(tmp_path)) == 1       # the dead writer's, partial (8+ MiB)
    # The next write removes what the dead writer left.
    atomic_write_bytes(dest, b"version 3\n")
    assert dest.read_bytes() == b"version 3\n"
    assert temporaries(tmp_path) == []


def test_a_live_writers_temporary_is_left_alone(tmp_path: Path) -> None:
    dest = tmp_path / "engine.plan"
    atomic_write_bytes(dest, b"one")
    child = start_writer(dest, "2")
    try:
        atomic_write_bytes(dest, b"three")     # a second writer meanwhile: last rename wins
        assert dest.read_bytes() == b"three"
        assert len(temporaries(tmp_path)) == 1   # the live writer's is still there
    finally:
        kill(child)
    atomic_write_bytes(dest, b"four")
    assert temporaries(tmp_path) == []


def test_an_exception_midway_removes_the_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "report.json"
    atomic_write_bytes(dest, b"{}")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(dest) as tmp:
            tmp.write_bytes(b"{half")
            raise KeyboardInterrupt
    assert dest.read_bytes() == b"{}" and temporaries(tmp_path) == []


# A real quantize / build in a child process, paused halfway through writing its main artifact
# (the hook writes half of the bytes, says so, and waits to be killed).
PAUSE_MIDWAY = textwrap.dedent("""
    import pathlib, sys, time
    real = pathlib.Path.write_bytes
    def half_then_wait(self, data):
        if not self.name.endswith(".tmp"):
            return real(self, data)
        real(self, data[: len(data) // 2])
        print("midway", self.name, flush=True)
        time.sleep(600)
    pathlib.Path.write_bytes = half_then_wait
""")


def killed_midway(script: str, folder: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", PAUSE_MIDWAY + textwrap.dedent(script)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stderr is not None
    line = child.stdout.readline()
    if not line.startswith("midway"):
        child.kill()
        raise AssertionError(f"the child never reached the write: {child.stderr.read()}")
    assert len(temporaries(folder)) == 1
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    child.stderr.close()


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(1)
    write_video(path, [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(30)])
    return path


def test_quantize_killed_while_writing_keeps_the_previous_model(tmp_path: Path, clip: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    model = tiny_classifier(tmp_path / "tiny.onnx", size=8, classes=64)
    PRE.save(tmp_path / "tiny.preprocess.json")
    argv = ["quantize", str(model), "--calib", str(clip), "-o", str(out / "tiny.int8.onnx"), "--quiet"]
    assert main([*argv, "--frames", "8"]) == 0, capsys.readouterr().err
    before = snapshot(out)
    assert {"tiny.int8.onnx", "tiny.int8.preprocess.json"} <= set(before)

    killed_midway(f"""
        import sys
        from xinfer_stream.cli import main
        main({[*argv, "--frames", "4", "--method", "percentile"]!r})
    """, out)
    assert snapshot(out) == before                 # every artifact as it was
    assert main([*argv, "--frames", "4"]) == 0     # and the next run cleans up
    assert temporaries(out) == []
    assert snapshot(out)["tiny.int8.onnx"] != before["tiny.int8.onnx"]


def test_engine_build_killed_while_writing_keeps_the_previous_engine(tmp_path: Path) -> None:
    onnx_path = tiny_model(tmp_path / "m.onnx")
    engine = tmp_path / "m.engine"
    build = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.fake_tensorrt import FakeTensorRT
        from tests.trt_testing import h100
        from xinfer_stream.engines._builder import EngineBuilder
        fake = FakeTensorRT("10.16.1.11")
        (EngineBuilder(tensorrt=fake.module, device_probe=h100).from_onnx({str(onnx_path)!r})
         .with_max_batch_size(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
         .build_and_save({str(engine)!r}))
    """)
    subprocess.run([sys.executable, "-c", build], cwd=REPO, check=True, timeout=120)
    before = snapshot(tmp_path)
    killed_midway(build.replace("len(sys.argv) > 1", "False").replace("else 4", "else 8"), tmp_path)
    assert snapshot(tmp_path) == before
    assert read_metadata(engine).options.max_batch == 4
    # The next build to the same engine removes what the killed one left.
    fake = FakeTensorRT("10.16.1.11")
    (EngineBuilder(tensorrt=fake.module, device_probe=h100).from_onnx(onnx_path)
     .with_max_batch_size(8).build_and_save(engine))
    assert temporaries(tmp_path) == [] and read_metadata(engine).options.max_batch == 8


# -- a disk that fills ------------------------------------------------------------------------
@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_files.os, "fsync", no_space)


def _writers(tmp_path: Path) -> dict[str, Any]:
    fake = FakeTensorRT("10.16.1.11")
    onnx_path = tiny_model(tmp_path / "m.onnx")

    def engine(batch: int) -> None:
        (EngineBuilder(tensorrt=fake.module, device_probe=h100).from_onnx(onnx_path)
         .with_max_batch_size(batch).build_and_save(tmp_path / "m.engine"))

    return {
        "preprocess": lambda v: xs.Preprocess(size=(v, v)).save(tmp_path / "p.preprocess.json"),
        "calibration cache": lambda v: write_calibration_cache(tmp_path / "c.cache", {"x": 0.5 * v}),
        "engine and metadata": engine,
    }


@pytest.mark.parametrize("what", ["preprocess", "calibration cache", "engine and metadata"])
def test_a_full_disk_fails_cleanly(what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write = _writers(tmp_path)[what]
    write(4)
    before = snapshot(tmp_path)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_files.os, "fsync", no_space)
    with pytest.raises(OSError) as info:
        write(8)
    assert info.value.errno == errno.ENOSPC and info.value.filename is not None
    assert str(tmp_path) in info.value.filename      # names the artifact it could not write
    assert snapshot(tmp_path) == before and temporaries(tmp_path) == []


@pytest.mark.usefixtures("full_disk")
def test_the_cli_reports_a_full_disk_in_one_line(tmp_path: Path, clip: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    code = main(["quantize", str(model), "--calib", str(clip), "--frames", "4", "--size", "8", "8",
                 "-o", str(tmp_path / "q.onnx"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "No space left on device" in err and "q.onnx" in err and "free some disk space" in err
    assert not (tmp_path / "q.onnx").exists() and temporaries(tmp_path) == []


# -- every write goes through atomic_output ---------------------------------------------------
# Writers that are not artifacts: synthesising test footage.
NOT_ARTIFACTS = {"video/_write.py"}
# method -> the owners it writes files on (None: any owner, e.g. a Path)
WRITE_METHODS: dict[str, set[str] | None] = {
    "write_bytes": None, "write_text": None, "touch": None, "symlink_to": None,
    "save": {"onnx", "np", "numpy"}, "savez": {"np", "numpy"}, "savez_compressed": {"np", "numpy"},
    "save_model": {"onnx"}, "dump": {"json", "pickle"}, "copy": {"shutil"},
    "copyfile": {"shutil"}, "copy2": {"shutil"}, "move": {"shutil"}}
# (os.replace / os.rename are the atomic step itself: publishing files already written whole.)


def _is_write(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name) and func.id == "open":
        mode = call.args[1] if len(call.args) > 1 else next(
            (k.value for k in call.keywords if k.arg == "mode"), None)
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and \
                any(c in mode.value for c in "wax+"):
            return f"open(..., {mode.value!r})"
        return None
    if isinstance(func, ast.Attribute) and func.attr in WRITE_METHODS:
        owner = func.value
        name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
        owners = WRITE_METHODS[func.attr]
        if owners is not None and name not in owners:
            return None    # str.replace, Preprocess.save (checked where it writes)...
        return f"{name}.{func.attr}"
    return None


def _atomic_blocks(tree: ast.AST) -> list[tuple[int, int]]:
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.With, ast.AsyncWith)) and any(
                isinstance(item.context_expr, ast.Call)
                and getattr(item.context_expr.func, "id", getattr(item.context_expr.func, "attr", ""))
                == "atomic_output" for item in node.items):
            spans.append((node.lineno, node.end_lineno or node.lineno))
    return spans


def test_every_file_write_in_the_package_is_atomic() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "_files.py" or rel in NOT_ARTIFACTS:
            continue
        tree = ast.parse(path.read_text())
        spans = _atomic_blocks(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (what := _is_write(node)):
                if not any(a <= node.lineno <= b for a, b in spans):
                    offenders.append(f"{rel}:{node.lineno}: {what}")
    assert offenders == []


def test_the_static_check_sees_a_direct_write(tmp_path: Path) -> None:
    tree = ast.parse("def f(p, data):\n    with open(p, 'wb') as fh:\n        fh.write(data)\n"
                     "    onnx.save(m, p)\n    with atomic_output(p) as t:\n        t.write_bytes(b'')\n")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _is_write(n)]
    spans = _atomic_blocks(tree)
    outside = sorted(c.lineno for c in calls if not any(a <= c.lineno <= b for a, b in spans))
    assert outside == [2, 4]


# -- fuzzing our parsers ----------------------------------------------------------------------
FUZZ = settings(max_examples=150, deadline=timedelta(seconds=2),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20)


def _mutations(valid: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A valid document with one value somewhere replaced, or one key removed."""
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*path, i))

    walk(valid, ())

    def mutate(path: tuple[Any, ...], value: Any, delete: bool) -> Any:
        doc = json.loads(json.dumps(valid))
        if not path:
            return value
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if delete and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
        return doc

    return st.builds(mutate, st.sampled_from(paths), json_values, st.booleans())


DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "1" + "0" * 400


@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
@example(data=b"TRT-8501-EntropyCalibration2\ninput: 3c010a14\n")
@example(data=b"TRT-8501-EntropyCalibration2\ninput: 3c01")
@example(data=b"\xff\xfe")
@example(data=b"")
def test_fuzz_calibration_cache(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "calib.cache"
    path.write_bytes(data)
    try:
        cache = read_calibration_cache(path)
    except xs.InvalidCalibrationInput as exc:
        assert str(path) in str(exc)
        return
    assert all(isinstance(v, float) for v in cache.scales.values())


@FUZZ
@given(header=st.sampled_from(["TRT-8501-EntropyCalibration2", "TRT-100000-MinMaxCalibration"]),
       lines=st.lists(st.tuples(st.text(max_size=15), st.text("0123456789abcdefABCDEF:x ", max_size=10)),
                      max_size=6))
def test_fuzz_calibration_cache_lines(tmp_path: Path, header: str, lines: list[tuple[str, str]]) -> None:
    path = tmp_path / "calib.cache"
    path.write_text("\n".join([header, *(f"{n}: {v}" for n, v in lines)]), encoding="utf-8",
                    errors="surrogatepass")
    try:
        read_calibration_cache(path)
    except xs.InvalidCalibrationInput:
        pass


@pytest.mark.parametrize("bits", ["7fc00000", "7f800000", "00000000", "bf800000"])
def test_calibration_cache_refuses_scales_that_are_not_positive(tmp_path: Path, bits: str) -> None:
    path = tmp_path / "calib.cache"
    path.write_text(f"TRT-8501-EntropyCalibration2\ninput: {bits}\n")
    with pytest.raises(xs.InvalidCalibrationInput, match="input"):
        read_calibration_cache(path)


VALID_PREPROCESS = xs.Preprocess(size=(224, 224), resize="letterbox", mean=(1.0, 2.0, 3.0)).to_dict()


@FUZZ
@given(doc=json_values | _mutations(VALID_PREPROCESS))
@example(doc={**VALID_PREPROCESS, "mean": [int(HUGE_INT), 0, 0]})
@example(doc={**VALID_PREPROCESS, "size": [10 ** 30, 1]})
def test_fuzz_preprocess_json(tmp_path: Path, doc: Any) -> None:
    text = json.dumps(doc)
    try:
        pre = xs.Preprocess.from_json(text)
    except ValueError:
        pass
    else:
        assert xs.Preprocess.from_json(pre.to_json()) == pre   # what parses, round-trips
    path = tmp_path / "x.preprocess.json"
    path.write_text(text)
    try:
        xs.Preprocess.load(path)
    except xs.InvalidModelError as exc:
        assert str(path) in str(exc)


@pytest.mark.parametrize("text", [DEEP, "[" * 5000, f'{{"size": [8, 8], "mean": [{HUGE_INT}, 0, 0]}}',
                                  "\ud800", "NaN", '{"size": [8, 8], "std": [NaN, 1, 1]}'],
                         ids=["deeply nested", "unclosed", "huge int", "lone surrogate", "NaN",
                              "NaN std"])
def test_preprocess_json_pathological(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError):
        xs.Preprocess.from_json(text)
    path = tmp_path / "p.json"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    with pytest.raises(xs.InvalidModelError, match=r"p\.json"):
        xs.Preprocess.load(path)


@pytest.fixture(scope="module")
def valid_metadata(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("meta")
    fake = FakeTensorRT("10.16.1.11")
    onnx_path = tiny_model(folder / "m.onnx", batch=None)
    (EngineBuilder(tensorrt=fake.module, device_probe=h100).from_onnx(onnx_path)
     .with_max_batch_size(4).with_preprocess(xs.Preprocess(size=(16, 16)))
     .build_and_save(folder / "m.engine"))
    return json.loads(metadata_path_for(folder / "m.engine").read_text())  # type: ignore[no-any-return]


@settings(max_examples=300, deadline=timedelta(seconds=2),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_engine_metadata(tmp_path: Path, valid_metadata: dict[str, Any], data: st.DataObject) -> None:
    doc = data.draw(json_values | _mutations(valid_metadata))
    engine = tmp_path / "fuzz.engine"
    metadata_path_for(engine).write_text(json.dumps(doc))
    try:
        read_metadata(engine)
    except xs.InvalidModelError as exc:
        assert "fuzz.engine.json" in str(exc)


@pytest.mark.parametrize("text", [DEEP, "\ud800", '{"format": "xinfer-stream.engine", "version": 1, '
                                  f'"engine": {{"file": "m", "sha256": "x", "bytes": {HUGE_INT}e400}}}}'],
                         ids=["deeply nested", "lone surrogate", "infinite size"])
def test_engine_metadata_pathological(tmp_path: Path, text: str) -> None:
    engine = tmp_path / "m.engine"
    metadata_path_for(engine).write_bytes(text.encode("utf-8", "surrogatepass"))
    with pytest.raises(xs.InvalidModelError, match=r"m\.engine\.json"):
        read_metadata(engine)
