"""Counting this process's OS threads and open descriptors, for tests that check a scenario
leaves nothing behind.

A thread of an earlier test (a codec, server or ONNX Runtime thread) may still be ending when a
scenario starts, and a joined thread's OS thread can take a moment to disappear after ``join()``
returns. So a scenario takes its baseline with :func:`steady` and compares with :func:`settled`.
"""

from __future__ import annotations

import os
import time


def census() -> tuple[int, int]:
    """(OS threads, open descriptors) of this process."""
    return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))


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
