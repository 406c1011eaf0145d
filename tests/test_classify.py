"""classify() reads the model (issue 19 item 3): no second softmax on probabilities, label names
from the model's metadata, and a labels list of the wrong length refused with both counts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

import xinfer_stream as xs
from xinfer_stream.runtime._postprocess import ModelInfo, model_info

PRE = xs.Preprocess((8, 8))


def ctx(metadata: dict[str, str] | None = None, producers: dict[str, str] | None = None) -> xs.FrameContext:
    return xs.FrameContext((8, 8), PRE, ModelInfo(metadata=metadata or {}, producers=producers or {}))


def test_logits_get_a_softmax() -> None:
    logits = np.array([[2.0, 1.0, 0.0]], np.float32)
    top = xs.classify(top=3)({"y": logits}).top
    e = np.exp([2.0, 1.0, 0.0])
    np.testing.assert_allclose([p for _, _, p in top], e / e.sum(), rtol=1e-6)
    assert [i for i, _, _ in top] == [0, 1, 2]


def test_probabilities_are_not_softmaxed_again() -> None:
    # The orientation classifier of issue 19: the model said 0.811, a second softmax gave 0.41.
    probs = np.array([[0.811, 0.1, 0.05, 0.039]], np.float32)
    best = xs.classify(top=1)({"prob": probs}).best
    assert best[0] == 0 and best[2] == pytest.approx(0.811, abs=1e-6)


def test_a_softmax_output_is_used_as_it_is_even_when_rounding_breaks_the_sum() -> None:
    # An INT8/fp16 model's softmax may not sum to 1 exactly; the producer op says what it is.
    probs = np.array([[0.70, 0.20, 0.05]], np.float32)    # sums to 0.95
    assert xs.classify(top=1)({"p": probs}, ctx(producers={"p": "Softmax"})).best[2] == pytest.approx(0.70)
    assert xs.classify(top=1)({"p": probs}).best[2] != pytest.approx(0.70)   # looks like logits


def test_labels_come_from_the_model_metadata() -> None:
    logits = np.array([[0.0, 3.0, 1.0, 0.0]], np.float32)
    names = "{0: 'up', 1: 'right', 2: 'down', 3: 'left'}"     # as Ultralytics writes them
    assert xs.classify(top=1)({"y": logits}, ctx({"names": names})).best[1] == "right"
    assert xs.classify(top=1)({"y": logits}, ctx({"labels": "up\nright\ndown\nleft"})).best[1] == "right"
    # Explicit labels win; metadata with another class count is not used.
    assert xs.classify(top=1, labels=list("abcd"))({"y": logits}, ctx({"names": names})).best[1] == "b"
    assert xs.classify(top=1)({"y": logits}, ctx({"names": "{0: 'a'}"})).best[1] == "1"


@pytest.mark.parametrize("count", [1000, 3])
def test_a_labels_list_of_the_wrong_length_names_both_numbers(count: int) -> None:
    logits = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match=f"labels has {count} names but the model's output 'y' has 4 classes"):
        xs.classify(labels=[f"c{i}" for i in range(count)])({"y": logits})


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="top"):
        xs.classify(top=0)
    with pytest.raises(ValueError, match="labels"):
        xs.classify(labels="cat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no such output"):
        xs.classify(output="missing")({"y": np.zeros((1, 2), np.float32)})


def softmax_classifier(path: Path, metadata: dict[str, str]) -> Path:
    """A 4-class ONNX classifier ending in Softmax: probabilities from the image's mean colour."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32) * 0.05
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "softmax_classifier",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 4])],
                              initializer=[numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def test_the_runtime_reads_the_model(tmp_path: Path) -> None:
    model = softmax_classifier(tmp_path / "cls.onnx", {"names": "{0: 'red', 1: 'green', 2: 'blue', 3: 'none'}"})
    green = np.zeros((8, 8, 3), np.uint8)
    green[..., 1] = 200

    async def main() -> tuple[xs.Result, list[xs.Result]]:
        async with xs.load(model, preprocess=PRE) as engine:
            info = model_info(engine.backend)
            assert info.producers == {"probs": "Softmax"} and info.labels == ("red", "green", "blue", "none")
            assert model_info(engine.backend) is info   # read once
            one = await engine.infer(green, postprocess=xs.classify(top=2))
            async with engine.stream([green, green], postprocess=xs.classify(top=1)) as results:
                return one, [r async for r in results]

    one, streamed = asyncio.run(main())
    probs = one.outputs["probs"][0]
    assert one.prediction.best[1] == "green"
    assert one.prediction.best[2] == pytest.approx(float(probs.max()))   # the model's own number
    assert [r.prediction.best[1] for r in streamed] == ["green", "green"]
