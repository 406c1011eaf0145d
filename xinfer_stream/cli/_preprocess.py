"""The preprocessing flags every subcommand that needs a Preprocess shares, defined once.

``--preprocess FILE`` or ``--size/--resize/--mean/--std/--color`` describe it; with neither, the
library resolves the model's own (its ``.preprocess.json`` sidecar or an engine's metadata). When
none is found, :func:`describe_missing` turns the library's
:class:`~xinfer_stream.PreprocessNotFoundError` into the flags to pass.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xinfer_stream import Preprocess, PreprocessNotFoundError
from xinfer_stream.engines import (backend_kind, find_image_input, open_backend,
                                   resolve_preprocess)

__all__ = ["FLAGS", "add_preprocess_options", "describe_missing", "preprocess_from_args",
           "resolve_from_args"]

# The flags that describe a Preprocess field by field (what --preprocess FILE replaces).
FLAGS = ("size", "resize", "mean", "std", "color")


def add_preprocess_options(p: argparse.ArgumentParser) -> None:
    """Add the ``preprocessing`` group to a subcommand's parser."""
    g = p.add_argument_group("preprocessing (default: the model's own, from its "
                             ".preprocess.json sidecar or an engine's metadata)")
    g.add_argument("--preprocess", type=Path, metavar="FILE", help="a Preprocess JSON file")
    g.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="model input height and width (default: from the model)")
    g.add_argument("--resize", choices=["stretch", "letterbox", "shorter_crop"], default=None)
    g.add_argument("--mean", type=float, nargs=3, metavar=("C0", "C1", "C2"),
                   help="subtracted per model input channel, in the model's channel order "
                        "(after --color: with --color bgr the first value applies to blue); "
                        "0..255 scale")
    g.add_argument("--std", type=float, nargs=3, metavar=("C0", "C1", "C2"),
                   help="divided per model input channel, in the same order as --mean; 0..255 "
                        "scale")
    g.add_argument("--color", choices=["rgb", "bgr"], default=None)


def preprocess_from_args(args: argparse.Namespace, model: Path) -> Preprocess | None:
    """The Preprocess the options describe; None when they describe none (use the model's).

    Field flags fill in what they leave out from the model's image input: its size (unless
    ``--size``), layout and dtype; the model is opened to read it. A PyTorch model has no input
    to read: ``--size`` is then required, and the layout and dtype are the defaults.
    """
    flags = {k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None}
    if args.preprocess is not None:
        if flags:
            raise ValueError("give either --preprocess FILE or the --size/--resize/--mean/--std/"
                             f"--color options, not both (got {sorted(flags)})")
        return Preprocess.load(args.preprocess)
    if not flags:
        return None
    if backend_kind(model) == "torch":  # no input tensor to read: the Preprocess defines it
        if "size" not in flags:
            raise ValueError(f"{model.name!r} is a PyTorch model, whose input size comes from the "
                             "Preprocess: pass --size H W")
        size = flags.pop("size")
        return Preprocess(size=(int(size[0]), int(size[1])), **flags)
    backend = open_backend(model)
    try:
        image = find_image_input(backend.inputs, model.name)
    finally:
        backend.close()
    size = flags.pop("size", None) or (image.height, image.width)
    if size[0] is None or size[1] is None:
        raise ValueError(f"{model.name!r} has a dynamic input size; pass --size H W")
    return Preprocess(size=(int(size[0]), int(size[1])), layout=image.layout,
                      dtype=image.spec.dtype, **flags)


def resolve_from_args(args: argparse.Namespace, model: Path) -> Preprocess:
    """The options' Preprocess, else the model's own; ``PreprocessNotFoundError`` when neither
    exists (``main`` prints it with :func:`describe_missing`)."""
    return resolve_preprocess(model, preprocess_from_args(args, model))


def describe_missing(exc: PreprocessNotFoundError) -> str:
    """The command line's wording of a missing Preprocess: the flags that give one."""
    return (f"no Preprocess for {str(exc.model)!r}: describe the model's input with --size H W "
            "(when its input size is dynamic), --resize, --mean C0 C1 C2, --std C0 C1 C2 and --color, "
            f"as it was trained; or pass --preprocess FILE.json; or put one at "
            f"{str(exc.sidecar)!r}. Models written by 'xinfer-stream quantize' carry theirs.")
