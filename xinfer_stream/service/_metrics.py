"""The service's Prometheus metrics and its HTTP endpoint (``/metrics``, ``/healthz``).

Everything goes through ``prometheus-client``, in a registry of the service's own (not the
library's global one, so several services, or tests, in one process do not collide):

- read from the stream's statistics at scrape time (a custom collector: nothing a frame):
  per camera, counters ``xinfer_camera_frames_in_total`` (taken from the camera),
  ``xinfer_camera_frames_inferred_total``, ``xinfer_camera_frames_dropped_total`` (policy
  ``latest``), ``xinfer_camera_reconnects_total``, ``xinfer_camera_outages_total``; gauges
  ``xinfer_camera_up`` (1 unless failing, see ``_health``), ``xinfer_camera_queued_frames``
  (decoded, waiting in the camera's source) and ``xinfer_camera_in_flight_frames`` (waiting
  for a batch or in the engine); ``xinfer_batches_total`` and the histogram
  ``xinfer_batch_size_frames`` (exact: from the stream's count of batches of each size);
  ``xinfer_gpu_memory_used_bytes`` (device-wide, GPU backends only);
- observed as results arrive: the histogram ``xinfer_result_latency_seconds`` (a frame's
  arrival, decoded or due, to its result being ready: ``Result.latency``);
  ``xinfer_sink_results_total`` and ``xinfer_sink_errors_total`` per sink;
- ``xinfer_model_info``: the model file, its SHA-256, backend, device and our version.

Counters of a camera start again from 0 when it is removed and added back (a SIGHUP that
changes it): Prometheus' ``rate()`` treats that as a counter reset.

The HTTP server is the standard library's WSGI server (``wsgiref``, one thread a request)
serving ``prometheus_client.make_wsgi_app`` at ``/metrics`` and the health rule at
``/healthz`` (200 or 503, a JSON body saying why). It runs on a thread ``xinfer-metrics``;
:meth:`MetricsServer.close` shuts it down and joins it.
"""

from __future__ import annotations

import io
import json
import threading
from socketserver import ThreadingMixIn
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, make_wsgi_app
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector

from .._errors import XInferError
from ..runtime import MultiStatistics
from ._health import Health, frames_waiting, is_failing

__all__ = ["MetricsServer", "ServiceMetrics"]

