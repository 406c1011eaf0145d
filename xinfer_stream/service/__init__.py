"""The service: a config file (model, cameras, batching, postprocess, sinks) run through one
``engine.stream_many``, with Prometheus metrics and a health check (``xinfer-stream serve``)."""

from ._config import (BatchingConfig, CameraConfig, HealthConfig, MetricsConfig, ModelConfig,
                      PostprocessConfig, ServiceConfig, SinkConfig, load_config, parse_config)
from ._health import Health, assess
from ._metrics import MetricsServer, ServiceMetrics
from ._service import CameraSummary, Reload, Service, ServiceSummary
from ._sinks import CallbackSink, JsonLinesSink, Sink, SinkFeeder, SinkStatistics, open_sinks

__all__ = ["BatchingConfig", "CallbackSink", "CameraConfig", "CameraSummary", "Health",
           "HealthConfig", "JsonLinesSink", "MetricsConfig", "MetricsServer", "ModelConfig",
           "PostprocessConfig", "Reload", "Service", "ServiceConfig", "ServiceMetrics",
           "ServiceSummary", "Sink", "SinkConfig", "SinkFeeder", "SinkStatistics", "assess",
           "load_config", "open_sinks", "parse_config"]
