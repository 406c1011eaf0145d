"""The service: a config file (model, cameras, batching, postprocess, sinks) run through one
``engine.stream_many``, with Prometheus metrics and a health check (``xinfer-stream serve``);
and the fleet that spreads the cameras over Ray actors with fail-over (:func:`open_fleet`, with
its camera assignment, :class:`Coordinator`; Ray itself is imported only when a fleet opens:
``pip install 'xinfer-stream[ray]'``)."""

from ._config import (BatchingConfig, CameraConfig, HealthConfig, MetricsConfig, ModelConfig,
                      PostprocessConfig, ServiceConfig, SinkConfig, load_config, parse_config)
from ._coordinator import Coordinator, Move
from ._fleet import (ActorEvent, ActorStatistics, CameraOutage, Fleet, FleetItem, FleetOptions,
                     FleetStatistics, open_fleet)
from ._health import Health, assess
from ._metrics import MetricsServer, ServiceMetrics
from ._service import CameraSummary, Reload, Service, ServiceSummary
from ._sinks import CallbackSink, JsonLinesSink, Sink, SinkFeeder, SinkStatistics, open_sinks

__all__ = ["ActorEvent", "ActorStatistics", "BatchingConfig", "CallbackSink", "CameraConfig",
           "CameraOutage", "CameraSummary", "Coordinator", "Fleet", "FleetItem", "FleetOptions",
           "FleetStatistics", "Health", "HealthConfig", "JsonLinesSink", "MetricsConfig",
           "MetricsServer", "ModelConfig", "Move", "PostprocessConfig", "Reload", "Service",
           "ServiceConfig", "ServiceMetrics", "ServiceSummary", "Sink", "SinkConfig",
           "SinkFeeder", "SinkStatistics", "assess", "load_config", "open_fleet", "open_sinks",
           "parse_config"]
