"""INT8 explicit quantization: calibration frames -> statistics -> scales -> a Q/DQ ONNX model.

``quantize(model, Calibrator(frames, preprocess), "model.int8.onnx")`` writes the Q/DQ model,
its report (``model.int8.json``), a TensorRT calibration cache and the Preprocess sidecar;
``evaluate`` compares a Q/DQ model with its FP32 original on held-out frames;
``quantize_with_budget`` keeps in float the ops that hurt most until an accuracy budget is met.
"""

from ._budget import BudgetResult, SearchBudget, quantize_with_budget
from ._budget_report import BudgetReport, BudgetStep, UnitSensitivity, read_budget_report
from ._cache import CalibrationCache, read_calibration_cache, write_calibration_cache
from ._calibrator import Calibrator
from ._evaluate import AccuracyReport, OutputAccuracy, SourceAccuracy, TensorError, evaluate
from ._holdout import HoldoutSplit, split_holdout
from ._quantize import (CalibrationWarning, QuantizationResult, TensorCalibration, cache_path_for,
                        quantize, report_path_for)
from ._sensitivity import Metric, accuracy_drop

__all__ = [
    "AccuracyReport",
    "BudgetReport",
    "BudgetResult",
    "BudgetStep",
    "CalibrationCache",
    "CalibrationWarning",
    "Calibrator",
    "HoldoutSplit",
    "Metric",
    "OutputAccuracy",
    "QuantizationResult",
    "SearchBudget",
    "SourceAccuracy",
    "TensorCalibration",
    "TensorError",
    "UnitSensitivity",
    "accuracy_drop",
    "cache_path_for",
    "evaluate",
    "quantize",
    "quantize_with_budget",
    "read_budget_report",
    "read_calibration_cache",
    "report_path_for",
    "split_holdout",
    "write_calibration_cache",
]
