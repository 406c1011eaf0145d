"""Labelled held-out images for an accuracy budget against ground truth, not against FP32.

Two layouts, read with Pillow (each image converted to RGB uint8):

* an ImageFolder (:func:`read_image_folder`): one sub-folder a class, holding that class's
  images (any depth below it; hidden files ignored);
* a CSV (:func:`read_labels_csv`): ``path,class`` rows, paths relative to the CSV's folder; an
  optional first row ``path,class`` is a header.

A class is named by the model's class names (``class_names``: its label file or metadata) or,
when the model has none, by its index ``0..classes-1``. A folder or row naming a class the model
does not have is an ``InvalidCalibrationInput`` naming it; so is a label file whose name count
differs from the model's class count (:func:`check_class_names`). An image that cannot be decoded
is skipped and counted (:attr:`LabelledImages.skipped`), not fatal: one bad file among thousands
should not stop a budget search, but the count is reported.

:meth:`LabelledImages.metric` is :func:`~xinfer_stream.quantize.accuracy_drop` over these
labels: FP32 top-1 accuracy minus INT8 top-1 accuracy, in points, the Q/DQ model run as written.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import InvalidCalibrationInput
from ..preprocess import Preprocess
from ._calibrator import Calibrator
from ._sensitivity import Metric, accuracy_drop

__all__ = ["LabelledImages", "check_class_names", "read_image_folder", "read_labelled",
           "read_labels_csv"]


@dataclass(frozen=True)
class LabelledImages:
    """Decoded images (RGB uint8, ``H x W x 3``) with their class indices.

    ``paths``: each image's file; ``skipped``: files that could not be decoded; ``source``: the
    folder or CSV they were read from.
    """

    images: tuple[npt.NDArray[np.uint8], ...]
    labels: npt.NDArray[np.int64]
    paths: tuple[str, ...]
    skipped: tuple[str, ...]
    source: str

    def calibrator(self, preprocess: Preprocess, *, batch_size: int = 16) -> Calibrator:
        """The images as held-out frames, their source the folder or CSV they came from."""
        return Calibrator(list(self.images), preprocess, batch_size=batch_size,
                          name=self.source, sources=[self.source] * len(self.images))

    def metric(self) -> Metric:
        """Top-1 accuracy drop against these labels, in points (``accuracy_drop``); its details
        for the report also say where the images came from and how many were skipped."""
        metric = accuracy_drop(self.labels)
        measured = metric.details
        assert measured is not None

        def details(reference: Mapping[str, Any], candidate: Mapping[str, Any]) -> dict[str, Any]:
            return {**measured(reference, candidate), "source": self.source,
                    "skipped": list(self.skipped)}

        return replace(metric, details=details)

    def describe(self) -> str:
        """One line: how many images were read and skipped, from where."""
        classes = len(set(self.labels.tolist()))
        line = (f"{len(self.images)} labelled images of {classes} classes from "
                f"{self.source!r}")
        if self.skipped:
            shown = ", ".join(self.skipped[:3]) + (" ..." if len(self.skipped) > 3 else "")
            line += f"; {len(self.skipped)} could not be decoded and were skipped ({shown})"
        return line


def read_labelled(model: str | os.PathLike[str], *, directory: str | os.PathLike[str] | None = None,
                  csv_file: str | os.PathLike[str] | None = None,
                  labels_file: str | os.PathLike[str] | None = None) -> LabelledImages:
    """The labelled images of ``directory`` (ImageFolder) or ``csv_file`` for the classifier
    ``model`` (an ONNX file): its class count is that of its first ``(batch, classes)`` output,
    its class names those of ``labels_file`` (one a line), else of its metadata, else none
    (classes are then named by index)."""
    from ..runtime._postprocess import ModelInfo, read_labels
    from ._graph import load_model

    if (directory is None) == (csv_file is None):
        raise ValueError("give labelled images as either a folder (directory=) or a CSV "
                         "(csv_file=)")
    proto = load_model(model)
    classes = _class_count(proto, os.fspath(model))
    names: Sequence[str] | None
    if labels_file is not None:
        try:
            names = read_labels(Path(labels_file))
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidCalibrationInput(
                f"cannot read the label file {os.fspath(labels_file)!r}: {exc}") from exc
        check_class_names(names, classes, os.fspath(labels_file))
    else:
        stored = ModelInfo(metadata={p.key: p.value for p in proto.metadata_props}).labels
        names = stored if stored is not None and len(stored) == classes else None
    if directory is not None:
        return read_image_folder(directory, classes=classes, class_names=names)
    assert csv_file is not None
    return read_labels_csv(csv_file, classes=classes, class_names=names)


def _class_count(model: Any, label: str) -> int:
    """Classes of the first ``(batch, classes)`` output with a fixed class count."""
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value > 1:
            return int(dims[1].dim_value)
    raise InvalidCalibrationInput(
        f"{label!r} has no classifier output shaped (batch, classes); labelled images measure "
        "top-1 accuracy, which needs one")


def check_class_names(names: Sequence[str], classes: int, source: str) -> None:
    """``InvalidCalibrationInput`` naming ``source`` when ``names`` does not hold one name per
    class of the model."""
    if len(names) != classes:
        raise InvalidCalibrationInput(
            f"{source!r} has {len(names)} class names but the model has {classes} classes; "
            "give the label file of this model (one name a line, in class order)")


def read_image_folder(directory: str | os.PathLike[str], *, classes: int,
                      class_names: Sequence[str] | None = None) -> LabelledImages:
    """Images in an ImageFolder layout (module docstring)."""
    root = Path(directory)
    if not root.is_dir():
        raise InvalidCalibrationInput(f"labelled folder {str(root)!r} does not exist or is not "
                                      "a folder; give a folder with one sub-folder per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InvalidCalibrationInput(f"labelled folder {str(root)!r} has no class sub-folders; "
                                      "give one sub-folder per class, named after the class")
    items: list[tuple[Path, int]] = []
    for folder in folders:
        index = _class_index(folder.name, classes, class_names,
                             f"the class folder {str(folder)!r}")
        items.extend((p, index) for p in sorted(folder.rglob("*"))
                     if p.is_file() and not p.name.startswith("."))
    return _decode(items, str(root))


def read_labels_csv(path: str | os.PathLike[str], *, classes: int,
                    class_names: Sequence[str] | None = None) -> LabelledImages:
    """Images listed in a ``path,class`` CSV (module docstring)."""
    csv_path = Path(path)
    try:
        with csv_path.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except FileNotFoundError as exc:
        raise InvalidCalibrationInput(f"labels CSV {str(csv_path)!r} does not exist; give a "
                                      "file of path,class rows") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidCalibrationInput(f"cannot read the labels CSV {str(csv_path)!r}: "
                                      f"{exc}") from exc
    if rows and [c.strip().lower() for c in rows[0]] == ["path", "class"]:
        rows = rows[1:]
    items: list[tuple[Path, int]] = []
    for number, row in enumerate(rows, start=1):
        where = f"row {number} of {str(csv_path)!r}"
        if len(row) != 2:
            raise InvalidCalibrationInput(f"{where} has {len(row)} fields ({row!r}); each row is "
                                          "path,class")
        file, name = row[0].strip(), row[1].strip()
        items.append((csv_path.parent / file, _class_index(name, classes, class_names, where)))
    if not items:
        raise InvalidCalibrationInput(f"labels CSV {str(csv_path)!r} lists no images; give "
                                      "path,class rows")
    return _decode(items, str(csv_path))


def _class_index(name: str, classes: int, class_names: Sequence[str] | None, where: str) -> int:
    """The class index ``name`` stands for, or ``InvalidCalibrationInput`` naming ``where``."""
    if class_names is not None:
        try:
            return list(class_names).index(name)
        except ValueError:
            shown = ", ".join(class_names[:5]) + (" ..." if len(class_names) > 5 else "")
            raise InvalidCalibrationInput(
                f"{where} names the class {name!r}, which the model does not have (its classes: "
                f"{shown}); name classes as in the model's label file") from None
    if name.isdigit() and int(name) < classes:
        return int(name)
    raise InvalidCalibrationInput(
        f"{where} names the class {name!r}, which the model does not have: it has no class "
        f"names, so classes are its indices 0..{classes - 1} (or give --labels FILE)")


def _decode(items: Sequence[tuple[Path, int]], source: str) -> LabelledImages:
    from PIL import Image, UnidentifiedImageError

    images: list[npt.NDArray[np.uint8]] = []
    labels: list[int] = []
    paths: list[str] = []
    skipped: list[str] = []
    for path, label in items:
        try:
            with Image.open(path) as image:
                pixels: Any = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            skipped.append(str(path))
            continue
        images.append(pixels)
        labels.append(label)
        paths.append(str(path))
    if not images:
        raise InvalidCalibrationInput(
            f"none of the {len(items)} images listed in {source!r} could be decoded; give "
            "image files Pillow reads (PNG, JPEG, ...)")
    return LabelledImages(tuple(images), np.asarray(labels, dtype=np.int64), tuple(paths),
                          tuple(skipped), source)
