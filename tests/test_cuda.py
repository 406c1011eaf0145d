"""The CUDA layer (xinfer_stream.cuda): CPU-only behaviour everywhere, the rest on a GPU."""

from __future__ import annotations

import ast
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import xinfer_stream.cuda as xcuda
from xinfer_stream._errors import ClosedResourceError, CudaError
from xinfer_stream.cuda import Device, KernelArgs

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "xinfer_stream"


def _nvrtc_reason() -> str | None:
    try:
        xcuda.nvrtc_version()
    except CudaError as exc:
        return f"NVRTC is not installed: {exc}"
    return None


@pytest.fixture
def device() -> Iterator[Device]:
    reason = xcuda.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with Device(0) as dev:
        yield dev


# -- everywhere ---------------------------------------------------------------------------------
def test_all_is_sorted_and_complete() -> None:
    assert list(xcuda.__all__) == sorted(xcuda.__all__)
    for name in xcuda.__all__:
        assert hasattr(xcuda, name), name


def test_only_the_cuda_package_imports_cuda_python() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if (PACKAGE / "cuda") in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [])
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names
                          if n == "cuda" or n.startswith("cuda.")]
    assert offenders == []


@pytest.mark.parametrize("cls", [xcuda.Stream, xcuda.Event, xcuda.PinnedPool, xcuda.DevicePool,
                                 xcuda.PinnedBuffer, xcuda.DeviceBuffer, xcuda.Module,
                                 xcuda.Kernel, xcuda.Graph, xcuda.HostRegistration])
def test_resources_have_no_public_constructor(cls: type) -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        cls()


def test_unavailable_reason_is_a_sentence_or_none() -> None:
    reason = xcuda.unavailable_reason()
    if reason is None:
        assert xcuda.device_count() >= 1
    else:
        assert reason.startswith("no ")
        assert len(reason) > 20


def test_a_missing_device_raises_cuda_error_with_name_and_call() -> None:
    with pytest.raises(CudaError) as info:
        Device(10_000)
    err = info.value
    assert err.name.startswith(("cuda", "CUDA", "library"))
    assert err.call
    assert str(err) == f"{err.name}: {err.explanation} (in {err.call})"


def test_memory_info_of_a_missing_device_raises_cuda_error() -> None:
    with pytest.raises(CudaError) as info:
        xcuda.memory_info(10_000)
    assert info.value.name.startswith(("cuda", "CUDA", "library"))
    assert info.value.call


def test_kernel_args_point_at_their_values() -> None:
    import ctypes
    a, b = ctypes.c_int(7), ctypes.c_double(2.5)
    args = KernelArgs(a, b)
    pointers = (ctypes.c_void_p * 2).from_address(args.address)
    assert pointers[0] == ctypes.addressof(a)
    assert ctypes.c_double.from_address(pointers[1]).value == 2.5


def test_nvrtc_reports_compile_errors_with_the_log(tmp_path: Path) -> None:
    reason = _nvrtc_reason()
    if reason:
        pytest.skip(reason)
    from xinfer_stream.cuda._kernel import compile_cached
    bad = 'extern "C" __global__ void k(int* p) { p[0] = undefined_name; }'
    with pytest.raises(CudaError) as info:
        compile_cached(bad, name="bad.cu", options=(), capability=(9, 0), cache_dir=tmp_path)
    assert info.value.name == "NVRTC_ERROR_COMPILATION"
    assert "undefined_name" in info.value.explanation
    assert list(tmp_path.iterdir()) == []


