"""The ``xinfer-stream`` command line: one module per subcommand, on the public API only.

::

    xinfer-stream demo                          the whole product once, on bundled data (CPU)
    xinfer-stream sample VIDEO... -o DIR        calibration frames saved as a set
    xinfer-stream quantize MODEL.onnx ...       a Q/DQ INT8 model (with --max-drop: a budget)
    xinfer-stream report MODEL.int8.json        a quantization report as tables
    xinfer-stream build MODEL.onnx -o ENGINE    a TensorRT engine
    xinfer-stream inspect ENGINE                an engine's metadata and layer precisions
    xinfer-stream run MODEL SOURCE              stream a video through a model
    xinfer-stream serve CONFIG.toml             cameras through a model as a service, metrics
    xinfer-stream compare FP32 INT8 VIDEO       both models on the same frames, side by side

Every subcommand turns our errors into one line on stderr and a non-zero exit (2 for bad input,
1 for other failures, 130 when interrupted; ``quantize --max-drop`` exits 3 when the accuracy
budget is not met, while ``report`` exits 0 after reading any report); so does a failing disk (``OSError``: full, read-only, no
permission). A traceback is printed only with ``--debug``. A model without a Preprocess is
answered with the preprocessing flags to pass (``_preprocess``). Python warnings raised while a
command runs print as one line, ``xinfer-stream: warning: ...``, never with source lines.

Subcommand modules import the library inside their ``run`` functions (and the package resolves
its names on first use), so ``--help`` and argument errors answer without loading ONNX, ONNX
Runtime or PyAV.
"""

from __future__ import annotations

import argparse
import errno
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

from xinfer_stream import PreprocessNotFoundError, XInferError, __version__

from . import _build, _compare, _demo, _inspect, _quantize, _report, _run, _sample, _serve
from ._preprocess import describe_missing
from ._runner import run_async

__all__ = ["build_parser", "main", "run_async", "show_warning"]


def build_parser() -> argparse.ArgumentParser:
    """The ``xinfer-stream`` parser; each subcommand sets ``func(args) -> exit status``."""
    parser = argparse.ArgumentParser(
        prog="xinfer-stream",
        description="INT8 inference over video: quantize on your own footage, stream results.")
    parser.add_argument("--version", action="version", version=f"xinfer-stream {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (_demo, _quantize, _run, _serve, _compare, _sample, _report, _build,
                    _inspect):
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():  # restores showwarning on the way out
        warnings.showwarning = show_warning
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        print("xinfer-stream: interrupted", file=sys.stderr)
        return 130
    except (XInferError, ValueError) as exc:
        if args.debug:
            raise
        kind = "error" if isinstance(exc, ValueError) else type(exc).__name__
        message = describe_missing(exc) if isinstance(exc, PreprocessNotFoundError) else exc
        print(f"xinfer-stream: {kind}: {message}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    except OSError as exc:
        if args.debug:
            raise
        print(f"xinfer-stream: {type(exc).__name__}: {exc}{_os_hint(exc)}", file=sys.stderr)
        return 1


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for the command line: ``xinfer-stream: warning: MESSAGE`` on
    stderr, one line per line of the message; the source file and line stay out (they speak
    to us, not to the user)."""
    stream = file if file is not None else sys.stderr
    text = str(message).strip() or category.__name__
    stream.write("".join(f"xinfer-stream: warning: {part}\n" for part in text.splitlines()))
    stream.flush()


def _os_hint(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "; free some disk space or write to another folder"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "; check that this user may write there, or write to another folder"
    return ""


if __name__ == "__main__":
    sys.exit(main())
