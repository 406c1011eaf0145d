"""The service: a config file (model, cameras, batching, postprocess, sinks) run through one
``engine.stream_many``, with Prometheus metrics and a health check (``xinfer-stream serve``)."""

from ._config import (BatchingConfig, CameraConfig, HealthConfig, MetricsConfig, ModelConfig,
                      PostprocessConfig, ServiceConfig, SinkConfig, load_config, parse_config)

__all__ = ["BatchingConfig", "CameraConfig", "HealthConfig", "MetricsConfig", "ModelConfig",
           "PostprocessConfig", "ServiceConfig", "SinkConfig", "load_config", "parse_config"]
