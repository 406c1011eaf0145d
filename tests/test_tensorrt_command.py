"""The ``build`` and ``inspect`` commands, with the TensorRT double in ``sys.modules``."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import pytest

from xinfer_stream import PreprocessNotFoundError
from xinfer_stream.cli import _build, _inspect, main
from xinfer_stream.cli._progress import BuildProgressPrinter
from xinfer_stream.engines import BuildProgress, _builder
from xinfer_stream.engines._builder import EngineBuilder
from xinfer_stream.engines._metadata import metadata_path_for, read_metadata

from .fake_tensorrt import FakeTensorRT
from .trt_testing import PREPROCESS, h100, model_fixture, no_tensorrt_fixture, tiny_model  # noqa: F401


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xinfer-stream")
    sub = parser.add_subparsers(dest="command", required=True)
    _build.add_parser(sub)
    _inspect.add_parser(sub)
    return parser.parse_args([str(a) for a in argv])


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    """TensorRT "installed" (the double as ``tensorrt``) on an H100."""
    fake = FakeTensorRT("10.16.1.11")
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    monkeypatch.setattr(_builder, "current_device", h100)
    monkeypatch.setattr("xinfer_stream.engines._load.current_device", h100)
    monkeypatch.setattr("xinfer_stream.engines._inspect.current_device", h100)
    return fake


def test_build_then_inspect(installed: FakeTensorRT, model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    out, err = io.StringIO(), io.StringIO()
    assert _build.run(parse("build", model, "--max-batch", "8", "--profiles", "2", "-o", engine),
                     out=out, err=err) == 0
    assert out.getvalue().startswith(f"{engine} (") and "TensorRT 10.16.1.11" in out.getvalue()
    assert "[" in err.getvalue() and "Building engine" in err.getvalue()  # progress lines
    meta = read_metadata(engine)
    assert meta.options.max_batch == 8 and meta.profiles == 2

    text = io.StringIO()
    assert _inspect.run(parse("inspect", engine), out=text) == 0
    report = text.getvalue()
    assert "TensorRT   10.16.1.11, strongly typed" in report
    assert "in  input   float32  ?x3x16x16  profile 1x3x16x16 / 1x3x16x16 / 8x3x16x16" in report
    assert "out logits  float32  ?x4" in report
    assert "layers (4): 4 fp32" in report and "fp32  Conv" in report

    as_json = io.StringIO()
    _inspect.run(parse("inspect", engine, "--json"), out=as_json)
    data = json.loads(as_json.getvalue())
    assert data["precision_counts"] == {"fp32": 4}
    assert data["metadata"]["engine"]["sha256"] == meta.engine_sha256


def test_inspect_shows_int8_layers(installed: FakeTensorRT, tmp_path: Path) -> None:
    qdq = tiny_model(tmp_path / "q.onnx", qdq=True)
    engine = tmp_path / "q.engine"
    _build.run(parse("build", qdq, "--int8", "--max-batch", "2", "-o", engine, "--quiet"),
              out=io.StringIO(), err=io.StringIO())
    text = io.StringIO()
    _inspect.run(parse("inspect", engine), out=text)
    assert "layers (4): 3 fp32, 1 int8" in text.getvalue()
    assert "int8  Conv" in text.getvalue()


def test_the_cli_and_the_api_make_the_same_artifact(installed: FakeTensorRT, model: Path,
                                                    tmp_path: Path) -> None:
    cache = tmp_path / "timing.cache"
    _build.run(parse("build", model, "--max-batch", "16", "--opt-batch", "4", "--workspace", "256",
                    "--opt-level", "5", "--timing-cache", cache, "--preprocess",
                    PREPROCESS.save(tmp_path / "pre.json"), "-o", tmp_path / "cli.engine",
                    "--quiet"), out=io.StringIO(), err=io.StringIO())
    (EngineBuilder().from_onnx(model).with_max_batch_size(16, opt=4).with_workspace(256 << 20)
     .with_builder_optimization_level(5).with_timing_cache(cache).with_preprocess(PREPROCESS)
     .build_and_save(tmp_path / "api.engine"))
    assert (tmp_path / "cli.engine").read_bytes() == (tmp_path / "api.engine").read_bytes()
    cli, api = (json.loads(metadata_path_for(tmp_path / f"{n}.engine").read_text())
                for n in ("cli", "api"))
    for d in (cli, api):
        d.pop("created"), d.pop("build_seconds"), d["engine"].pop("file")
    assert cli == api


@pytest.mark.usefixtures("no_tensorrt")
def test_without_tensorrt_build_writes_the_qdq_model_and_one_line(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  bundled_clip: Path) -> None:
    model = tiny_model(tmp_path / "m.onnx")
    PREPROCESS.save(tmp_path / "m.preprocess.json")
    monkeypatch.setattr(_builder, "current_device", h100)
    out, err = io.StringIO(), io.StringIO()
    code = _build.run(parse("build", model, "--int8", "--calib", bundled_clip, "--frames", "4",
                           "--max-batch", "4", "-o", tmp_path / "m.engine", "--quiet"),
                     out=out, err=err)
    assert code == 1
    lines = err.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("xinfer-stream build: TensorRT is not installed")
    assert "pip install 'xinfer-stream[tensorrt]'" in lines[0]
    assert (tmp_path / "m.qdq.onnx").is_file() and not (tmp_path / "m.engine").exists()


def test_calibration_needs_a_preprocess(installed: FakeTensorRT, model: Path, tmp_path: Path,
                                        bundled_clip: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The library's error names the API argument; the command line names its flags."""
    argv = ["build", str(model), "--int8", "--calib", str(bundled_clip), "-o",
            str(tmp_path / "m.engine")]
    with pytest.raises(PreprocessNotFoundError, match=r"preprocess=xs\.Preprocess"):
        _build.run(parse(*argv))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--size H W" in err and "--mean C0 C1 C2" in err and "--preprocess FILE.json" in err
    assert "tiny.preprocess.json" in err and "xs.Preprocess" not in err
    assert not (tmp_path / "m.qdq.onnx").exists()      # refused before sampling or quantizing


