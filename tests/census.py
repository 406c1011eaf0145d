"""Counting this process's OS threads and open descriptors, for tests that check a scenario
leaves nothing behind.

A thread of an earlier test (a codec, server or ONNX Runtime thread) may still be ending when a
scenario starts, and a joined thread's OS thread can take a moment to disappear after ``join()``
returns. So a scenario takes its baseline with :func:`steady` and asks :func:`left_behind` at its
end. Threads are compared by id: one of an earlier test that ends during the scenario (garbage
collected there, say) is not mistaken for the scenario's, and a new one is named.
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
    """What the scenario left since ``before``: each thread that was not there (by id and
    name) and the descriptors beyond ``before``'s count, once none is left or after
    ``within`` seconds. Empty when the scenario left nothing."""
    deadline = time.monotonic() + within
    while (left := _extra(before, census())) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def _extra(before: Census, now: Census) -> list[str]:
    left = [f"thread {t} ({_name(t)})" for t in sorted(now.threads - before.threads)]
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