def test_nvrtc_disk_cache_is_keyed_and_reused(tmp_path: Path) -> None:
    reason = _nvrtc_reason()
    if reason:
        pytest.skip(reason)
    from xinfer_stream.cuda._kernel import compile_cached
    src = 'extern "C" __global__ void k(int* p) { p[threadIdx.x] = 1; }'
    first = compile_cached(src, name="k.cu", options=(), capability=(9, 0), cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].read_bytes() == first
    # A cached entry is what comes back (mark it, then read it back).
    files[0].write_bytes(first + b"MARK")
    again = compile_cached(src, name="k.cu", options=(), capability=(9, 0), cache_dir=tmp_path)
    assert again.endswith(b"MARK")
    refreshed = compile_cached(src, name="k.cu", options=(), capability=(9, 0),
                               cache_dir=tmp_path, refresh=True)
    assert refreshed == first
    # Different options or architecture: a different entry.
    compile_cached(src, name="k.cu", options=("-lineinfo",), capability=(9, 0), cache_dir=tmp_path)
    compile_cached(src, name="k.cu", options=(), capability=(8, 0), cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert xcuda.default_cache_dir() == tmp_path / "xinfer-stream" / "kernels"


# -- on a GPU -----------------------------------------------------------------------------------
@pytest.mark.gpu
def test_device_identity(device: Device) -> None:
    assert device.compute_capability >= (7, 0)
    assert device.multiprocessors > 0 and device.total_memory > 0
    assert device.name and "Device 0" in repr(device)


@pytest.mark.gpu
def test_memory_info_sees_device_allocations(device: Device) -> None:
    free, total = xcuda.memory_info(device.ordinal)
    assert 0 < free <= total and abs(total - device.total_memory) <= total // 100
    size = 256 << 20
    with device.device_pool(size, 1):
        during, _ = xcuda.memory_info(device.ordinal)
    after, _ = xcuda.memory_info(device.ordinal)
    # Device-wide figures (another process could allocate meanwhile): generous margins.
    assert free - during >= size - (16 << 20)
    assert after - during >= size - (16 << 20)


@pytest.mark.gpu
def test_live_allocations_count_every_pool_until_it_is_freed(device: Device) -> None:
    before = xcuda.live_allocations()
    pinned = device.pinned_pool(1000, 3)
    dev = device.device_pool(1000, 2)
    during = xcuda.live_allocations()
    assert during["pinned"][0] == before["pinned"][0] + 1
    assert during["pinned"][1] - before["pinned"][1] == 3 * 4096      # page-aligned strides
    assert during["device"] == (before["device"][0] + 1, before["device"][1] + 2 * 1024)
    pinned.close()
    pinned.close()                                                    # twice: counted once
    assert xcuda.live_allocations()["pinned"] == before["pinned"]
    with pytest.warns(ResourceWarning):
        del dev                                                       # freed by the safety net
        import gc
        gc.collect()
    assert xcuda.live_allocations() == before


@pytest.mark.gpu
def test_pinned_to_device_to_pinned_round_trip(device: Device) -> None:
    n = 3 * 1024 * 1024 + 17
    with device.pinned_pool(n, 2) as pinned, device.device_pool(n, 1) as dev_pool, \
            device.create_stream() as stream:
        src, dst, buf = pinned.acquire(), pinned.acquire(), dev_pool.acquire()
        data = np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8)
        src.array[:] = data
        dst.array[:] = 0
        buf.fill(0xAB, stream=stream)
        buf.copy_from_host(src, stream=stream)
        buf.copy_to_host(dst, stream=stream)
        stream.synchronize()
        np.testing.assert_array_equal(dst.array, data)
        for loan in (src, dst, buf):
            loan.release()


@pytest.mark.gpu
def test_pitched_upload_copies_only_the_rows(device: Device) -> None:
    rows, width, pitch = 37, 100, 128
    with device.pinned_pool(rows * pitch, 1) as pinned, device.device_pool(rows * width, 1) as pool, \
            device.create_stream() as stream, pinned.acquire() as src, pool.acquire() as dst:
        padded = src.view(np.uint8, (rows, pitch))
        padded[:] = np.random.default_rng(2).integers(0, 256, (rows, pitch), dtype=np.uint8)
        dst.copy_from_host_2d(src, stream=stream, width=width, height=rows, source_pitch=pitch)
        stream.synchronize()
        np.testing.assert_array_equal(dst.read(np.uint8, (rows, width)), padded[:, :width])
        with pytest.raises(ValueError, match="do not fit"):
            dst.copy_from_host_2d(src, stream=stream, width=width, height=rows + 1,
                                  source_pitch=pitch)


