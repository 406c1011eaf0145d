"""``xinfer-stream serve CONFIG``: run a service config until SIGINT or SIGTERM.

The config (TOML; see ``xinfer_stream/service/_config.py`` and the README) names the model,
the cameras, the batching, the postprocess and the sinks. Lines for people go to stderr,
since standard output may carry a JSON lines sink (``path = "-"``): the cameras and the
metrics URL at start, one line per camera event (opened, ended, failed, removed) and per
reload, and one summary line at the end.

Signals: SIGHUP re-reads CONFIG and applies its cameras while the others keep streaming (a
config that fails to read is reported and the running one kept; other sections that changed
are named as needing a restart). SIGINT and SIGTERM stop cleanly: no new frame is taken, every
frame already taken is delivered to the sinks (what a hung engine keeps past
``--drain-timeout`` is counted as lost), everything is released, and the exit status is 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._runner import run_async

if TYPE_CHECKING:  # imported where used: --help must not load the library
    from xinfer_stream import CameraEvent, ServiceConfig, ServiceSummary
    from xinfer_stream.service import ActorEvent, CameraOutage, Reload

__all__ = ["add_parser", "format_reload", "format_summary", "serve"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` on an ``argparse`` subparsers object; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="run cameras through a model as a service (a TOML config), with metrics")
    p.add_argument("config", type=Path, help="the service's TOML config file")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve /metrics (Prometheus) and /healthz on PORT (0: a free port, "
                        "printed at start); default: the config's [metrics] port, else none")
    p.add_argument("--metrics-host", default=None, metavar="HOST",
                   help="the address to serve metrics on (default: the config's, else "
                        "127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--until-done", action="store_true",
                   help="stop once every camera has ended or failed (files), instead of "
                        "waiting for SIGINT/SIGTERM")
    p.add_argument("--drain-timeout", type=float, default=10.0, metavar="S",
                   help="on a stop, seconds to deliver the frames in flight (default 10)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the cameras on Ray actors (one per GPU; CPU actors on ONNX "
                        "Runtime without one), moving those of an actor that dies: 'auto' "
                        "(this machine's cluster), HOST:PORT or ray://HOST:PORT. Needs "
                        "pip install 'xinfer-stream[ray]'")
    p.set_defaults(func=serve)
    return p


def format_reload(config: Path, reload: Reload) -> str:
    parts = [f"{what} {', '.join(names)}" for what, names in
             (("added", reload.added), ("removed", reload.removed),
              ("restarted", reload.restarted)) if names]
    line = f"reloaded {str(config)!r}: " + ("; ".join(parts) or "cameras unchanged")
    if reload.ignored:
        line += f"; not applied (restart to apply): {', '.join(reload.ignored)}"
    return line


def format_summary(summary: ServiceSummary) -> str:
    """The one line ``serve`` ends with."""
    per_camera = ", ".join(f"{c.camera} {c.delivered}" for c in summary.cameras.values())
    line = (f"{summary.ended} after {summary.elapsed:.1f} s: {len(summary.cameras)} cameras, "
            f"{summary.delivered} results delivered, {summary.dropped} frames dropped by "
            f"policy, {summary.lost} lost in flight" + (f" ({per_camera})" if per_camera else ""))
    errors = [f"{s.name} {s.errors} ({type(s.last_error).__name__}: {s.last_error})"
              for s in summary.sinks if s.errors]
    if errors:
        line += f"; sink errors: {'; '.join(errors)}"
    return line


def _say(line: str) -> None:
    print(f"xinfer-stream: {line}", file=sys.stderr, flush=True)


def _event_line(event: CameraEvent | CameraOutage | ActorEvent) -> None:
    from xinfer_stream.service import ActorEvent, CameraOutage

    if isinstance(event, CameraOutage):
        _say(f"camera {event.camera}: moved from {event.source} to {event.target} "
             f"({event.reason}), {event.seconds:.1f} s without results")
        return
    why = f": {type(event.error).__name__}: {event.error}" if event.error is not None else ""
    if isinstance(event, ActorEvent):
        where = f" (pid {event.pid} on {event.node})" if event.pid is not None else ""
        _say(f"{event.actor}: {event.kind}{where}{why}")
        return
    _say(f"camera {event.camera}: {event.kind}{why}")


def _read(args: argparse.Namespace) -> ServiceConfig:
    """The config file with the command line's metrics options over its own."""
    from xinfer_stream import load_config

    config = load_config(args.config)
    metrics = config.metrics
    if args.metrics_port is not None:
        if not 0 <= args.metrics_port <= 65535:
            raise ValueError(f"--metrics-port must be 0..65535, got {args.metrics_port}")
        metrics = dataclasses.replace(metrics, port=args.metrics_port)
    if args.metrics_host is not None:
        metrics = dataclasses.replace(metrics, host=args.metrics_host)
    return dataclasses.replace(config, metrics=metrics)


def serve(args: argparse.Namespace) -> int:
    """Run ``serve``: start, stream until a stop signal (or ``--until-done``), summarise; 0."""
    import asyncio
    import signal

    from xinfer_stream import ConfigError, PreprocessNotFoundError, Service, XInferError

    if not args.drain_timeout > 0:
        raise ValueError(f"--drain-timeout must be positive seconds, got {args.drain_timeout}")
    config = _read(args)

    async def main() -> ServiceSummary:
        loop = asyncio.get_running_loop()
        service = Service(config, drain_timeout=args.drain_timeout, on_event=_event_line,
                          ray=args.ray)
        try:
            await service.start()
        except PreprocessNotFoundError as exc:
            raise ConfigError(f"{args.config}: model.preprocess: no Preprocess for "
                              f"{str(exc.model)!r}: give model.preprocess (a JSON file or a "
                              f"table) or put one at {str(exc.sidecar)!r}") from exc
        reloading = asyncio.Lock()
        reloads: set[asyncio.Task[None]] = set()

        async def reload() -> None:
            async with reloading:
                try:
                    fresh = await asyncio.to_thread(_read, args)
                    _say(format_reload(args.config, await service.reload(fresh)))
                except (XInferError, ValueError, OSError) as exc:
                    _say(f"warning: reload of {str(args.config)!r} not applied: {exc}")

        def on_hangup() -> None:
            task = asyncio.ensure_future(reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        try:
            names = ", ".join(c.name for c in config.cameras) or "none yet"
            _say(f"serving {config.model.path.name}: cameras {names}"
                 + (f"; metrics at {service.metrics_url}/metrics and /healthz"
                    if service.metrics_url else ""))
            signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            for sig in signals[:2]:
                loop.add_signal_handler(sig, service.stop)
            loop.add_signal_handler(signal.SIGHUP, on_hangup)
            try:
                return await service.run(until_idle=args.until_done)
            finally:
                for sig in signals:
                    loop.remove_signal_handler(sig)
                for task in list(reloads):
                    task.cancel()
                await asyncio.gather(*reloads, return_exceptions=True)
        finally:
            await service.aclose()

    summary = run_async(main())
    _say(format_summary(summary))
    return 0
