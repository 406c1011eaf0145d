"""INT8 explicit quantization: calibration frames -> statistics -> scales -> a Q/DQ ONNX model.

``quantize(model, Calibrator(frames, preprocess), "model.int8.onnx")`` writes the Q/DQ model,
its report (``model.int8.json``), a TensorRT calibration cache and the Preprocess sidecar;
``evaluate`` compares a Q/DQ model with its FP32 original on held-out frames.
"""

from ._cache import CalibrationCache, read_calibration_cache, write_calibration_cache
from ._calibrator import Calibrator
from ._evaluate import AccuracyReport, OutputAccuracy, TensorError, evaluate
from ._quantize import (CalibrationWarning, QuantizationResult, TensorCalibration, cache_path_for,
                        quantize, report_path_for)

__all__ = ["AccuracyReport", "CalibrationCache", "CalibrationWarning", "Calibrator",
           "OutputAccuracy", "QuantizationResult", "TensorCalibration", "TensorError",
           "cache_path_for", "evaluate", "quantize", "read_calibration_cache", "report_path_for",
           "write_calibration_cache"]
