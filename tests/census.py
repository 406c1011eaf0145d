"""Counting this process's OS threads and open descriptors, for tests that check a scenario
leaves nothing behind.

A thread of an earlier test (a codec, server or ONNX Runtime thread) may still be ending when a
scenario starts, and a joined thread's OS thread can take a moment to disappear after ``join()``
returns. So a scenario takes its baseline with :func:`steady` (after collecting garbage) and asks
:func:`left_behind` at its end: no more threads and descriptors than at its start. Counts, not
thread ids: a thread of an earlier test may end during the scenario (CI saw 7 threads before a
scenario and 2 after), and a library may end idle pool threads and start others in their place
(FFmpeg's worker threads did in tests/test_service_video.py, in the whole suite's order); what
a scenario did leave is named.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Census:
    threads: frozenset[int]  # OS thread ids
    descriptors: int


def census() -> Census:
    """This process's OS threads and the number of its open descriptors."""
    threads = frozenset(int(t) for t in os.listdir("/proc/self/task"))
    return Census(threads, len(os.listdir("/proc/self/fd")))


def steady(quiet: float = 0.25, within: float = 5.0) -> Census:
    """The census once it has not changed for ``quiet`` seconds (at most ``within``), after
    collecting garbage: counting a thread that is still ending would make the scenario look as
    if it ended a thread."""
    gc.collect()
    deadline = time.monotonic() + within
    now, since = census(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.01)
        if (latest := census()) != now:
            now, since = latest, time.monotonic()
    return now


def left_behind(before: Census, within: float = 5.0) -> list[str]:
    """What the scenario left since ``before``, once nothing is or after ``within`` seconds:
    when there are more threads than ``before`` had, each thread that was not there (by id and
    name), and the descriptors beyond ``before``'s count. Empty when it left nothing."""
    deadline = time.monotonic() + within
    while (left := _extra(before, census())) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def _extra(before: Census, now: Census) -> list[str]:
    left = []
    if len(now.threads) > len(before.threads):
        left += [f"thread {t} ({_name(t)})" for t in sorted(now.threads - before.threads)]
    if now.descriptors > before.descriptors:
        left.append(f"{now.descriptors - before.descriptors} more open descriptors")
    return left


def _name(thread: int) -> str:
    """The Python thread's name, else the OS thread's (a native library's thread)."""
    for t in threading.enumerate():
        if t.native_id == thread:
            return t.name
    try:
        with open(f"/proc/self/task/{thread}/comm") as f:
            return f.read().strip()
    except OSError:  # ended meanwhile (ENOENT, or ESRCH while it is being reaped)
        return "ended"
