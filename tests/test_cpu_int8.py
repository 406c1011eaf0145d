"""INT8 on the CPU (issue 19): the CPU probe, the per-model choice of how ONNX Runtime runs a
model, and the warning when a Q/DQ model runs as emulated float."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import xinfer_stream as xs
from xinfer_stream.engines import CpuFeatures, EmulatedInt8Warning, OnnxRuntimeBackend
from xinfer_stream.engines._cpu_features import cpu_features, parse_cpuinfo
from xinfer_stream.engines._onnxruntime import choose_execution, quantized_layers

AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes
bogomips\t: 4890.85

processor\t: 1
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes
"""
ICELAKE = "processor\t: 0\nflags\t\t: sse4_2 avx avx2 avx512f avx512bw avx512_vnni\n"
ALDERLAKE = "processor\t: 0\nflags\t\t: avx2 avx_vnni\n"
SAPPHIRE = "flags\t\t: avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8\n"
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes crc32 asimddp i8mm\n"

NOT_EXACT = parse_cpuinfo(AVX2_ONLY, "x86_64")
EXACT = parse_cpuinfo(ICELAKE, "x86_64")


# -- the probe ----------------------------------------------------------------------------------
def test_cpuinfo_without_vnni_is_not_exact() -> None:
    assert "avx2" in NOT_EXACT.flags and "bogomips" not in NOT_EXACT.flags
    assert not NOT_EXACT.exact_int8 and NOT_EXACT.exact_int8_flags == ()
    assert NOT_EXACT.describe() == "x86_64 with avx2, without VNNI/AMX"


@pytest.mark.parametrize(("text", "flags"), [(ICELAKE, ("avx512_vnni",)), (ALDERLAKE, ("avx_vnni",)),
                                             (SAPPHIRE, ("amx_int8", "avx512_vnni"))])
def test_vnni_or_amx_makes_the_integer_kernels_exact(text: str, flags: tuple[str, ...]) -> None:
    cpu = parse_cpuinfo(text, "x86_64")
    assert cpu.exact_int8 and cpu.exact_int8_flags == flags
    assert "without" not in cpu.describe() and flags[-1] in cpu.describe()


def test_arm_and_unreadable_cpuinfo_count_as_not_exact() -> None:
    arm = parse_cpuinfo(GRAVITON, "aarch64")
    assert {"asimddp", "i8mm"} <= arm.flags and not arm.exact_int8
    assert "not verified exact" in arm.describe()
    # x86 flag names on another architecture do not count
    assert not parse_cpuinfo(ICELAKE, "aarch64").exact_int8
    nothing = parse_cpuinfo("", "x86_64")
    assert nothing.flags == frozenset() and not nothing.exact_int8


def test_the_probe_reads_this_machine_once() -> None:
    assert cpu_features() is cpu_features()
    assert isinstance(cpu_features(), CpuFeatures)


# -- the decision -------------------------------------------------------------------------------
def test_a_float_model_runs_as_it_is_everywhere() -> None:
    for cpu in (NOT_EXACT, EXACT):
        assert choose_execution(quantized=0, cpu=cpu).mode == "float"


def test_a_qdq_model_is_emulated_where_the_kernels_saturate() -> None:
    execution = choose_execution(quantized=50, cpu=NOT_EXACT)
    assert execution.mode == "int8-emulated"
    assert "saturate" in execution.reason and "without VNNI/AMX" in execution.reason
    assert execution.quantized_layers == 50 and execution.fused_layers is None


def test_a_qdq_model_runs_fused_where_exact_and_mostly_fused() -> None:
    execution = choose_execution(quantized=50, cpu=EXACT, fused=45)
    assert execution.mode == "int8-fused" and "45 of 50" in execution.reason
    assert choose_execution(quantized=2, cpu=EXACT, fused=1).mode == "int8-fused"


