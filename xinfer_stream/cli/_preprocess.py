"""The preprocessing flags every subcommand that needs a Preprocess shares, defined once.

``--preprocess FILE`` or ``--size/--resize/--mean/--std/--color`` (and, for letterbox,
``--pad-value/--letterbox-align``) describe it; with neither, the
library resolves the model's own (its ``.preprocess.json`` sidecar, an engine's metadata, an
Ultralytics detector's metadata), and where the model has none, ``--detect yolox`` or ``--detect
yolov8`` stand for that family's documented input (``Preprocess.for_detector``, said on stderr).
When none is found, :func:`describe_missing` turns the library's
:class:`~xinfer_stream.PreprocessNotFoundError` into the flags to pass.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: --help must not load the library
    from xinfer_stream import Preprocess, PreprocessNotFoundError
    from xinfer_stream.engines import ImageInput

__all__ = ["FLAGS", "ExactCount", "add_preprocess_options", "describe_missing",
           "preprocess_from_args", "resolve_from_args"]

# The flags that describe a Preprocess field by field (what --preprocess FILE replaces).
FLAGS = ("size", "resize", "mean", "std", "color", "pad_value", "letterbox_align")


class ExactCount(argparse.Action):
    """``nargs="+"`` that insists on exactly ``count`` values, so ``--mean 1 2 3 4`` fails
    naming ``--mean`` (with ``nargs=3`` argparse blames an "unrecognized argument" instead)."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, count: int, what: str,
                 **kwargs: Any) -> None:
        self._count, self._what = count, what
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if len(values) != self._count:
            raise argparse.ArgumentError(
                self, f"expected {self._count} values ({self._what}), got {len(values)}: "
                      f"{' '.join(map(str, values))}")
        setattr(namespace, self.dest, values)


def add_preprocess_options(p: argparse.ArgumentParser) -> None:
    """Add the ``preprocessing`` group to a subcommand's parser."""
    g = p.add_argument_group("preprocessing (default: the model's own, from its "
                             ".preprocess.json sidecar or an engine's metadata)")
    g.add_argument("--preprocess", type=Path, metavar="FILE", help="a Preprocess JSON file")
    g.add_argument("--size", type=int, action=ExactCount, count=2, what="height and width",
                   metavar="N", help="model input height and width: --size H W (default: from "
                                     "the model)")
    g.add_argument("--resize", choices=["stretch", "letterbox", "shorter_crop"], default=None)
    g.add_argument("--mean", type=float, action=ExactCount, count=3, what="one per channel",
                   metavar="V",
                   help="--mean C0 C1 C2: subtracted per model input channel, in the model's channel order "
                        "(after --color: with --color bgr the first value applies to blue); "
                        "0..255 scale")
    g.add_argument("--std", type=float, action=ExactCount, count=3, what="one per channel",
                   metavar="V",
                   help="--std C0 C1 C2: divided per model input channel, in the same order as --mean; 0..255 "
                        "scale")
    g.add_argument("--color", choices=["rgb", "bgr"], default=None)
    g.add_argument("--pad-value", type=float, default=None, metavar="V",
                   help="letterbox only: the border's pixel value on the 0..255 scale, as the "
                        "model was trained (e.g. 114 for YOLO detectors; default: the mean, "
                        "which normalises to 0)")
    g.add_argument("--letterbox-align", choices=["center", "top-left"], default=None,
                   help="letterbox only: where the resized frame sits (center as Ultralytics "
                        "does, top-left as YOLOX does; default center)")