# End-to-end latency of one frame: a few ms on a GPU, tens to hundreds on a CPU.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """The registry of one service (``registry``) and the metrics observed as results arrive.

    ``statistics``: the stream's statistics now (``None`` before it started);
    ``gpu_memory``: bytes in use on the engine's GPU now (``None`` for CPU backends);
    ``identity``: the labels of ``xinfer_model_info``."""

    def __init__(self, *, statistics: Callable[[], MultiStatistics | None],
                 identity: dict[str, str], gpu_memory: Callable[[], int] | None = None
                 ) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("xinfer_result_latency_seconds",
                                 "Seconds from a frame's arrival (decoded, or due for a paced "
                                 "file) to its result being ready", buckets=_LATENCY_BUCKETS,
                                 registry=self.registry)
        self.sink_results = Counter("xinfer_sink_results", "Results a sink has taken",
                                    ["sink"], registry=self.registry)
        self.sink_errors = Counter("xinfer_sink_errors", "Results a sink failed on",
                                   ["sink"], registry=self.registry)
        Info("xinfer_model", "The model the service runs",
             registry=self.registry).info(identity)
        self.registry.register(_StreamCollector(statistics, gpu_memory))

    def sink_written(self, sink: str, written: int, failed: int) -> None:
        """Count a group of results a sink took (``written``) and failed on."""
        if written:
            self.sink_results.labels(sink).inc(written)
        if failed:
            self.sink_errors.labels(sink).inc(failed)


class _StreamCollector(Collector):
    """Mirrors the stream's own counters at scrape time (prometheus-client's custom
    collector: the stream already counts, so a frame costs the metrics nothing)."""

    def __init__(self, statistics: Callable[[], MultiStatistics | None],
                 gpu_memory: Callable[[], int] | None) -> None:
        self._statistics = statistics
        self._gpu_memory = gpu_memory

    def collect(self) -> Iterator[Metric]:
        stats = self._statistics()
        if stats is None:
            return
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "frames_in": CounterMetricFamily("xinfer_camera_frames_in",
                                             "Frames taken from the camera", labels=["camera"]),
            "inferred": CounterMetricFamily("xinfer_camera_frames_inferred",
                                            "Frames inferred (results made)", labels=["camera"]),
            "dropped": CounterMetricFamily("xinfer_camera_frames_dropped",
                                           "Frames dropped by policy 'latest'",
                                           labels=["camera"]),
            "reconnects": CounterMetricFamily("xinfer_camera_reconnects",
                                              "Live-source drops survived", labels=["camera"]),
            "outages": CounterMetricFamily("xinfer_camera_outages",
                                           "Live-source drops seen", labels=["camera"]),
            "up": GaugeMetricFamily("xinfer_camera_up",
                                    "1 unless the camera is failing (failed, or reconnecting)",
                                    labels=["camera"]),
            "queued": GaugeMetricFamily("xinfer_camera_queued_frames",
                                        "Decoded frames waiting in the camera's source",
                                        labels=["camera"]),
            "in_flight": GaugeMetricFamily("xinfer_camera_in_flight_frames",
                                           "Frames taken, waiting for a batch or in the engine",
                                           labels=["camera"]),
        }
        for name, cam in stats.cameras.items():
            source = cam.source
            families["frames_in"].add_metric([name], cam.offered)
            families["inferred"].add_metric([name], cam.frames)
            families["dropped"].add_metric([name], cam.drops)
            families["reconnects"].add_metric([name], cam.reconnects)
            families["outages"].add_metric([name], source.outages if source else 0)
            families["up"].add_metric([name], 0 if is_failing(cam) else 1)
            families["queued"].add_metric([name], source.queued if source else 0)
            families["in_flight"].add_metric([name], frames_waiting(cam))
        yield from families.values()
        yield CounterMetricFamily("xinfer_batches", "Engine calls (batches)",
                                  value=stats.batches)
        yield _batch_histogram(stats)
        if self._gpu_memory is not None:
            yield GaugeMetricFamily("xinfer_gpu_memory_used_bytes",
                                    "Memory in use on the engine's GPU (device-wide)",
                                    value=self._gpu_memory())


def _batch_histogram(stats: MultiStatistics) -> HistogramMetricFamily:
    """Batches by size, as cumulative buckets at powers of two up to ``max_batch``."""
    bounds = [1]
    while bounds[-1] < stats.max_batch:
        bounds.append(min(bounds[-1] * 2, stats.max_batch))
    sizes = stats.batch_sizes
    buckets: list[tuple[str, float]] = [
        (str(bound), float(sum(n for size, n in sizes.items() if size <= bound)))
        for bound in bounds]
    buckets.append(("+Inf", float(sum(sizes.values()))))
    return HistogramMetricFamily("xinfer_batch_size_frames", "Frames a batch (engine call)",
                                 buckets=buckets,
                                 sum_value=float(sum(s * n for s, n in sizes.items())))


# -- the HTTP endpoint ------------------------------------------------------------------------
class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a request in progress does not hold up shutdown


class _QuietHandler(WSGIRequestHandler):
    """The library writes nothing to stderr: not a line per scrape, and not wsgiref's
    traceback of a failing request (the client gets its 500)."""

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def get_stderr(self) -> Any:
        return io.StringIO()


class MetricsServer:
    """``/metrics`` (the registry) and ``/healthz`` (``health()``: 200 when healthy, else 503;
    JSON either way) on ``host``:``port`` (``0``: a free port; :attr:`address` says which).
    Serves from a thread ``xinfer-metrics`` until :meth:`close` (idempotent)."""

    def __init__(self, registry: CollectorRegistry, health: Callable[[], Health], *,
                 host: str, port: int) -> None:
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                try:
                    state = health()
                except XInferError as exc:  # not running (yet, or any more): not healthy
                    said: dict[str, object] = {"healthy": False, "reasons": [str(exc)]}
                    healthy = False
                else:
                    said, healthy = state.to_json(), state.healthy
                body = json.dumps(said).encode()
                start_response("200 OK" if healthy else "503 Service Unavailable",
                               [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body)))])
                return [body]
            if path in ("/metrics", "/"):
                return metrics(environ, start_response)  # type: ignore[no-any-return]
            body = b"not found: try /metrics or /healthz\n"
            start_response("404 Not Found", [("Content-Type", "text/plain"),
                                              ("Content-Length", str(len(body)))])
            return [body]

        self._server = make_server(host, port, app, server_class=_Server,
                                   handler_class=_QuietHandler)
        self.address: tuple[str, int] = (host, int(self._server.server_address[1]))
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, name="xinfer-metrics",
                                        daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def close(self) -> None:
        """Stop serving, join the thread and close the socket (blocking, a tenth of a second)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()
