"""EngineBuilder against the TensorRT double, 10-style and 11-style: the calls it makes, the
artifacts it writes, and every failure path (parser errors, a failed build, no TensorRT)."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import onnx
import pytest

from xinfer_stream import EngineBuildError, InvalidModelError
from xinfer_stream._files import sha256_file
from xinfer_stream.engines._builder import EngineBuilder, qdq_path_for
from xinfer_stream.engines._metadata import metadata_path_for, read_metadata
from xinfer_stream.engines._tensorrt import BuildProgress, _Ticker

from .fake_tensorrt import FakeTensorRT, plan_bytes_of
from .trt_testing import (  # noqa: F401
    A100,
    PREPROCESS,
    FakeCalibrator,
    FakeQuantizer,
    fake10_fixture,
    fake11_fixture,
    fake_fixture,
    h100,
    model_fixture,
    no_tensorrt_fixture,
    tiny_model,
)


def builder(fake: FakeTensorRT, onnx: Path) -> EngineBuilder:
    return EngineBuilder(tensorrt=fake.module, device_probe=h100).from_onnx(onnx)


def test_fp32_build_makes_the_documented_calls(fake: FakeTensorRT, model: Path,
                                               tmp_path: Path) -> None:
    engine = tmp_path / "tiny.engine"
    result = (builder(fake, model).with_max_batch_size(8, opt=2).with_workspace(1 << 28)
              .with_builder_optimization_level(4).build_and_save(engine))
    assert not result.skipped and result.qdq_path is None
    m = fake.module
    assert fake.called("Builder.create_network") == [(1 << int(m.NetworkDefinitionCreationFlag.STRONGLY_TYPED),)]
    assert fake.called("OnnxParser.parse_from_file") == [(str(model),)]
    assert fake.called("IBuilderConfig.set_memory_pool_limit") == [(m.MemoryPoolType.WORKSPACE, 1 << 28)]
    assert fake.called("IBuilderConfig.builder_optimization_level") == [(4,)]
    assert fake.called("IBuilderConfig.profiling_verbosity") == [(m.ProfilingVerbosity.DETAILED,)]
    assert fake.called("IOptimizationProfile.set_shape") == [
        ("input", (1, 3, 16, 16), (2, 3, 16, 16), (8, 3, 16, 16))]
    assert fake.called("IBuilderConfig.set_flag") == []
    assert len(fake.called("Builder.build_serialized_network")) == 1
    assert engine.is_file() and metadata_path_for(engine).is_file()


def test_metadata_describes_what_was_built(fake: FakeTensorRT, model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "tiny.engine"
    result = builder(fake, model).with_max_batch_size(4).with_preprocess(PREPROCESS).build_and_save(engine)
    meta = read_metadata(engine)
    assert meta == result.metadata
    assert meta.engine_sha256 == sha256_file(engine) and meta.engine_bytes == engine.stat().st_size
    assert meta.tensorrt_version == fake.version
    assert meta.device.name == "NVIDIA H100 80GB HBM3" and meta.device.compute_capability == (9, 0)
    assert [(t.name, t.shape, t.dtype) for t in meta.inputs] == [("input", (None, 3, 16, 16), "float32")]
    assert meta.inputs[0].profile == ((1, 3, 16, 16), (1, 3, 16, 16), (4, 3, 16, 16))
    assert [(t.name, t.shape) for t in meta.outputs] == [("logits", (None, 4))]
    assert meta.source.onnx == str(model) and meta.source.onnx_sha256 == sha256_file(model)
    assert meta.source.built_from_sha256 == meta.source.onnx_sha256
    assert meta.preprocess == PREPROCESS
    assert meta.options.max_batch == 4 and meta.profiles == 1
    assert "float32" in meta.typing and meta.flags == ()
    # The engine file is exactly what TensorRT serialized: no header of ours.
    assert plan_bytes_of(engine)["version"] == fake.version


def test_profiles_one_per_slot(fake: FakeTensorRT, model: Path, tmp_path: Path) -> None:
    result = builder(fake, model).with_max_batch_size(2).with_profiles(3).build_and_save(
        tmp_path / "m.engine")
    assert len(fake.called("IBuilderConfig.add_optimization_profile")) == 3
    assert result.metadata.profiles == 3


def test_static_model_needs_no_profile(fake: FakeTensorRT, tmp_path: Path) -> None:
    onnx = tiny_model(tmp_path / "static.onnx", batch=1)
    builder(fake, onnx).build_and_save(tmp_path / "m.engine")
    assert fake.called("Builder.create_optimization_profile") == []


def test_dynamic_batch_without_max_batch_is_refused(fake: FakeTensorRT, model: Path,
                                                    tmp_path: Path) -> None:
    with pytest.raises(EngineBuildError, match=r"dynamic batch; give with_max_batch_size\(N\) "
                                               r"\(CLI: --max-batch N\)"):
        builder(fake, model).build_and_save(tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()


def test_fixed_batch_cannot_grow(fake: FakeTensorRT, tmp_path: Path) -> None:
    onnx = tiny_model(tmp_path / "static.onnx", batch=1)
    with pytest.raises(EngineBuildError, match="fixed batch of 1"):
        builder(fake, onnx).with_max_batch_size(8).build_and_save(tmp_path / "m.engine")


def test_dynamic_height_width(fake: FakeTensorRT, tmp_path: Path) -> None:
    onnx = tiny_model(tmp_path / "hw.onnx", dynamic_hw=True)
    with pytest.raises(EngineBuildError, match=r"dynamic axis 2; give with_input_shapes"):
        builder(fake, onnx).with_max_batch_size(2).build_and_save(tmp_path / "m.engine")
    (builder(fake, onnx).with_max_batch_size(2)
     .with_input_shapes(min=(16, 16), opt=(32, 48), max=(64, 64)).build_and_save(tmp_path / "m.engine"))
    assert fake.called("IOptimizationProfile.set_shape")[-1] == (
        "input", (1, 3, 16, 16), (1, 3, 32, 48), (2, 3, 64, 64))


# -- precision: the version policy ---------------------------------------------------------------
def test_int8_calibrates_then_builds_the_qdq_model(fake: FakeTensorRT, model: Path,
                                                   tmp_path: Path) -> None:
    quantizer = FakeQuantizer()
    calibrator = FakeCalibrator()
    engine = tmp_path / "tiny.engine"
    result = (builder(fake, model).with_int8(calibrator, method="entropy", quantizer=quantizer)
              .with_max_batch_size(4).build_and_save(engine))
    assert quantizer.calls == [(model, calibrator, qdq_path_for(engine), "entropy")]
    assert result.qdq_path == tmp_path / "tiny.qdq.onnx"
    assert fake.called("OnnxParser.parse_from_file") == [(str(result.qdq_path),)]
    meta = result.metadata
    assert meta.source.onnx == str(model) and meta.source.built_from == str(result.qdq_path)
    assert meta.source.built_from_sha256 == sha256_file(result.qdq_path)
    assert meta.source.calibration_fingerprint == calibrator.fingerprint
    assert meta.source.calibration_method == "entropy"
    assert meta.preprocess == PREPROCESS  # the calibrator's
    assert "strongly typed" in meta.typing and "Q/DQ" in meta.typing
    assert fake.called("IBuilderConfig.set_flag") == []


def test_qdq_model_with_fp16_on_10_uses_flags(fake10: FakeTensorRT, tmp_path: Path) -> None:
    onnx = tiny_model(tmp_path / "q.onnx", qdq=True)
    result = builder(fake10, onnx).with_int8().with_fp16().with_max_batch_size(2).build_and_save(
        tmp_path / "m.engine")
    m = fake10.module
    assert fake10.called("Builder.create_network") == [(0,)]
    assert fake10.called("IBuilderConfig.set_flag") == [(m.BuilderFlag.INT8,), (m.BuilderFlag.FP16,)]
    assert result.metadata.flags == ("INT8", "FP16")
    assert result.metadata.typing.startswith("weakly typed, flags INT8+FP16")


def test_fp32_model_with_fp16_on_10_sets_the_flag(fake10: FakeTensorRT, model: Path,
                                                  tmp_path: Path) -> None:
    builder(fake10, model).with_fp16().with_max_batch_size(2).build_and_save(tmp_path / "m.engine")
    assert fake10.called("IBuilderConfig.set_flag") == [(fake10.module.BuilderFlag.FP16,)]
    assert fake10.called("Builder.create_network") == [(0,)]


def test_fp16_on_11_needs_an_fp16_model(fake11: FakeTensorRT, model: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineBuildError, match="strongly typed networks only.*Convert the model to FP16"):
        builder(fake11, model).with_fp16().with_max_batch_size(2).build_and_save(tmp_path / "m.engine")
    assert fake11.called("Builder.build_serialized_network") == []
    assert not (tmp_path / "m.engine").exists()
    fp16 = tiny_model(tmp_path / "h.onnx", fp16=True)
    result = builder(fake11, fp16).with_fp16().with_max_batch_size(2).build_and_save(tmp_path / "m.engine")
    assert "float16" in result.metadata.typing
    assert result.metadata.inputs[0].dtype == "float16"


def test_int8_without_qdq_or_calibrator_is_refused(fake: FakeTensorRT, model: Path,
                                                   tmp_path: Path) -> None:
    with pytest.raises(EngineBuildError, match="no QuantizeLinear/DequantizeLinear nodes"):
        builder(fake, model).with_int8().with_max_batch_size(2).build_and_save(tmp_path / "m.engine")


def test_the_build_log_says_which_typing(fake: FakeTensorRT, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    onnx = tiny_model(tmp_path / "q.onnx", qdq=True)
    with caplog.at_level(logging.INFO, logger="xinfer_stream"):
        builder(fake, onnx).with_int8().with_max_batch_size(2).build_and_save(tmp_path / "m.engine")
    assert f"using TensorRT {fake.version}" in caplog.text
    assert "building q.onnx: strongly typed" in caplog.text


# -- failures -----------------------------------------------------------------------------------
def test_parser_errors_are_reported_per_node(fake: FakeTensorRT, tmp_path: Path) -> None:
    onnx = tiny_model(tmp_path / "custom.onnx", custom_op=True)
    engine = tmp_path / "m.engine"
    with pytest.raises(EngineBuildError) as info:
        builder(fake, onnx).with_max_batch_size(2).build_and_save(engine)
    message = str(info.value)
    assert "could not parse" in message and "(1 error(s))" in message
    assert "node 1 'act' (FancyAct): No importer registered for op: FancyAct [UNSUPPORTED_NODE]" in message
    assert not engine.exists() and not metadata_path_for(engine).exists()


def test_several_parser_errors_all_listed(fake: FakeTensorRT, model: Path, tmp_path: Path) -> None:
    fake.unsupported_ops = {"Conv", "GlobalAveragePool"}
    with pytest.raises(EngineBuildError, match=r"\(2 error\(s\)\): node 0 'conv' \(Conv\).*; node 2 "
                                               r"'pool' \(GlobalAveragePool\)"):
        builder(fake, model).with_max_batch_size(2).build_and_save(tmp_path / "m.engine")


def test_a_file_that_is_not_onnx(fake: FakeTensorRT, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a model")
    with pytest.raises(InvalidModelError, match="cannot read"):
        builder(fake, bad).build_and_save(tmp_path / "m.engine")


def test_failed_build_leaves_no_engine_and_keeps_the_old_one(fake: FakeTensorRT, model: Path,
                                                             tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    builder(fake, model).with_max_batch_size(2).build_and_save(engine)
    before = (engine.read_bytes(), metadata_path_for(engine).read_bytes())
    fake.fail_build = "Error Code 2: Internal Error (out of GPU memory)"
    with pytest.raises(EngineBuildError, match=r"failed to build.*TensorRT said: Error Code 2: "
                                               r"Internal Error \(out of GPU memory\)"):
        builder(fake, model).with_max_batch_size(4).build_and_save(engine)
    assert (engine.read_bytes(), metadata_path_for(engine).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json", "tiny.onnx"]


def test_precision_flags_on_a_strongly_typed_network_fail_in_the_double(fake10: FakeTensorRT,
                                                                        model: Path) -> None:
    """The double enforces TensorRT 10's rule that our policy must never break."""
    m = fake10.module
    b = m.Builder(object())
    net = b.create_network(1 << int(m.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    cfg = b.create_builder_config()
    cfg.set_flag(m.BuilderFlag.FP16)

    class L:
        def log(self, severity: object, msg: str) -> None:
            self.msg = msg

    b._logger = L()
    assert b.build_serialized_network(net, cfg) is None
    assert "not allowed on a strongly typed network" in b._logger.msg


def test_tensorrt_11_has_no_precision_flags(fake11: FakeTensorRT) -> None:
    with pytest.raises(AttributeError):
        fake11.module.BuilderFlag.FP16  # noqa: B018


# -- rebuilds -----------------------------------------------------------------------------------
def test_unchanged_rebuild_is_skipped(fake: FakeTensorRT, model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    quantizer = FakeQuantizer()
    b = builder(fake, model).with_int8(FakeCalibrator(), quantizer=quantizer).with_max_batch_size(2)
    first = b.build_and_save(engine)
    second = b.build_and_save(engine)
    assert second.skipped and second.metadata == first.metadata
    assert len(quantizer.calls) == 1
    assert len(fake.called("Builder.build_serialized_network")) == 1
    assert second.qdq_path == first.qdq_path


@pytest.mark.parametrize("change", ["options", "onnx", "calibration", "engine bytes", "gpu"])
def test_a_change_rebuilds(fake: FakeTensorRT, tmp_path: Path, change: str) -> None:
    src = tiny_model(tmp_path / "m.onnx")
    engine = tmp_path / "m.engine"
    b = builder(fake, src).with_int8(FakeCalibrator(), quantizer=FakeQuantizer()).with_max_batch_size(2)
    b.build_and_save(engine)
    if change == "options":
        b = b.with_max_batch_size(4)
    elif change == "onnx":
        proto = onnx.load(str(src))
        proto.graph.node[1].name = "act_renamed"
        onnx.save(proto, str(src))
    elif change == "calibration":
        b = b.with_int8(FakeCalibrator(fingerprint="0" * 64), quantizer=FakeQuantizer())
    elif change == "engine bytes":
        engine.write_bytes(engine.read_bytes() + b" ")
    elif change == "gpu":
        b = (EngineBuilder(tensorrt=fake.module, device_probe=lambda i: A100).from_onnx(src)
             .with_int8(FakeCalibrator(), quantizer=FakeQuantizer()).with_max_batch_size(2))
    result = b.build_and_save(engine)
    assert not result.skipped
    assert len(fake.called("Builder.build_serialized_network")) == 2


def test_timing_cache_is_reused_across_builds(fake: FakeTensorRT, model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "trt.cache"
    builder(fake, model).with_max_batch_size(2).with_timing_cache(cache).build_and_save(tmp_path / "a.engine")
    first = cache.read_bytes()
    assert fake.called("IBuilderConfig.create_timing_cache") == [(b"",)]
    builder(fake, model).with_max_batch_size(4).with_timing_cache(cache).build_and_save(tmp_path / "b.engine")
    assert fake.called("IBuilderConfig.create_timing_cache")[1] == (first,)
    assert json.loads(cache.read_bytes().split(b"\0", 1)[1])["entries"] == 8  # 4 layers, 2 builds


def test_an_unreadable_timing_cache_starts_afresh(fake: FakeTensorRT, model: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="xinfer_stream"):
        builder(fake, model).with_max_batch_size(2).with_timing_cache(cache).build_and_save(tmp_path / "a.engine")
    assert "timing cache could not be read" in caplog.text
    assert fake.called("IBuilderConfig.create_timing_cache") == [(b"garbage",), (b"",)]
    assert cache.read_bytes().startswith(b"FAKECACHE")


# -- progress -----------------------------------------------------------------------------------
def test_progress_comes_from_the_progress_monitor(fake: FakeTensorRT, model: Path,
                                                  tmp_path: Path) -> None:
    events: list[BuildProgress] = []
    builder(fake, model).with_max_batch_size(2).with_progress(events.append).build_and_save(
        tmp_path / "m.engine")
    assert [(e.kind, e.phase, e.step, e.steps) for e in events] == [
        ("start", "Building engine", 0, 2),
        ("start", "Graph optimization", 0, 1), ("step", "Graph optimization", 1, 1),
        ("finish", "Graph optimization", 1, 1),
        ("start", "Tactic selection", 0, 3), ("step", "Tactic selection", 1, 3),
        ("step", "Tactic selection", 2, 3), ("step", "Tactic selection", 3, 3),
        ("finish", "Tactic selection", 3, 3), ("finish", "Building engine", 2, 2)]
    assert events[1].parent == "Building engine" and events[0].parent is None
    assert all(b.elapsed >= a.elapsed for a, b in itertools.pairwise(events))


def test_a_failing_progress_callback_cancels_the_build(fake: FakeTensorRT, model: Path,
                                                       tmp_path: Path) -> None:
    def callback(event: BuildProgress) -> None:
        if event.kind == "step":
            raise RuntimeError("display broke")

    with pytest.raises(EngineBuildError, match="The build was cancelled"):
        builder(fake, model).with_max_batch_size(2).with_progress(callback).build_and_save(
            tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()


def test_without_a_progress_monitor_elapsed_time_is_reported(model: Path, tmp_path: Path) -> None:
    fake = FakeTensorRT("10.3.0", progress_monitor=False)
    events: list[BuildProgress] = []
    builder(fake, model).with_max_batch_size(2).with_progress(events.append).build_and_save(
        tmp_path / "m.engine")
    assert fake.called("IBuilderConfig.progress_monitor") == []
    assert all(e.kind == "elapsed" for e in events)


def test_the_ticker_ticks_and_stops() -> None:
    import time

    events: list[BuildProgress] = []
    ticker = _Ticker(events.append, time.perf_counter(), period=0.01)
    time.sleep(0.1)
    ticker.stop()
    count = len(events)
    assert count >= 2 and all(e.kind == "elapsed" for e in events)
    time.sleep(0.05)
    assert len(events) == count


# -- no TensorRT --------------------------------------------------------------------------------
@pytest.mark.usefixtures("no_tensorrt")
def test_without_tensorrt_the_qdq_model_is_still_written(model: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    quantizer = FakeQuantizer()
    with pytest.raises(EngineBuildError) as info:
        (EngineBuilder(device_probe=h100).from_onnx(model)
         .with_int8(FakeCalibrator(), quantizer=quantizer).with_max_batch_size(2).build_and_save(engine))
    message = str(info.value)
    assert "TensorRT is not installed" in message and "pip install 'xinfer-stream[tensorrt]'" in message
    assert f"The Q/DQ model was written to {str(tmp_path / 'm.qdq.onnx')!r}" in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, ImportError)
    assert (tmp_path / "m.qdq.onnx").is_file() and not engine.exists()


@pytest.mark.usefixtures("no_tensorrt")
def test_without_tensorrt_an_fp32_build_says_what_to_install(model: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineBuildError, match=r"^TensorRT is not installed \(.*\); pip install"):
        EngineBuilder(device_probe=h100).from_onnx(model).build_and_save(tmp_path / "m.engine")


def test_unsupported_tensorrt_version(model: Path, tmp_path: Path) -> None:
    fake = FakeTensorRT("8.6.1")
    with pytest.raises(EngineBuildError, match="supports TensorRT 10.x and 11.x"):
        builder(fake, model).build_and_save(tmp_path / "m.engine")


def test_builders_are_immutable(fake: FakeTensorRT, model: Path) -> None:
    base = builder(fake, model)
    bigger = base.with_max_batch_size(32)
    assert base.options.max_batch is None and bigger.options.max_batch == 32


def test_from_onnx_needs_a_file(fake: FakeTensorRT, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="ONNX model not found"):
        EngineBuilder(tensorrt=fake.module).from_onnx(tmp_path / "nope.onnx")
    with pytest.raises(EngineBuildError, match="call from_onnx"):
        EngineBuilder(tensorrt=fake.module).build_and_save(tmp_path / "m.engine")
