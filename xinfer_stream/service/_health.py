"""The service's health rule, as one function of a statistics snapshot (``/healthz`` serves it).

Unhealthy when either holds:

- **cameras failing**: more than ``failing_fraction`` of the cameras are failing: failed for
  good (never opened, broke, reconnect budget spent) or in an outage now (a live source that
  dropped and is reconnecting: its source has seen more outages than it survived);
- **engine stuck**: frames are waiting (taken from a camera, neither delivered nor dropped) and
  no result has come for ``stuck_after`` seconds.

A service with no camera is healthy (nothing is failing); so is one whose files all ended.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime import CameraStatistics, MultiStatistics
from ._config import HealthConfig

__all__ = ["Health", "assess", "frames_waiting", "is_failing"]


@dataclass(frozen=True)
class Health:
    """``healthy``, and ``reasons`` (one sentence each) when not; ``failing``: the failing
    cameras' names; ``cameras``: how many there are; ``waiting``: frames in flight;
    ``idle``: seconds since the last result."""

    healthy: bool
    reasons: tuple[str, ...]
    failing: tuple[str, ...]
    cameras: int
    waiting: int
    idle: float

    def to_json(self) -> dict[str, object]:
        return {"healthy": self.healthy, "reasons": list(self.reasons),
                "failing_cameras": list(self.failing), "cameras": self.cameras,
                "frames_waiting": self.waiting, "seconds_since_last_result": round(self.idle, 3)}


def is_failing(camera: CameraStatistics) -> bool:
    """Failed for good, or in an outage now (reconnecting)."""
    if camera.state == "failed":
        return True
    source = camera.source
    return (camera.state == "running" and source is not None
            and source.outages > source.reconnects)


def frames_waiting(camera: CameraStatistics) -> int:
    """Frames the stream took from ``camera`` that are neither delivered nor dropped yet
    (queued for a batch, or in the engine)."""
    source_drops = camera.source.drops if camera.source is not None else 0
    return max(0, camera.offered - camera.frames - (camera.drops - source_drops))


def assess(stats: MultiStatistics, *, idle: float, config: HealthConfig) -> Health:
    """The health of a stream whose statistics are ``stats`` and whose last result came
    ``idle`` seconds ago."""
    cameras = list(stats.cameras.values())
    failing = tuple(c.camera for c in cameras if is_failing(c))
    waiting = sum(frames_waiting(c) for c in cameras)
    reasons = []
    if cameras and len(failing) / len(cameras) > config.failing_fraction:
        reasons.append(f"{len(failing)} of {len(cameras)} cameras failing "
                       f"({', '.join(failing)}), above the threshold "
                       f"{config.failing_fraction:.0%}")
    if waiting and idle > config.stuck_after:
        reasons.append(f"engine stuck: {waiting} frames waiting and no result for "
                       f"{idle:.1f} s (threshold {config.stuck_after:g} s)")
    return Health(healthy=not reasons, reasons=tuple(reasons), failing=failing,
                  cameras=len(cameras), waiting=waiting, idle=idle)
