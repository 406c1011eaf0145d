"""load_engine: what it refuses, what it offers, and the rebuild it performs when asked."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from xinfer_stream import EngineLoadError, InvalidModelError
from xinfer_stream.engines._builder import EngineBuilder
from xinfer_stream.engines._load import load_engine
from xinfer_stream.engines._metadata import metadata_path_for, read_metadata

from .fake_tensorrt import FakeTensorRT
from .trt_testing import (  # noqa: F401
    A100,
    FakeCalibrator,
    FakeQuantizer,
    fake_fixture,
    h100,
    model_fixture,
    no_tensorrt_fixture,
)


def _build(fake: FakeTensorRT, onnx: Path, engine: Path, *, int8: bool = False) -> None:
    b = EngineBuilder(tensorrt=fake.module, device_probe=h100).from_onnx(onnx).with_max_batch_size(4)
    if int8:
        b = b.with_int8(FakeCalibrator(), quantizer=FakeQuantizer())
    b.build_and_save(engine)


def test_loads_what_it_built(fake: FakeTensorRT, model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    _build(fake, model, engine)
    with load_engine(engine, tensorrt=fake.module, device_probe=h100) as backend:
        assert backend.metadata == read_metadata(engine)


def test_another_tensorrt_version_is_refused_with_a_rebuild_offer(model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    _build(FakeTensorRT("10.16.1.11"), model, engine, int8=True)
    newer = FakeTensorRT("11.4.0.106")
    with pytest.raises(EngineLoadError) as info:
        load_engine(engine, tensorrt=newer.module, device_probe=h100)
    message = str(info.value)
    assert "built with TensorRT 10.16.1.11 and this is TensorRT 11.4.0.106" in message
    assert f"The model it was built from is at hand ({str(tmp_path / 'm.qdq.onnx')!r})" in message
    assert "rebuild=True" in message
    assert f"'xinfer-stream build {tmp_path / 'm.qdq.onnx'} --int8 --max-batch 4 -o {engine}'" in message
    assert newer.called("Runtime.deserialize_cuda_engine") == []  # refused before TensorRT saw it


def test_another_gpu_is_refused(fake: FakeTensorRT, model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    _build(fake, model, engine)
    with pytest.raises(EngineLoadError, match=r"built for NVIDIA H100 80GB HBM3 \(sm_90\) and this "
                                              r"GPU is NVIDIA A100-SXM4-80GB \(sm_80\)"):
        load_engine(engine, tensorrt=fake.module, device_probe=lambda i: A100)


def test_no_rebuild_offer_without_the_model(fake: FakeTensorRT, model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    _build(fake, model, engine)
    model.unlink()
    with pytest.raises(EngineLoadError, match=r"Rebuild it here from its model \('.*tiny.onnx' is "
                                              r"not present or has changed since\)") as info:
        load_engine(engine, tensorrt=fake.module, device_probe=lambda i: A100, rebuild=True)
    assert "rebuild=True" not in str(info.value)


def test_rebuild_true_rebuilds_from_the_qdq_model(model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    _build(FakeTensorRT("10.16.1.11"), model, engine, int8=True)
    old = read_metadata(engine)
    newer = FakeTensorRT("11.4.0.106")
    with load_engine(engine, tensorrt=newer.module, device_probe=h100, rebuild=True) as backend:
        assert backend.tensorrt_version == "11.4.0.106"
    new = read_metadata(engine)
    assert new.tensorrt_version == "11.4.0.106"
    assert newer.called("OnnxParser.parse_from_file") == [(str(tmp_path / "m.qdq.onnx"),)]
    # The rebuilt engine keeps its lineage: the original ONNX and the calibration.
    assert new.source == old.source
    assert new.options == old.options and new.preprocess == old.preprocess


def test_an_engine_that_does_not_match_its_sidecar(fake: FakeTensorRT, model: Path,
                                                   tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    _build(fake, model, engine)
    engine.write_bytes(engine.read_bytes()[:-10])
    with pytest.raises(InvalidModelError, match="does not match its sidecar.*replaced or truncated"):
        load_engine(engine, tensorrt=fake.module, device_probe=h100)


def test_an_engine_without_sidecar_loads_with_a_warning(fake: FakeTensorRT, model: Path,
                                                        tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    engine = tmp_path / "m.engine"
    _build(fake, model, engine)
    foreign = tmp_path / "trtexec.engine"
    shutil.copy(engine, foreign)
    with caplog.at_level(logging.WARNING, logger="xinfer_stream"), \
            load_engine(foreign, tensorrt=fake.module, device_probe=h100) as backend:
        assert backend.metadata is None and backend.max_batch == 4
    assert "no trtexec.engine.json sidecar: loading it unchecked" in caplog.text


def test_a_foreign_engine_of_another_version_fails_in_tensorrt(model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    _build(FakeTensorRT("10.16.1.11"), model, engine)
    metadata_path_for(engine).unlink()
    with pytest.raises(InvalidModelError, match="expecting library version 10.3.0 got 10.16.1.11"):
        load_engine(engine, tensorrt=FakeTensorRT("10.3.0").module, device_probe=h100)


def test_a_malformed_sidecar(fake: FakeTensorRT, model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    _build(fake, model, engine)
    data = json.loads(metadata_path_for(engine).read_text())
    del data["device"]
    metadata_path_for(engine).write_text(json.dumps(data))
    with pytest.raises(InvalidModelError, match=r"sidecar .* is malformed \(KeyError: 'device'\)"):
        load_engine(engine, tensorrt=fake.module, device_probe=h100)


def test_a_missing_engine(fake: FakeTensorRT, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="engine file not found"):
        load_engine(tmp_path / "nope.engine", tensorrt=fake.module)


@pytest.mark.usefixtures("no_tensorrt")
def test_without_tensorrt(fake: FakeTensorRT, model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    _build(fake, model, engine)
    with pytest.raises(EngineLoadError, match=r"TensorRT is not installed .*pip install "
                                              r"'xinfer-stream\[tensorrt\]'"):
        load_engine(engine, device_probe=h100)