@pytest.mark.gpu
def test_registered_host_memory_is_copied_where_it_is_until_unregistered(device: Device) -> None:
    """Memory someone else mapped (here an anonymous mapping, as a decoder's shared-memory ring)
    registered once: a pitched copy reads it by address; the registration counts as live until
    closed, and closing the device closes it."""
    import mmap
    rows, width, pitch = 37, 100, 4096 // 32
    region = mmap.mmap(-1, 4096 * 4)
    host = np.ndarray((len(region),), np.uint8, region)
    host[:] = np.random.default_rng(3).integers(0, 256, host.size, dtype=np.uint8)
    before = xcuda.live_allocations()["registered"]
    registration = device.register_host(host.ctypes.data, host.nbytes)
    assert xcuda.live_allocations()["registered"] == (before[0] + 1, before[1] + host.nbytes)
    with device.device_pool(rows * width, 1) as pool, device.create_stream() as stream, \
            pool.acquire() as dst:
        dst.copy_from_address_2d(host.ctypes.data + 64, stream=stream, width=width, height=rows,
                                 source_pitch=pitch)
        stream.synchronize()
        expected = np.lib.stride_tricks.as_strided(host[64:], (rows, width), (pitch, 1))
        np.testing.assert_array_equal(dst.read(np.uint8, (rows, width)), expected)
        dst.copy_from_address(host.ctypes.data + 100, 1000, stream=stream, offset=8)
        stream.synchronize()
        np.testing.assert_array_equal(dst.read(np.uint8, (1000,), offset=8), host[100:1100])
    registration.close()
    registration.close()
    assert registration.closed and xcuda.live_allocations()["registered"] == before
    with pytest.raises(ValueError, match="page-aligned"):
        device.register_host(host.ctypes.data + 64, 4096)
    again = device.register_host(host.ctypes.data, host.nbytes)
    device.close()
    assert again.closed and xcuda.live_allocations()["registered"] == before


@pytest.mark.gpu
def test_copies_are_bounds_checked_before_enqueue(device: Device) -> None:
    with device.pinned_pool(100, 1) as pinned, device.device_pool(50, 1) as pool, \
            device.create_stream() as stream, pinned.acquire() as src, pool.acquire() as dst:
        with pytest.raises(ValueError, match="do not fit a buffer of 50 bytes"):
            dst.copy_from_host(src, stream=stream)
        dst.copy_from_host(src, stream=stream, nbytes=50, source_offset=50)
        with pytest.raises(ValueError):
            dst.copy_from_host(src, stream=stream, nbytes=10, offset=45)


@pytest.mark.gpu
def test_events_order_a_copy_stream_before_a_compute_stream(device: Device) -> None:
    n = 64 * 1024 * 1024
    with device.pinned_pool(n, 2) as pinned, device.device_pool(n, 1) as pool, \
            device.create_stream() as copy, device.create_stream() as compute, \
            device.create_event() as uploaded, pinned.acquire() as src, \
            pinned.acquire() as dst, pool.acquire() as buf:
        src.array[:] = 7
        dst.array[:] = 0
        buf.fill(0, stream=compute)
        compute.synchronize()
        buf.copy_from_host(src, stream=copy)          # a large copy, still running ...
        uploaded.record(stream=copy)
        compute.wait(uploaded)                         # ... which the compute stream waits for
        buf.copy_to_host(dst, stream=compute)
        compute.synchronize()
        assert int(dst.array.min()) == 7


@pytest.mark.gpu
def test_timing_events_measure_gpu_time(device: Device) -> None:
    n = 256 * 1024 * 1024
    with device.device_pool(n, 1) as pool, device.create_stream() as stream, \
            device.create_event(timing=True) as start, device.create_event(timing=True) as end, \
            pool.acquire() as buf:
        start.record(stream=stream)
        buf.fill(1, stream=stream)
        end.record(stream=stream)
        end.synchronize()
        assert end.query() is True
        assert 0.0 < end.elapsed_ms(start) < 1000.0
    with device.create_event() as a, device.create_event() as b, pytest.raises(ValueError):
        b.elapsed_ms(a)


