"""Budgets against labels: ImageFolder and CSV held-out images, their bad-input errors, the CLI,
and a real labelled run (mnist-8 on the shared MNIST digits)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from xinfer_stream._errors import InvalidCalibrationInput
from xinfer_stream.cli import main
from xinfer_stream.quantize import (Calibrator, quantize_with_budget, read_image_folder,
                                    read_labelled, read_labels_csv)

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
COLOURS = ("red", "green", "blue")
SIZE = 8


def colour_classifier(path: Path) -> Path:
    """x [batch, 3, 8, 8] -> conv 1x1 (identity) -> GlobalAveragePool -> Flatten -> Gemm
    (identity) -> logits [batch, 3]: the dominant colour channel, a classifier that is right
    on every image whose colour is clear."""
    eye = np.eye(3, dtype=np.float32)
    inits = [numpy_helper.from_array(eye.reshape(3, 3, 1, 1), "conv.w"),
             numpy_helper.from_array(np.zeros(3, np.float32), "conv.b"),
             numpy_helper.from_array(eye, "fc.w"),
             numpy_helper.from_array(np.zeros(3, np.float32), "fc.b")]
    nodes = [helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv"),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "colours", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                         ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def coloured(index: int, rng: np.random.Generator) -> np.ndarray:
    image = rng.integers(0, 90, (SIZE, SIZE, 3), dtype=np.uint8)
    image[..., index] += 150
    return image


def image_folder(root: Path, per_class: int = 4, *, broken: int = 0) -> Path:
    rng = np.random.default_rng(0)
    for index, name in enumerate(COLOURS):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(coloured(index, rng)).save(root / name / f"{k}.png")
    for k in range(broken):
        (root / "red" / f"broken{k}.png").write_bytes(b"not a png at all")
    return root


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return colour_classifier(tmp_path / "colours.onnx")


@pytest.fixture
def names(tmp_path: Path) -> Path:
    path = tmp_path / "colours.txt"
    path.write_text("\n".join(COLOURS) + "\n")
    return path


def test_image_folder_by_class_names_skips_and_counts_broken_images(tmp_path: Path) -> None:
    got = read_image_folder(image_folder(tmp_path / "set", broken=2), classes=3,
                            class_names=COLOURS)
    assert len(got.images) == 12 and got.labels.tolist() == [2] * 4 + [1] * 4 + [0] * 4
    assert len(got.skipped) == 2 and all("broken" in p for p in got.skipped)
    assert "2 could not be decoded and were skipped" in got.describe()
    assert got.images[0].shape == (SIZE, SIZE, 3) and got.images[0].dtype == np.uint8


def test_folder_naming_a_class_the_model_lacks_is_an_error_naming_it(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "set")
    (root / "purple").mkdir()
    with pytest.raises(InvalidCalibrationInput, match=r"purple.*names the class 'purple'"):
        read_image_folder(root, classes=3, class_names=COLOURS)


def test_without_class_names_folders_are_indices(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for name in ("0", "2"):
        (root / name).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / name / "a.png")
    assert read_image_folder(root, classes=3).labels.tolist() == [0, 2]
    (root / "3").mkdir()
    with pytest.raises(InvalidCalibrationInput, match=r"class '3'.*indices 0\.\.2"):
        read_image_folder(root, classes=3)


def test_a_label_file_with_the_wrong_count_is_an_error_naming_it(model: Path,
                                                                 tmp_path: Path) -> None:
    two = tmp_path / "two.txt"
    two.write_text("red\ngreen\n")
    with pytest.raises(InvalidCalibrationInput, match=r"two\.txt' has 2 class names but the "
                                                      r"model has 3 classes"):
        read_labelled(model, directory=image_folder(tmp_path / "set"), labels_file=two)


def test_csv_rows_relative_paths_and_errors(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "set", per_class=1)
    listing = tmp_path / "set" / "labels.csv"
    listing.write_text("path,class\nred/0.png,red\nblue/0.png,blue\nmissing.png,green\n")
    got = read_labels_csv(listing, classes=3, class_names=COLOURS)
    assert got.labels.tolist() == [0, 2] and got.skipped == (str(root / "missing.png"),)
    listing.write_text("red/0.png,red\nblue/0.png,cyan\n")
    with pytest.raises(InvalidCalibrationInput, match=r"row 2 of .*labels\.csv.*'cyan'"):
        read_labels_csv(listing, classes=3, class_names=COLOURS)
    listing.write_text("red/0.png\n")
    with pytest.raises(InvalidCalibrationInput, match=r"row 1 .* 1 fields"):
        read_labels_csv(listing, classes=3, class_names=COLOURS)


def test_cli_budget_against_labels(model: Path, names: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    video = _video(tmp_path / "clip.mp4", 12)
    root = image_folder(tmp_path / "set", broken=1)
    out = tmp_path / "colours.int8.onnx"
    args = ["quantize", str(model), "--calib", str(video), "--frames", "8", "--size", str(SIZE),
            str(SIZE), "--std", "255", "255", "255", "--max-drop", "0", "--bias-correction",
            "none", "-o", str(out)]
    assert main([*args, "--labels-dir", str(root), "--labels", str(names)]) == 0
    printed = capsys.readouterr().out
    assert "12 labelled images of 3 classes" in printed and "1 could not be decoded" in printed
    assert "top-1 accuracy 100.00% against the labels of 12 held-out images (FP32 100.00%); " \
        "1 undecodable image skipped" in printed
    assert main(["report", str(out)]) == 0
    assert "top-1 accuracy 100.00%" in capsys.readouterr().out
    details = json.loads(out.with_suffix(".json").read_text())["budget"]["details"]
    assert details["source"] == str(root) and len(details["skipped"]) == 1

    (root / "purple").mkdir()
    assert main([*args, "--labels-dir", str(root), "--labels", str(names)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "purple" in err[0]

    two = tmp_path / "two.txt"
    two.write_text("red\ngreen\n")
    listing = tmp_path / "set.csv"
    listing.write_text("set/red/0.png,red\n")
    assert main([*args, "--labels-csv", str(listing), "--labels", str(two)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two.txt' has 2 class names but the model has 3 classes" in err[0]

    without_budget = [a for a in args if a not in ("--max-drop", "0")]
    assert main([*without_budget, "--labels-dir", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--labels-dir set the accuracy budget's metric; add --max-drop" \
        in err[0]


def test_mnist_budget_against_its_labels(tmp_path: Path) -> None:
    """The real labelled digits, written as PNGs in an ImageFolder (folders 0..9: mnist-8 has no
    class names), read back, and measured as the budget. mnist-8 takes one channel, which a
    Preprocess does not make, so the decoded images go in as arrays."""
    with gzip.open(SHARED / "labelled" / "mnist_5k.csv.gz", "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    raw = raw[np.random.default_rng(0).permutation(len(raw))][:300]
    digits, pixels = raw[:, -1].astype(np.int64), raw[:, :-1].reshape(-1, 28, 28)
    root = tmp_path / "digits"
    for k, (digit, image) in enumerate(zip(digits[100:], pixels[100:], strict=True)):
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(root / str(digit) / f"{k}.png")
    labelled = read_labelled(SHARED / "models" / "mnist-8.onnx", directory=root)
    assert len(labelled.images) == 200 and not labelled.skipped
    assert sorted(labelled.labels.tolist()) == sorted(digits[100:].tolist())
    held = np.stack([i[..., 0] for i in labelled.images]).astype(np.float32)[:, None]
    result = quantize_with_budget(
        SHARED / "models" / "mnist-8.onnx",
        Calibrator.from_arrays(pixels[:100, None], batch_size=1, name="calibration"),
        tmp_path / "mnist.int8.onnx", holdout=Calibrator.from_arrays(held, batch_size=1,
                                                                     name="digits"),
        max_drop=0.5, metric=labelled.metric(), method="max", bias_correction="none",
        sensitivity_frames=16)
    details = result.report.details
    assert details["frames"] == 200 and details["fp32_accuracy"] > 0.95
    assert result.drop == pytest.approx(
        100.0 * (details["fp32_accuracy"] - details["int8_accuracy"]), abs=1e-9)
    assert result.met and math.isfinite(result.drop)


def _video(path: Path, count: int) -> Path:
    import av

    rng = np.random.default_rng(5)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for k in range(count):
            image = np.kron(coloured(k % 3, rng), np.ones((4, 4, 1), np.uint8))
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