def preprocess_from_args(args: argparse.Namespace, model: Path) -> Preprocess | None:
    """The Preprocess the options describe; None when they describe none (use the model's).

    Field flags fill in what they leave out from the model's image input: its size (unless
    ``--size``), layout and dtype; the model is opened to read it. A PyTorch model has no input
    to read: ``--size`` is then required, and the layout and dtype are the defaults.
    """
    from xinfer_stream import Preprocess
    from xinfer_stream.engines import backend_kind, find_preprocess

    flags = {k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None}
    if args.preprocess is not None:
        if flags:
            raise ValueError("give either --preprocess FILE or the --size/--resize/--mean/--std/"
                             "--color/--pad-value/--letterbox-align options, not both (got "
                             f"{sorted(flags)})")
        return Preprocess.load(args.preprocess)
    if not flags:
        family = getattr(args, "detect", None)
        if family in _FAMILY_INPUTS and find_preprocess(model) is None:
            return _family_preprocess(family, model)
        return None
    letterbox_only = sorted(f"--{k.replace('_', '-')}" for k in ("pad_value", "letterbox_align")
                            if k in flags)
    if letterbox_only and flags.get("resize") != "letterbox":
        verb = "is" if len(letterbox_only) == 1 else "are"
        raise ValueError(f"{' and '.join(letterbox_only)} {verb} for a letterbox: pass "
                         "--resize letterbox too")
    if backend_kind(model) == "torch":  # no input tensor to read: the Preprocess defines it
        if "size" not in flags:
            raise _torch_needs_size(model)
        size = flags.pop("size")
        return Preprocess(size=(int(size[0]), int(size[1])), **flags)
    image = _image_input(model)
    return Preprocess(size=_input_size(model, image, flags.pop("size", None)),
                      layout=image.layout, dtype=image.spec.dtype, **flags)


def _torch_needs_size(model: Path) -> ValueError:
    return ValueError(f"{model.name!r} is a PyTorch model, whose input size comes from the "
                      "Preprocess: pass --size H W")


def _image_input(model: Path) -> ImageInput:
    """The model's image input, read from the model opened for it (and closed again)."""
    from xinfer_stream.engines import find_image_input, open_backend

    backend = open_backend(model)
    try:
        return find_image_input(backend.inputs, model.name)
    finally:
        backend.close()


def _input_size(model: Path, image: ImageInput, size: Sequence[int] | None = None,
                also: str = "") -> tuple[int, int]:
    """``size`` (``--size``) when given, else the image input's; a dynamic one needs ``--size``
    (and ``also``, said after it)."""
    height, width = size if size is not None else (image.height, image.width)
    if height is None or width is None:
        raise ValueError(f"{model.name!r} has a dynamic input size; pass --size H W{also}")
    return int(height), int(width)


# What the command line says it assumed, per detector family (Preprocess.for_detector's inputs).
_FAMILY_INPUTS = {"yolox": "YOLOX's preproc: letterbox at the top left, 114 border, BGR, 0..255",
                  "yolov8": "Ultralytics' LetterBox: centred, 114 border, RGB, 0..1"}


def _family_preprocess(family: str, model: Path) -> Preprocess:
    """``Preprocess.for_detector(family)`` at the model's input size, layout and dtype, said on
    stderr (the model records no Preprocess of its own)."""
    from xinfer_stream import Preprocess
    from xinfer_stream.engines import backend_kind

    if backend_kind(model) == "torch":
        raise _torch_needs_size(model)
    image = _image_input(model)
    size = _input_size(model, image,
                       also=" (and --resize letterbox ... as the model was trained)")
    pre = Preprocess.for_detector(family, size, layout=image.layout, dtype=image.spec.dtype)
    print(f"xinfer-stream: {model.name} records no Preprocess; --detect {family} gives it "
          f"{_FAMILY_INPUTS[family]} at {size[0]}x{size[1]} (describe another with "
          "--resize/--mean/--std/--color, or --preprocess FILE)", file=sys.stderr)
    return pre


def resolve_from_args(args: argparse.Namespace, model: Path) -> Preprocess:
    """The options' Preprocess, else the model's own; ``PreprocessNotFoundError`` when neither
    exists (``main`` prints it with :func:`describe_missing`)."""
    from xinfer_stream.engines import resolve_preprocess

    return resolve_preprocess(model, preprocess_from_args(args, model))


def describe_missing(exc: PreprocessNotFoundError) -> str:
    """The command line's wording of a missing Preprocess: the flags that give one."""
    return (f"no Preprocess for {str(exc.model)!r}: describe the model's input with --size H W "
            "(when its input size is dynamic), --resize, --mean C0 C1 C2, --std C0 C1 C2 and --color, "
            f"as it was trained; or pass --preprocess FILE.json; or put one at "
            f"{str(exc.sidecar)!r}. Models written by 'xinfer-stream quantize' carry theirs.")
