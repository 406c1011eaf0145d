"""Counting this process's OS threads and open descriptors, for tests that check a scenario
leaves nothing behind.

A thread of an earlier test (a codec, server or ONNX Runtime thread) may still be ending when a
scenario starts, and a joined thread's OS thread can take a moment to disappear after ``join()``
returns. So a scenario takes its baseline with :func:`steady` and compares with :func:`settled`.

Threads of gRPC's pools are not counted: Ray's client (tests/test_fleet_ray*.py run Ray in this
process) leaves them after ``ray.shutdown()`` and gRPC starts and reaps them on its own schedule,
minutes later, in whichever test happens to be running (CI saw 22 threads become 17 in the middle
of tests/test_video_process.py). None of them is ours; every thread we start is still counted.
"""

from __future__ import annotations

import os
import time


# The names (Linux truncates them to 15 characters) gRPC gives its threads.
GRPC_THREADS = frozenset(
    {"default-executo", "event_engine", "gcs_client_io_s", "grpc_global_tim", "resolver-execut",
     "timer_manager"}
)


def _thread_name(task: str) -> str | None:
    try:
        with open(f"/proc/self/task/{task}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:  # the thread ended while we were counting
        return None


def census() -> tuple[int, int]:
    """(OS threads other than gRPC's, open descriptors) of this process."""
    names = (_thread_name(task) for task in os.listdir("/proc/self/task"))
    threads = sum(1 for name in names if name is not None and name not in GRPC_THREADS)
    return threads, len(os.listdir("/proc/self/fd"))


def steady(quiet: float = 0.25, within: float = 5.0) -> tuple[int, int]:
    """The census once it has not changed for ``quiet`` seconds (at most ``within``): counting
    a thread that is still ending would make the scenario look as if it ended a thread."""
    deadline = time.monotonic() + within
    now, since = census(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.01)
        if (latest := census()) != now:
            now, since = latest, time.monotonic()
    return now


def settled(before: tuple[int, int], within: float = 5.0) -> tuple[int, int]:
    """The census once it is back to ``before`` (or after ``within`` seconds)."""
    deadline = time.monotonic() + within
    while (now := census()) != before and time.monotonic() < deadline:
        time.sleep(0.01)
    return now
