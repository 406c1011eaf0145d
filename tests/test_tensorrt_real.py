"""Real TensorRT: build and run EfficientNet-Lite0 engines, compare with ONNX Runtime.

Marked ``tensorrt`` (and ``gpu``): they skip, with the reason, where ``import tensorrt`` fails or
no CUDA device is usable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xinfer_stream.engines._builder import EngineBuilder
from xinfer_stream.engines._inspect import inspect_engine
from xinfer_stream.engines._load import load_engine
from xinfer_stream.engines._onnxruntime import EmulatedInt8Warning, OnnxRuntimeBackend
from xinfer_stream.preprocess import Preprocess, preprocess_batch

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu, pytest.mark.slow]

LITE0 = Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0, 127.0, 127.0),
                   std=(128.0, 128.0, 128.0))


@pytest.fixture(scope="module", autouse=True)
def _needs_tensorrt_and_gpu() -> None:
    from xinfer_stream.engines._tensorrt import tensorrt_missing_reason

    reason = tensorrt_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    from xinfer_stream.cuda import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def _frames(clip: Path, n: int) -> list[np.ndarray]:
    from xinfer_stream.video import sample_frames

    return [f.image for f in sample_frames(clip, n, strategy="uniform")]


def test_fp32_engine_matches_onnxruntime(bundled_model: Path, bundled_clip: Path,
                                         tmp_path: Path) -> None:
    engine = tmp_path / "lite0.engine"
    result = (EngineBuilder().from_onnx(bundled_model).with_max_batch_size(8, opt=4)
              .with_preprocess(LITE0).build_and_save(engine))
    assert result.metadata.inputs[0].profile is not None
    batch = preprocess_batch(LITE0, _frames(bundled_clip, 8))
    with load_engine(engine) as trt_backend, OnnxRuntimeBackend(bundled_model) as ort_backend:
        got = trt_backend.run({"input": batch})["logits"]
        want = ort_backend.run({"input": batch})["logits"]
        assert got.shape == want.shape == (8, 1000)
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)
        assert (got.argmax(1) == want.argmax(1)).all()
        # A smaller batch inside the profile runs on the same engine.
        small = trt_backend.run({"input": batch[:3]})["logits"]
        np.testing.assert_allclose(small, want[:3], rtol=1e-2, atol=1e-2)
    assert result.skipped is False
    assert EngineBuilder().from_onnx(bundled_model).with_max_batch_size(8, opt=4) \
        .with_preprocess(LITE0).build_and_save(engine).skipped


def test_int8_engine_agrees_with_its_qdq_model(bundled_model: Path, bundled_clip: Path,
                                               tmp_path: Path) -> None:
    from xinfer_stream.quantize import Calibrator

    calibrator = Calibrator(_frames(bundled_clip, 64), LITE0, batch_size=16)
    engine = tmp_path / "lite0_int8.engine"
    result = (EngineBuilder().from_onnx(bundled_model).with_int8(calibrator)
              .with_max_batch_size(16).build_and_save(engine))
    assert result.qdq_path is not None and result.qdq_path.is_file()
    report = inspect_engine(engine)
    assert report.layers is not None and report.precision_counts().get("int8", 0) > 10, report.format()
    batch = preprocess_batch(LITE0, _frames(bundled_clip, 16)[::-1])
    with pytest.warns(EmulatedInt8Warning):  # the reference: the Q/DQ model as written
        reference = OnnxRuntimeBackend(result.qdq_path)
    with load_engine(engine) as trt_backend, reference as qdq:
        got = trt_backend.run({"input": batch})["logits"]
        want = qdq.run({"input": batch})["logits"]
    agreement = float((got.argmax(1) == want.argmax(1)).mean())
    assert agreement >= 0.8, agreement


def test_contexts_run_on_caller_streams(bundled_model: Path, tmp_path: Path) -> None:
    """Two slots, two profiles, each enqueued on its own stream, as the runtime drives them."""
    from xinfer_stream.cuda import Device

    engine = tmp_path / "lite0.engine"
    EngineBuilder().from_onnx(bundled_model).with_max_batch_size(2).with_profiles(2) \
        .build_and_save(engine)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    with load_engine(engine) as backend, Device(0) as device:
        want = backend.run({"input": x})["logits"]
        streams = [device.create_stream(), device.create_stream()]
        inputs = device.device_pool(x.nbytes, 2)
        outputs = device.device_pool(2 * 1000 * 4, 2)
        slots = []
        for stream in streams:
            ctx = backend.create_context()
            inp, out = inputs.acquire(), outputs.acquire()
            inp.write(x)
            ctx.set_input("input", inp.pointer, x.shape)
            ctx.set_output("logits", out.pointer)
            ctx.enqueue(stream=stream.handle)
            slots.append((ctx, out, stream))
        assert sorted(ctx.profile for ctx, _, _ in slots) == [0, 1]
        for ctx, out, stream in slots:
            stream.synchronize()
            np.testing.assert_allclose(out.read(np.float32, (2, 1000)), want, rtol=1e-4, atol=1e-4)
            ctx.close()
        inputs.close()
        outputs.close()
