"""Pure parts of the engine layer: build options and profiles, the precision policy, metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from xinfer_stream import EngineBuildError, EngineLoadError, InvalidModelError
from xinfer_stream.engines._build_options import BuildOptions, NetworkInput, profile_shapes
from xinfer_stream.engines._metadata import (
    DeviceInfo,
    EngineMetadata,
    EngineSource,
    IoTensor,
    compatibility_problems,
    metadata_path_for,
    read_metadata,
    write_metadata,
)
from xinfer_stream.engines._precision import (
    ModelPrecisions,
    TrtVersion,
    model_precisions,
    plan_precision,
)

from .trt_testing import A100, H100, PREPROCESS, tiny_model

V10, V11 = TrtVersion.parse("10.16.1.11"), TrtVersion.parse("11.4.0.106")
FP32, QDQ, HALF = ModelPrecisions(False, False), ModelPrecisions(True, False), ModelPrecisions(False, True)


# -- the precision policy (the table in _precision.py) ---------------------------------------
@pytest.mark.parametrize("version,model,int8,fp16,strongly,flags", [
    (V11, FP32, False, False, True, ()),
    (V11, QDQ, True, False, True, ()),
    (V11, HALF, False, True, True, ()),
    (V10, QDQ, True, False, True, ()),
    (V10, HALF, False, False, True, ()),
    (V10, QDQ, True, True, False, ("INT8", "FP16")),
    (V10, FP32, False, True, False, ("FP16",)),
    (V10, FP32, False, False, True, ()),
])
def test_precision_policy(version: TrtVersion, model: ModelPrecisions, int8: bool, fp16: bool,
                          strongly: bool, flags: tuple[str, ...]) -> None:
    plan = plan_precision(version, model, int8=int8, fp16=fp16)
    assert (plan.strongly_typed, plan.flags) == (strongly, flags)
    assert f"TensorRT {version.major}" in plan.reason


def test_policy_refusals() -> None:
    with pytest.raises(EngineBuildError, match="no QuantizeLinear/DequantizeLinear"):
        plan_precision(V10, FP32, int8=True, fp16=False)
    for model in (FP32, QDQ):  # 11 cannot make float32 layers FP16: the model must carry it
        with pytest.raises(EngineBuildError, match="strongly typed networks only"):
            plan_precision(V11, model, int8=model.has_qdq, fp16=True)


def test_versions() -> None:
    assert (V10.major, V10.minor, V10.strongly_typed_only) == (10, 16, False)
    assert V11.strongly_typed_only and str(V11) == "11.4.0.106"
    with pytest.raises(EngineBuildError, match="supports TensorRT 10.x and 11.x"):
        TrtVersion.parse("8.6.1.6")
    with pytest.raises(EngineBuildError, match="cannot read the TensorRT version"):
        TrtVersion.parse("unknown")


def test_model_precisions(tmp_path: Path) -> None:
    assert model_precisions(tiny_model(tmp_path / "a.onnx")) == FP32
    assert model_precisions(tiny_model(tmp_path / "b.onnx", qdq=True)) == QDQ
    assert model_precisions(tiny_model(tmp_path / "c.onnx", fp16=True)) == HALF
    (tmp_path / "d.onnx").write_bytes(b"\x01\x02junk")
    with pytest.raises(InvalidModelError, match="cannot read"):
        model_precisions(tmp_path / "d.onnx")


# -- options and profiles ---------------------------------------------------------------------
def test_options_validate() -> None:
    with pytest.raises(ValueError, match="min <= opt <= max"):
        BuildOptions(max_batch=4, opt_batch=8)
    with pytest.raises(ValueError, match="opt_batch needs max_batch"):
        BuildOptions(opt_batch=2)
    with pytest.raises(ValueError, match="profiles must be a positive int"):
        BuildOptions(profiles=0)
    with pytest.raises(ValueError, match="builder_optimization_level must be 0..5"):
        BuildOptions(builder_optimization_level=7)
    with pytest.raises(ValueError, match="min <= opt <= max per axis"):
        BuildOptions(hw_range=((64, 64), (32, 32), (128, 128)))


def test_options_round_trip_and_recipe() -> None:
    o = BuildOptions(int8=True, max_batch=32, opt_batch=8, hw_range=((16, 16), (32, 32), (64, 64)),
                     timing_cache="/tmp/c", calibration_method="entropy")
    assert BuildOptions.from_dict(o.to_dict()) == o
    assert "timing_cache" not in o.recipe()
    assert o.recipe() == BuildOptions.from_dict({**o.to_dict(), "timing_cache": None}).recipe()
    with pytest.raises(ValueError, match="unknown build options"):
        BuildOptions.from_dict({"bogus": 1})


def test_profile_shapes() -> None:
    nchw = [NetworkInput("x", (-1, 3, -1, -1))]
    o = BuildOptions(max_batch=8, opt_batch=2, hw_range=((32, 48), (64, 64), (128, 96)))
    assert profile_shapes(nchw, o, "m") == {
        "x": ((1, 3, 32, 48), (2, 3, 64, 64), (8, 3, 128, 96))}
    nhwc = [NetworkInput("x", (-1, -1, -1, 3))]
    assert profile_shapes(nhwc, o, "m")["x"][2] == (8, 128, 96, 3)
    assert profile_shapes([NetworkInput("x", (1, 3, 8, 8))], BuildOptions(), "m") == {}
    with pytest.raises(EngineBuildError, match="dynamic axis 1"):
        profile_shapes([NetworkInput("x", (-1, -1))], BuildOptions(max_batch=2), "m")


# -- metadata ---------------------------------------------------------------------------------
def _metadata() -> EngineMetadata:
    return EngineMetadata(
        engine_file="m.engine", engine_sha256="a" * 64, engine_bytes=123,
        tensorrt_version="10.16.1.11", typing="strongly typed (x)", flags=(), device=H100,
        inputs=(IoTensor("input", (None, 3, 16, 16), "float32",
                         ((1, 3, 16, 16), (1, 3, 16, 16), (8, 3, 16, 16))),),
        outputs=(IoTensor("logits", (None, 4), "float32"),), profiles=2, preprocess=PREPROCESS,
        options=BuildOptions(int8=True, max_batch=8, profiles=2),
        source=EngineSource("m.onnx", "b" * 64, "m.qdq.onnx", "c" * 64, "d" * 64, "max"),
        created="2026-11-27T00:00:00+00:00", build_seconds=1.5, xinfer_stream="0.1.0")


def test_metadata_round_trips(tmp_path: Path) -> None:
    meta = _metadata()
    path = write_metadata(tmp_path / "m.engine", meta)
    assert path == tmp_path / "m.engine.json" == metadata_path_for(tmp_path / "m.engine")
    assert read_metadata(tmp_path / "m.engine") == meta
    assert EngineMetadata.from_dict(meta.to_dict()) == meta
    assert meta.tensorrt_major == 10


def test_sidecar_errors(tmp_path: Path) -> None:
    with pytest.raises(EngineLoadError, match="has no metadata sidecar 'm.engine.json'"):
        read_metadata(tmp_path / "m.engine")
    (tmp_path / "m.engine.json").write_text('{"format": "something else"}')
    with pytest.raises(InvalidModelError, match="not an xinfer-stream engine sidecar"):
        read_metadata(tmp_path / "m.engine")
    (tmp_path / "m.engine.json").write_text("{not json")
    with pytest.raises(InvalidModelError, match="malformed"):
        read_metadata(tmp_path / "m.engine")


def test_compatibility() -> None:
    meta = _metadata()
    assert compatibility_problems(meta, tensorrt_version="10.16.1.11", device=H100) == []
    same_arch = DeviceInfo("NVIDIA H200", (9, 0))
    assert compatibility_problems(meta, tensorrt_version="10.16.1.11", device=same_arch) == []
    assert compatibility_problems(meta, tensorrt_version="10.16.0.72", device=A100) == [
        "it was built with TensorRT 10.16.1.11 and this is TensorRT 10.16.0.72",
        "it was built for NVIDIA H100 80GB HBM3 (sm_90) and this GPU is NVIDIA A100-SXM4-80GB (sm_80)"]