def test_build_takes_the_preprocessing_flags(installed: FakeTensorRT, model: Path,
                                             tmp_path: Path, bundled_clip: Path) -> None:
    """The flags every subcommand shares: size, layout and dtype come from the model."""
    engine = tmp_path / "m.engine"
    assert _build.run(parse("build", model, "--int8", "--calib", bundled_clip, "--frames", "4",
                            "--max-batch", "2", "--resize", "letterbox", "--mean", "1", "2", "3",
                            "-o", engine, "--quiet"), out=io.StringIO(), err=io.StringIO()) == 0
    recorded = read_metadata(engine).preprocess
    assert recorded is not None and recorded.resize == "letterbox"
    assert recorded.size == (16, 16) and recorded.mean == (1.0, 2.0, 3.0)


def test_argument_errors(installed: FakeTensorRT, model: Path, tmp_path: Path,
                         bundled_clip: Path) -> None:
    with pytest.raises(ValueError, match="add --int8"):
        _build.run(parse("build", model, "--calib", bundled_clip, "-o", tmp_path / "m.engine"))
    with pytest.raises(ValueError, match="all of --min-hw"):
        _build.run(parse("build", model, "--min-hw", "8", "8", "-o", tmp_path / "m.engine"))


@pytest.mark.usefixtures("no_tensorrt")
def test_inspect_without_tensorrt_shows_the_metadata(model: Path, tmp_path: Path) -> None:
    fake = FakeTensorRT("11.4.0.106")
    engine = tmp_path / "m.engine"
    EngineBuilder(tensorrt=fake.module, device_probe=h100).from_onnx(model).with_max_batch_size(2) \
        .build_and_save(engine)
    text = io.StringIO()
    _inspect.run(parse("inspect", engine), out=text)
    report = text.getvalue()
    assert "TensorRT   11.4.0.106" in report and "layers (" not in report
    assert "note: per-layer precision needs TensorRT: TensorRT is not installed" in report


def test_progress_printer_lines() -> None:
    stream = io.StringIO()
    printer = BuildProgressPrinter(stream)
    printer(BuildProgress("start", "Building engine", None, 0, 2, 0.5))
    printer(BuildProgress("start", "Tactic selection", "Building engine", 0, 3, 0.6))
    printer(BuildProgress("step", "Tactic selection", None, 1, 3, 0.7))
    printer(BuildProgress("finish", "Building engine", None, 2, 2, 1.5))
    assert stream.getvalue() == "[   0.5 s] Building engine\n"
