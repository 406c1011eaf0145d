"""INT8 explicit quantization: calibration frames -> statistics -> scales -> a Q/DQ ONNX model.

``quantize(model, Calibrator(frames, preprocess), "model.int8.onnx")`` writes the Q/DQ model,
its report (``model.int8.json``), a TensorRT calibration cache and the Preprocess sidecar;
``evaluate`` compares a Q/DQ model with its FP32 original on held-out frames, ``compare`` frame
by frame on a chosen video, ``compare_boxes`` a detector's INT8 boxes with its FP32 boxes;
``quantize_with_budget`` keeps in float the ops that hurt most until an accuracy budget is met;
``QuantizationResult.int8_share`` (an :class:`Int8Share`) says which weighted ops of the written
model run in INT8 and what share of the MACs they hold.
"""

from ._box_metrics import BoxAgreement, compare_boxes
from ._budget import BudgetResult, SearchBudget, SearchEstimate, quantize_with_budget
from ._budget_report import (SEARCH_ORDERS, BudgetReport, BudgetStep, UnitSensitivity,
                             format_quantization_header, format_table, read_budget_report)
from ._cache import CalibrationCache, read_calibration_cache, write_calibration_cache
from ._calibrator import Calibrator
from ._compare import ComparisonSummary, FrameComparison, compare
from ._evaluate import AccuracyReport, OutputAccuracy, SourceAccuracy, TensorError, evaluate
from ._holdout import HoldoutSplit, split_holdout
from ._labelled import LabelledImages, read_image_folder, read_labelled, read_labels_csv
from ._inspect_onnx import OnnxReport, inspect_onnx
from ._quantize import (DEFAULT_BIAS_CORRECTION, DEFAULT_METHOD, CalibrationWarning,
                        QuantizationResult, TensorCalibration, cache_path_for, quantize,
                        report_path_for)
from ._sensitivity import Metric, accuracy_drop, box_metric
from ._share import Int8Share, WeightedOp

__all__ = [
    "AccuracyReport",
    "BoxAgreement",
    "BudgetReport",
    "BudgetResult",
    "BudgetStep",
    "CalibrationCache",
    "CalibrationWarning",
    "Calibrator",
    "ComparisonSummary",
    "DEFAULT_BIAS_CORRECTION",
    "DEFAULT_METHOD",
    "FrameComparison",
    "HoldoutSplit",
    "Int8Share",
    "LabelledImages",
    "Metric",
    "OnnxReport",
    "OutputAccuracy",
    "QuantizationResult",
    "SEARCH_ORDERS",
    "SearchBudget",
    "SearchEstimate",
    "SourceAccuracy",
    "TensorCalibration",
    "TensorError",
    "UnitSensitivity",
    "WeightedOp",
    "accuracy_drop",
    "box_metric",
    "cache_path_for",
    "compare",
    "compare_boxes",
    "evaluate",
    "format_quantization_header",
    "format_table",
    "inspect_onnx",
    "quantize",
    "quantize_with_budget",
    "read_budget_report",
    "read_calibration_cache",
    "read_image_folder",
    "read_labelled",
    "read_labels_csv",
    "report_path_for",
    "split_holdout",
    "write_calibration_cache",
]