def test_a_model_that_fuses_little_is_emulated_even_where_exact() -> None:
    # EfficientNet-Lite0 with TensorRT's placement: ONNX Runtime fuses 2 of its 50 layers
    execution = choose_execution(quantized=50, cpu=EXACT, fused=2)
    assert execution.mode == "int8-emulated" and "only 2 of 50" in execution.reason
    with pytest.raises(ValueError, match="fused="):
        choose_execution(quantized=50, cpu=EXACT)


# -- the backend on real ONNX Runtime -----------------------------------------------------------
RNG = np.random.default_rng(19)


def _float_conv(path: Path) -> Path:
    w = RNG.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, path)
    return path


def _qdq_conv(path: Path) -> Path:
    """x -> Q -> DQ -> Conv(DQ(w)) -> Q -> DQ -> y: a Conv that ONNX Runtime fuses to QLinearConv
    (weights in [-63, 63], activations in a range where u8s8 sums cannot saturate)."""
    wq = RNG.integers(-63, 64, (4, 3, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(wq, "wq"),
             numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
             numpy_helper.from_array(np.array(1 / 64, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.int8), "xz"),
             numpy_helper.from_array(np.array(1 / 16, np.float32), "ys"),
             numpy_helper.from_array(np.array(0, np.int8), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "qdq_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _as_written(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_quantized_layers_counts_compute_nodes_that_read_dequantized_values(tmp_path: Path) -> None:
    assert quantized_layers(onnx.load(_float_conv(tmp_path / "f.onnx"))) == 0
    assert quantized_layers(onnx.load(_qdq_conv(tmp_path / "q.onnx"))) == 1


def test_float_model_runs_as_it_is_without_a_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with OnnxRuntimeBackend(_float_conv(tmp_path / "f.onnx"), cpu=NOT_EXACT) as backend:
            assert backend.execution.mode == "float"


def test_qdq_model_on_a_saturating_cpu_runs_as_written_and_says_so(tmp_path: Path) -> None:
    model = _qdq_conv(tmp_path / "q.onnx")
    x = RNG.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    with pytest.warns(EmulatedInt8Warning, match=r"q\.onnx: INT8 runs as emulated float on this "
                      r"CPU, slower than the FP32 model \(BENCHMARKS.md, 'INT8 on the CPU'\).*without "
                      r"VNNI/AMX.*Use the FP32 model on this CPU"):
        backend = OnnxRuntimeBackend(model, cpu=NOT_EXACT)
    with backend:
        assert backend.execution.mode == "int8-emulated"
        assert backend.execution.quantized_layers == 1
        np.testing.assert_array_equal(backend.run({"x": x})["y"], _as_written(model, x))


def test_qdq_model_runs_fused_where_the_kernels_are_exact(tmp_path: Path) -> None:
    model = _qdq_conv(tmp_path / "q.onnx")
    x = RNG.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend = OnnxRuntimeBackend(model, cpu=EXACT)
    with backend:
        assert backend.execution.mode == "int8-fused"
        assert (backend.execution.fused_layers, backend.execution.quantized_layers) == (1, 1)
        # the integer kernel and the float emulation may round a sum that lands on .5 apart
        fused, written = backend.run({"x": x})["y"], _as_written(model, x)
        assert np.abs(fused - written).max() <= 1 / 16 + 1e-6
        assert np.mean(fused == written) > 0.95


def test_this_machine_and_the_bundled_model(tmp_path: Path, bundled_model: Path) -> None:
    """On the real probe: the FP32 model runs as it is; a Q/DQ model either runs fused (exact
    kernels that fuse it) or warns."""
    with OnnxRuntimeBackend(bundled_model) as backend:
        assert backend.execution.mode == "float"
    model = _qdq_conv(tmp_path / "q.onnx")
    if cpu_features().exact_int8:
        with OnnxRuntimeBackend(model) as backend:
            assert backend.execution.mode == "int8-fused"
    else:
        with pytest.warns(EmulatedInt8Warning), OnnxRuntimeBackend(model) as backend:
            assert backend.execution.mode == "int8-emulated"
    assert xs.EmulatedInt8Warning is EmulatedInt8Warning
