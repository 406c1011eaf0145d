"""Choose the default calibration method and bias correction by leave-one-source-out (issue 20).

Every configuration (``--methods`` x ``--bias``) is judged on data unlike its calibration frames,
the Q/DQ model evaluated exactly as ``quantize`` wrote it (``xinfer_stream.quantize.evaluate`` /
ONNX Runtime with ``session.disable_quant_qdq=1``: TensorRT's arithmetic):

* **EfficientNet-Lite0 on the shared clips**, one fold per clip: calibrate on ``--calib-frames``
  frames sampled (``uniform``) from every other clip, measure FP32-vs-INT8 top-1 agreement and
  logits cosine on ``--eval-frames`` frames of the clip left out.
* **MNIST (mnist-8) against its labels** (``labelled/mnist_5k.csv.gz``): ``random-k`` folds
  calibrate on ``--mnist-calib`` digits of one fifth of the set and measure top-1 accuracy on
  ``--mnist-eval`` digits of another fifth; ``digits-0-4`` / ``digits-5-9`` calibrate on those
  digits only and measure on the other five, a shift in what the activations see.

Per fold the FP32 statistics are collected once (histograms and channel means) and reused by
every configuration (``quantize(statistics=...)``), so the configurations differ only in what
they decide from the same numbers. Prints one line per measurement to stderr, then a markdown
table (mean and worst fold per model and configuration); ``--json`` keeps every number.

Usage: python3 tools/bench_default_method.py [--json tools/results/default_method.json]
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import numpy.typing as npt

from xinfer_stream.preprocess import Preprocess
from xinfer_stream.quantize import Calibrator, evaluate, quantize
from xinfer_stream.quantize._evaluate import CONFIDENCE_FLOOR
from xinfer_stream.quantize._quantize import BiasCorrection
from xinfer_stream.quantize._statistics import Statistics
from xinfer_stream.video import sample_frames

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("XINFER_SHARED_DATA", REPO.parent / "shared" / "data"))
EFFICIENTNET = SHARED / "models" / "efficientnet_lite0.onnx"
MNIST = SHARED / "models" / "mnist-8.onnx"
MNIST_DATA = SHARED / "labelled" / "mnist_5k.csv.gz"
CLIPS = ("car-detection.mp4", "bottle-detection.mp4", "walk.mkv", "box.mp4", "cup.mp4",
         "people-detection.gif")
PREPROCESS = Preprocess(size=(224, 224), resize="shorter_crop", mean=(127.0,) * 3, std=(128.0,) * 3)
METHODS = ("max", "percentile", "entropy", "mse", "auto")
BIAS = ("none", "weights", "empirical")


@dataclass(frozen=True)
class Row:
    """One configuration measured on one fold."""

    model: str
    fold: str
    method: str
    bias: str
    calib_frames: int
    eval_frames: int
    top1_agreement: float          # with the FP32 model, fraction
    sure_frames: int               # frames whose FP32 top-1 probability reaches CONFIDENCE_FLOOR
    top1_sure: float | None        # top-1 agreement on those frames
    cosine_mean: float
    cosine_min: float
    accuracy: float | None         # against labels (MNIST), fraction
    fp32_accuracy: float | None
    quantize_s: float


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=["efficientnet", "mnist"],
                        default=["efficientnet", "mnist"])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--bias", nargs="+", choices=BIAS, default=list(BIAS))
    parser.add_argument("--clips", nargs="+", default=list(CLIPS),
                        help="clip names under video/ (each is left out once)")
    parser.add_argument("--calib-frames", type=int, default=64)
    parser.add_argument("--eval-frames", type=int, default=32)
    parser.add_argument("--mnist-calib", type=int, default=64)
    parser.add_argument("--mnist-eval", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--tables", type=Path, nargs="+", default=None, metavar="JSON",
                        help="measure nothing: print the tables of earlier --json files")
    args = parser.parse_args(argv)
    if args.tables is not None:
        for path in args.tables:
            saved = json.loads(path.read_text())
            print(markdown([Row(**r) for r in saved["rows"]], saved["meta"]))
        return 0
    configs = [(m, b) for m in args.methods for b in args.bias]
    started = time.perf_counter()
    load_before = os.getloadavg()
    rows: list[Row] = []
    if "efficientnet" in args.models:
        rows += _efficientnet(args, configs)
    if "mnist" in args.models:
        rows += _mnist(args, configs)
    wall = time.perf_counter() - started
    meta = {
        "command": "python3 tools/bench_default_method.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} CPUs",
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(wall, 1),
    }
    print(markdown(rows, meta))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]},
                                        indent=1) + "\n")
    return 0


# -- EfficientNet-Lite0: leave one clip out --------------------------------------------------
def _efficientnet(args: argparse.Namespace, configs: list[tuple[str, str]]) -> list[Row]:
    clips = [SHARED / "video" / c for c in args.clips]
    held = {c.name: [f.image for f in _sample([c], args.eval_frames)] for c in clips}
    rows: list[Row] = []
    for left_out in clips:
        others = [c for c in clips if c != left_out]
        calib = [f.image for f in _sample(others, args.calib_frames)]
        calibrator = Calibrator(calib, PREPROCESS, batch_size=16, name=f"all but {left_out.name}")
        evaluation = held[left_out.name]
        rows += _fold("efficientnet_lite0", left_out.name, calibrator, EFFICIENTNET, configs,
                      args.threads,
                      lambda path, frames=evaluation: evaluate(EFFICIENTNET, path, frames,
                                                               PREPROCESS, threads=args.threads),
                      len(evaluation), None)
    return rows


def _sample(clips: list[Path], n: int) -> list[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # a short clip gives what it has; counted below
        return sample_frames([str(c) for c in clips], n)


# -- MNIST against labels ---------------------------------------------------------------------
def _mnist(args: argparse.Namespace, configs: list[tuple[str, str]]) -> list[Row]:
    with gzip.open(MNIST_DATA, "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    raw = raw[np.random.default_rng(0).permutation(len(raw))]
    labels = raw[:, -1].astype(np.int64)
    images = raw[:, :-1].reshape(-1, 1, 28, 28)
    parts = np.array_split(np.arange(len(images)), 5)
    folds: list[tuple[str, npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
    for k, part in enumerate(parts):
        folds.append((f"random-{k}", part[:args.mnist_calib],
                      parts[(k + 1) % len(parts)][:args.mnist_eval]))
    low = np.flatnonzero(labels < 5)
    high = np.flatnonzero(labels >= 5)
    folds.append(("digits-0-4", low[:args.mnist_calib], high[:args.mnist_eval]))
    folds.append(("digits-5-9", high[:args.mnist_calib], low[:args.mnist_eval]))
    rows: list[Row] = []
    for name, calib_idx, eval_idx in folds:
        calibrator = Calibrator.from_arrays(list(images[calib_idx]), batch_size=1, name=name)
        batches = [images[i][None] for i in eval_idx]
        truth = labels[eval_idx]
        fp32_accuracy = _labelled_accuracy(MNIST, batches, truth, args.threads)

        def measure(path: Path, batches: list[Any] = batches) -> Any:
            return evaluate(MNIST, path, batches, threads=args.threads)

        rows += _fold("mnist-8", name, calibrator, MNIST, configs, args.threads, measure,
                      len(eval_idx), (batches, truth, fp32_accuracy))
    return rows


def _labelled_accuracy(model: Path, batches: list[npt.NDArray[Any]], truth: npt.NDArray[Any],
                       threads: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")   # Q/DQ as written
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    predicted = np.array([int(session.run(None, {name: b})[0].argmax()) for b in batches])
    return float((predicted == truth).mean())


# -- one fold, every configuration -------------------------------------------------------------
def _fold(model_name: str, fold: str, calibrator: Calibrator, model: Path,
          configs: list[tuple[str, str]], threads: int, measure: Any, eval_frames: int,
          labelled: tuple[list[Any], npt.NDArray[Any], float] | None) -> list[Row]:
    rows: list[Row] = []
    statistics: Statistics | None = None
    # The first quantize collects everything any configuration needs (histograms, channel
    # means); the rest reuse it.
    ordered = sorted(configs, key=lambda c: (c[0] == "max", c[1] == "none"))
    with tempfile.TemporaryDirectory(prefix="bench-default-") as tmp:
        for method, bias in ordered:
            out = Path(tmp) / f"{method}-{bias}.int8.onnx"
            began = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = quantize(model, calibrator, out, method=method,
                                  bias_correction=cast(BiasCorrection, bias),
                                  threads=threads, statistics=statistics)
            seconds = time.perf_counter() - began
            if statistics is None:
                statistics = result.statistics
            report = measure(out)          # the file written, Q/DQ as written
            output = report.outputs[0]
            accuracy = fp32 = None
            if labelled is not None:
                batches, truth, fp32 = labelled
                accuracy = _labelled_accuracy(out, batches, truth, threads)
            row = Row(model_name, fold, method, bias, calibrator.num_frames, eval_frames,
                      float(output.top1_agreement or 0.0),
                      output.frames - output.low_signal_frames, output.top1_measurable,
                      output.cosine_mean, output.cosine_min, accuracy, fp32, round(seconds, 2))
            rows.append(row)
            extra = "" if accuracy is None else f" accuracy {100 * accuracy:.2f}% (fp32 {100 * (fp32 or 0):.2f}%)"
            sure = "-" if row.top1_sure is None else f"{100 * row.top1_sure:6.2f}%"
            print(f"{model_name} {fold:>22} {method:>10} {bias:>9}: agreement "
                  f"{100 * row.top1_agreement:6.2f}% (on {row.sure_frames} sure frames {sure}) "
                  f"cosine {row.cosine_mean:.4f} "
                  f"(min {row.cosine_min:.4f}){extra} [{seconds:.1f} s]", file=sys.stderr,
                  flush=True)
    return rows


# -- the table ----------------------------------------------------------------------------------
def markdown(rows: Sequence[Row], meta: dict[str, Any]) -> str:
    """Mean and worst fold per model and configuration, as a markdown table."""
    lines = [f"Command: `{meta['command']}`; {meta['machine']}; {meta['date']}; "
             f"{meta['wall_s']} s wall, load average {meta['load_before']} before, "
             f"{meta['load_after']} after.", ""]
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        folds = list(dict.fromkeys(r.fold for r in mine))
        labelled = mine[0].accuracy is not None
        lines.append(f"**{model}** ({len(folds)} folds: {', '.join(folds)}; "
                     f"{mine[0].calib_frames} calibration inputs, {mine[0].eval_frames} "
                     "evaluated a fold)")
        lines.append("")
        sure = sum(r.sure_frames for r in mine if (r.method, r.bias) == (mine[0].method, mine[0].bias))
        evaluated = sum(r.eval_frames for r in mine
                        if (r.method, r.bias) == (mine[0].method, mine[0].bias))
        lines.append(f"FP32 sure (top-1 probability >= {CONFIDENCE_FLOOR}) on {sure} of "
                     f"{evaluated} evaluated inputs.")
        lines.append("")
        head = ("| method | bias correction | top-1 agreement mean | worst fold | agreement on sure "
                "inputs (pooled) | cosine mean | worst fold |")
        rule = "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
        if labelled:
            head += " accuracy drop vs FP32 mean (points) | worst fold |"
            rule += " ---: | ---: |"
        lines += [head, rule]
        configs = sorted(dict.fromkeys((r.method, r.bias) for r in mine),
                         key=lambda c: (METHODS.index(c[0]), BIAS.index(c[1])))
        for method, bias in configs:
            these = [r for r in mine if (r.method, r.bias) == (method, bias)]
            agreement = [100 * r.top1_agreement for r in these]
            cosine = [r.cosine_mean for r in these]
            sure_total = sum(r.sure_frames for r in these)
            sure_agree = sum((r.top1_sure or 0.0) * r.sure_frames for r in these)
            pooled = f"{100 * sure_agree / sure_total:.2f}%" if sure_total else "-"
            line = (f"| {method} | {bias} | {np.mean(agreement):.2f}% | {min(agreement):.2f}% | "
                    f"{pooled} | {np.mean(cosine):.4f} | {min(cosine):.4f} |")
            if labelled:
                drops = [100 * ((r.fp32_accuracy or 0) - (r.accuracy or 0)) for r in these]
                line += f" {np.mean(drops):+.2f} | {max(drops):+.2f} |"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
