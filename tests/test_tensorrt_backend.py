"""TensorRTBackend and its execution contexts against the TensorRT double (10 and 11)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from xinfer_stream import ClosedResourceError, EngineLoadError, InferenceError, InvalidModelError
from xinfer_stream.engines import GpuBackend, GpuExecutionContext
from xinfer_stream.engines._builder import EngineBuilder
from xinfer_stream.engines._load import load_engine
from xinfer_stream.engines._trt_backend import TensorRTBackend, TensorRTContext

from .fake_tensorrt import FakeTensorRT
from .trt_testing import fake_fixture, h100, model_fixture, tiny_model  # noqa: F401


def _load(fake: FakeTensorRT, onnx: Path, tmp_path: Path, **kw: int) -> TensorRTBackend:
    b = EngineBuilder(tensorrt=fake.module, device_probe=h100).from_onnx(onnx)
    if "max_batch" in kw:
        b = b.with_max_batch_size(kw["max_batch"])
    if "profiles" in kw:
        b = b.with_profiles(kw["profiles"])
    engine = tmp_path / "m.engine"
    b.build_and_save(engine)
    return load_engine(engine, tensorrt=fake.module, device_probe=h100)


@pytest.fixture
def backend(fake: FakeTensorRT, model: Path, tmp_path: Path) -> TensorRTBackend:
    b = _load(fake, model, tmp_path, max_batch=8, profiles=2)
    yield b
    b.close()


def test_describes_the_engine(backend: TensorRTBackend, fake: FakeTensorRT) -> None:
    assert isinstance(backend, GpuBackend)
    assert backend.kind == "tensorrt" and backend.device == "cuda"
    assert [(s.name, s.shape, s.dtype) for s in backend.inputs] == [("input", (None, 3, 16, 16), "float32")]
    assert [(s.name, s.shape) for s in backend.outputs] == [("logits", (None, 4))]
    assert backend.max_batch == 8
    assert backend.num_profiles == 2 and backend.max_contexts == 2
    assert backend.device_memory_bytes == fake.device_memory
    assert backend.tensorrt_version == fake.version
    assert backend.metadata is not None and backend.metadata.options.max_batch == 8


def test_one_profile_per_context(backend: TensorRTBackend, fake: FakeTensorRT) -> None:
    with backend.create_context() as a, backend.create_context() as b:
        assert isinstance(a, GpuExecutionContext)
        assert (a.profile, b.profile) == (0, 1)
        # Profile 0 is every context's default; only profile 1 had to be selected, once, at setup.
        assert fake.called("IExecutionContext.set_optimization_profile_async") == [(1, 0)]
        with pytest.raises(EngineLoadError, match=r"2 optimization profile\(s\), all in use.*"
                                                   r"profiles=K \(CLI: --profiles K\)"):
            backend.create_context()
    with backend.create_context() as c:  # closing gave the profiles back
        assert c.profile == 0


def test_static_engines_serve_any_number_of_contexts(fake: FakeTensorRT, tmp_path: Path) -> None:
    backend = _load(fake, tiny_model(tmp_path / "s.onnx", batch=2), tmp_path)
    try:
        assert backend.max_contexts is None and backend.max_batch == 2
        contexts = [backend.create_context() for _ in range(5)]
        assert {c.profile for c in contexts} == {0}
        assert fake.called("IExecutionContext.set_optimization_profile_async") == []
    finally:
        backend.close()
    assert all(c.closed for c in contexts)


def test_a_frame_is_bound_and_enqueued(backend: TensorRTBackend, fake: FakeTensorRT) -> None:
    with backend.create_context() as ctx:
        ctx.set_input("input", 0x7F0000000000, (3, 3, 16, 16))
        assert ctx.output_shape("logits") == (3, 4)
        ctx.set_output("logits", 0x7F0000100000)
        ctx.enqueue(stream=0xABC)
    assert fake.called("IExecutionContext.set_input_shape") == [("input", (3, 3, 16, 16))]
    assert fake.called("IExecutionContext.set_tensor_address") == [
        ("input", 0x7F0000000000), ("logits", 0x7F0000100000)]
    assert fake.called("IExecutionContext.execute_async_v3") == [(0xABC,)]


def test_a_missing_address_fails_the_enqueue(backend: TensorRTBackend) -> None:
    with backend.create_context() as ctx:
        ctx.set_input("input", 0x1000, (1, 3, 16, 16))
        with pytest.raises(InferenceError) as info:
            ctx.enqueue(stream=1)
    message = str(info.value)
    assert "Tensors without an address: ['logits']" in message
    assert "TensorRT said: IExecutionContext::enqueueV3: Error Code 3" in message


def test_a_shape_outside_the_profile_is_refused(backend: TensorRTBackend) -> None:
    with backend.create_context() as ctx, \
            pytest.raises(InferenceError, match=r"rejected shape \[9, 3, 16, 16\] for input "
                                                 r"'input': profile 0 accepts \[1, 3, 16, 16\] to "
                                                 r"\[8, 3, 16, 16\]"):
            ctx.set_input("input", 0x1000, (9, 3, 16, 16))


def test_unknown_tensors_are_named(backend: TensorRTBackend) -> None:
    with backend.create_context() as ctx:
        with pytest.raises(InferenceError, match="has no input named 'image'; its inputs are: input"):
            ctx.set_input("image", 0x1000, (1, 3, 16, 16))
        with pytest.raises(InferenceError, match="has no output named 'input'"):
            ctx.set_output("input", 0x1000)


def test_output_shape_needs_the_inputs(backend: TensorRTBackend) -> None:
    with backend.create_context() as ctx, \
            pytest.raises(InferenceError, match=r"not known yet.*not yet set: \['input'\]"):
        ctx.output_shape("logits")


def test_close_is_idempotent_and_final(backend: TensorRTBackend) -> None:
    ctx = backend.create_context()
    ctx.close()
    ctx.close()
    with pytest.raises(ClosedResourceError):
        ctx.enqueue(stream=0)
    other = backend.create_context()
    backend.close()
    backend.close()
    assert other.closed and backend.closed
    with pytest.raises(ClosedResourceError):
        backend.create_context()
    with pytest.raises(ClosedResourceError):
        other.set_output("logits", 1)


def test_a_leaked_context_warns_and_returns_its_profile(backend: TensorRTBackend) -> None:
    ctx = backend.create_context()
    assert ctx.profile == 0
    # CPython finalizes on the last reference, so the deletion itself must be inside.
    with pytest.warns(ResourceWarning, match="unclosed TensorRT execution context"):
        del ctx
        gc.collect()
    with backend.create_context() as again:
        assert again.profile == 0


def test_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        TensorRTContext()


def test_a_corrupt_engine_is_refused(fake: FakeTensorRT, tmp_path: Path) -> None:
    from xinfer_stream.engines._tensorrt import load_tensorrt

    with pytest.raises(InvalidModelError, match=r"could not deserialize 'x.engine'. TensorRT said: "
                                                r"IRuntime::deserializeCudaEngine"):
        TensorRTBackend(load_tensorrt(fake.module), b"garbage", name="x.engine")