@pytest.mark.gpu
def test_pool_lends_each_buffer_once_and_waits(device: Device) -> None:
    with device.pinned_pool(4096, 2, write_combined=True) as pool:
        a, b = pool.acquire(), pool.acquire()
        a_pointer = a.pointer
        assert a_pointer != b.pointer and pool.available == 0
        assert pool.try_acquire() is None
        with pytest.raises(TimeoutError, match="all 2 are lent out"):
            pool.acquire(timeout=0.01)
        threading.Timer(0.05, a.release).start()
        c = pool.acquire(timeout=5)
        assert c.pointer == a_pointer
        with pytest.raises(ClosedResourceError):
            a.array  # noqa: B018 - a released loan is unusable
        a.release()  # idempotent
        b.release()
        c.release()
        assert pool.available == 2


@pytest.mark.gpu
def test_closing_a_pool_closes_its_loans_and_wakes_waiters(device: Device) -> None:
    pool = device.device_pool(1024, 1)
    loan = pool.acquire()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            pool.acquire()
        except ClosedResourceError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    pool.close()
    waiter.join(5)
    assert not waiter.is_alive() and len(errors) == 1
    assert loan.closed
    with pytest.raises(ClosedResourceError):
        loan.pointer  # noqa: B018
    loan.release()
    pool.close()


@pytest.mark.gpu
def test_closing_the_device_closes_everything_it_made() -> None:
    reason = xcuda.unavailable_reason()
    if reason:
        pytest.skip(reason)
    dev = Device(0)
    stream = dev.create_stream()
    event = dev.create_event()
    pool = dev.pinned_pool(1024, 1)
    dev.close()
    dev.close()
    assert stream.closed and event.closed and pool.closed and dev.closed
    with pytest.raises(ClosedResourceError):
        dev.create_stream()
    with pytest.raises(ClosedResourceError):
        stream.synchronize()
    stream.close()


@pytest.mark.gpu
def test_a_leaked_stream_warns(device: Device) -> None:
    stream = device.create_stream()
    with pytest.warns(ResourceWarning, match="unclosed CUDA stream"):
        del stream  # no reference cycle: collected (and the net fires) right here


@pytest.mark.gpu
def test_a_leaked_loan_warns_and_returns_to_its_pool(device: Device) -> None:
    with device.pinned_pool(64, 1) as pool:
        loan = pool.acquire()
        with pytest.warns(ResourceWarning, match="unclosed pool buffer"):
            del loan
        assert pool.available == 1


_ADD_ONE = r'''
extern "C" __global__ void add_one(int* data, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) data[i] += 1;
}
'''


@pytest.mark.gpu
def test_kernels_compile_once_and_launch(device: Device, tmp_path: Path) -> None:
    import ctypes
    module = device.load_module(_ADD_ONE, name="add_one.cu", cache_dir=tmp_path)
    assert device.load_module(_ADD_ONE, name="add_one.cu", cache_dir=tmp_path) is module
    assert len(list(tmp_path.iterdir())) == 1
    kernel = module.kernel("add_one")
    assert kernel.attribute("NUM_REGS") > 0
    n = 1000
    with device.device_pool(4 * n, 1) as pool, device.create_stream() as stream, \
            pool.acquire() as buf:
        data = np.arange(n, dtype=np.int32)
        buf.write(data)
        args = KernelArgs(ctypes.c_void_p(buf.pointer), ctypes.c_int(n))
        kernel.launch(((n + 255) // 256, 1, 1), (256, 1, 1), args, stream=stream)
        kernel.launch(((n + 255) // 256, 1, 1), (256, 1, 1), args, stream=stream)
        stream.synchronize()
        np.testing.assert_array_equal(buf.read(np.int32, (n,)), data + 2)


@pytest.mark.gpu
def test_a_corrupt_disk_cache_entry_is_recompiled(device: Device, tmp_path: Path) -> None:
    from xinfer_stream.cuda._kernel import compile_cached
    compile_cached(_ADD_ONE, name="add_one.cu", options=(), capability=device.compute_capability,
                   cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(b"not a cubin")
    module = device.load_module(_ADD_ONE, name="add_one.cu", cache_dir=tmp_path)
    assert module.kernel("add_one").attribute("NUM_REGS") > 0
    assert entry.read_bytes() != b"not a cubin"


@pytest.mark.gpu
def test_a_bad_launch_raises_cuda_error_naming_the_call(device: Device, tmp_path: Path) -> None:
    import ctypes
    kernel = device.load_module(_ADD_ONE, name="add_one.cu", cache_dir=tmp_path).kernel("add_one")
    with device.create_stream() as stream:
        args = KernelArgs(ctypes.c_void_p(0), ctypes.c_int(1))
        with pytest.raises(CudaError) as info:
            kernel.launch((1, 1, 1), (4096, 1, 1), args, stream=stream)  # too many threads
    assert "cuLaunchKernel(add_one)" in str(info.value)
    assert info.value.name.startswith("CUDA_ERROR_")


@pytest.mark.gpu
def test_graph_capture_replays_the_captured_work(device: Device, tmp_path: Path) -> None:
    import ctypes
    kernel = device.load_module(_ADD_ONE, name="add_one.cu", cache_dir=tmp_path).kernel("add_one")
    n = 256
    with device.device_pool(4 * n, 1) as pool, device.pinned_pool(4 * n, 1) as pinned, \
            device.create_stream() as stream, pool.acquire() as buf, pinned.acquire() as host:
        host.view(np.int32, (n,))[:] = 5
        args = KernelArgs(ctypes.c_void_p(buf.pointer), ctypes.c_int(n))
        with device.capture(stream) as capture:
            buf.copy_from_host(host, stream=stream)
            kernel.launch((1, 1, 1), (n, 1, 1), args, stream=stream)
            buf.copy_to_host(host, stream=stream)
        graph = capture.graph
        graph.launch(stream=stream)
        graph.launch(stream=stream)
        stream.synchronize()
        assert set(host.view(np.int32, (n,)).tolist()) == {7}
        graph.close()
        graph.close()
        with pytest.raises(ClosedResourceError):
            graph.launch(stream=stream)


@pytest.mark.gpu
def test_a_failed_capture_leaves_the_stream_usable(device: Device) -> None:
    with device.create_stream() as stream, device.device_pool(64, 1) as pool, \
            pool.acquire() as buf:
        with pytest.raises(RuntimeError, match="boom"), device.capture(stream):
            buf.fill(0, stream=stream)
            raise RuntimeError("boom")
        buf.fill(3, stream=stream)
        stream.synchronize()
        assert set(buf.read(np.uint8, (64,)).tolist()) == {3}


@pytest.mark.gpu
def test_device_arrays_speak_the_cuda_array_interface(device: Device) -> None:
    with device.device_pool(4096, 1) as pool, pool.acquire() as buf:
        view = buf.view(np.float16, (2, 3, 4))
        cai = view.__cuda_array_interface__
        assert cai["data"] == (buf.pointer, False)
        assert cai["shape"] == (2, 3, 4) and cai["typestr"] == "<f2" and cai["version"] == 3
        with pytest.raises(ValueError):
            buf.view(np.float32, (2048,))


@pytest.mark.gpu
def test_streams_from_other_threads(device: Device) -> None:
    # A worker thread uses the device's resources after make_current(), as the runtime's do.
    results: list[int] = []
    with device.device_pool(256, 1) as pool, pool.acquire() as buf:
        def work() -> None:
            device.make_current()
            with device.create_stream() as stream:
                buf.fill(9, stream=stream)
                stream.synchronize()
            results.append(int(buf.read(np.uint8, (256,)).sum()))
        t = threading.Thread(target=work)
        t.start()
        t.join(10)
    assert results == [9 * 256]


def test_no_gpu_test_in_this_file_runs_without_a_marker() -> None:
    source = Path(__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            uses_gpu = any(isinstance(a, ast.arg) and a.arg == "device" for a in node.args.args)
            marked = any("gpu" in ast.unparse(d) for d in node.decorator_list)
            assert marked or not uses_gpu, node.name
    assert os.path.basename(__file__) == "test_cuda.py"
