"""What a short asynchronous CUDA call costs a Python thread beside another thread running
Python: with the GIL let go around the call (how cuda-python's bindings make every call) and
with the GIL held through it (the driver API called through ``ctypes.PyDLL``).

Why: each call that lets go of the GIL must win it back, and beside a thread running Python that
can take up to a switch interval (5 ms). The GPU runner makes about five such calls a batch (event
record, graph launch, event record; the waiter's wait and timing read); tools/bench_many_host.py
--release-gil showed the hand-overs costing half the host-side throughput at batch 1 on CPU-2c.
Holding the GIL through the calls that return at once (an asynchronous copy from pinned memory,
an event record) would avoid it. This measures, on a GPU, the per-call wall time of one
``cudaMemcpyAsync`` (64 KiB from pinned memory) plus one ``cudaEventRecord`` on a stream, three
ways: cuda-python (GIL let go), ``ctypes.CDLL`` on libcuda (GIL let go: the ctypes cost alone),
``ctypes.PyDLL`` on libcuda (GIL held), each alone and beside a thread spinning in pure Python;
and how many loop turns the spinning thread made meanwhile (held GIL must not starve it: calls
this short leave it the GIL between them).

Needs a CUDA GPU and cuda-python (cuda.bindings); says so and exits 2 without them.

Usage: python3 tools/bench_gil_calls.py [--calls 20000] [--switch-interval S] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_COPY = 64 * 1024
_SYNC_EVERY = 256  # calls between stream synchronisations, so the launch queue never fills


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--switch-interval", type=float, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        print(f"needs cuda-python: {exc}", file=sys.stderr)
        return 2
    status, count = cudart.cudaGetDeviceCount()
    if status != cudart.cudaError_t.cudaSuccess or count == 0:
        print(f"needs a CUDA GPU ({status})", file=sys.stderr)
        return 2

    def ok(result: tuple[Any, ...]) -> Any:
        if result[0] != cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA call failed: {result[0]}")
        return result[1] if len(result) == 2 else None

    ok(cudart.cudaSetDevice(0))
    ok(cudart.cudaFree(0))  # the primary context, current on this thread for the driver calls
    stream = ok(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
    event = ok(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming))
    host = int(ok(cudart.cudaHostAlloc(_COPY, cudart.cudaHostAllocPortable)))
    device = int(ok(cudart.cudaMalloc(_COPY)))
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    ways: dict[str, Callable[[], None]] = {}

    def with_cuda_python() -> None:
        ok(cudart.cudaMemcpyAsync(device, host, _COPY, kind, stream))
        ok(cudart.cudaEventRecord(event, stream))
    ways["cuda-python (GIL let go)"] = with_cuda_python
    for label, loader in (("ctypes.CDLL (GIL let go)", ctypes.CDLL),
                          ("ctypes.PyDLL (GIL held)", ctypes.PyDLL)):
        lib = loader("libcuda.so.1")
        copy, record = lib.cuMemcpyHtoDAsync_v2, lib.cuEventRecord
        copy.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        record.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        copy.restype = record.restype = ctypes.c_int
        s, e = ctypes.c_void_p(int(stream)), ctypes.c_void_p(int(event))

        def with_ctypes(copy: Any = copy, record: Any = record, s: Any = s, e: Any = e) -> None:
            if copy(device, host, _COPY, s) != 0 or record(e, s) != 0:
                raise RuntimeError("a driver call failed")
        ways[label] = with_ctypes

    def timed(call: Callable[[], None], busy: bool) -> tuple[float, int]:
        """Median µs a call over ``--repeats`` runs, and the spinner's loop turns a call."""
        stop, turns = threading.Event(), [0]

        def spin() -> None:
            total = 0
            while not stop.is_set():
                for i in range(200):
                    total += i * i
                turns[0] += 1

        spinner = threading.Thread(target=spin, daemon=True)
        if busy:
            spinner.start()
        try:
            runs = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                for i in range(args.calls):
                    call()
                    if i % _SYNC_EVERY == _SYNC_EVERY - 1:
                        ok(cudart.cudaStreamSynchronize(stream))
                runs.append((time.perf_counter() - started) / args.calls * 1e6)
            ok(cudart.cudaStreamSynchronize(stream))
        finally:
            stop.set()
            if busy:
                spinner.join()
        return statistics.median(runs), turns[0]

    rows = []
    try:
        for label, call in ways.items():
            call()
            ok(cudart.cudaStreamSynchronize(stream))
            alone, _ = timed(call, busy=False)
            beside, turns = timed(call, busy=True)
            rows.append({"way": label, "us_alone": alone, "us_beside_busy_thread": beside,
                         "spinner_turns_per_call": turns / (args.calls * args.repeats)})
    finally:
        ok(cudart.cudaStreamSynchronize(stream))
        ok(cudart.cudaFree(device))
        ok(cudart.cudaFreeHost(host))
        ok(cudart.cudaEventDestroy(event))
        ok(cudart.cudaStreamDestroy(stream))
    name = ok(cudart.cudaGetDeviceProperties(0)).name.decode(errors="replace")
    print(f"One cudaMemcpyAsync ({_COPY // 1024} KiB, pinned) + one cudaEventRecord, {args.calls} "
          f"calls x {args.repeats}; {name}; switch interval {sys.getswitchinterval() * 1e3:g} ms; "
          f"{datetime.date.today()}\n")
    print("| way | µs a call, alone | µs a call, beside a busy thread | spinner turns a call |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['way']} | {r['us_alone']:.2f} | {r['us_beside_busy_thread']:.2f} | "
              f"{r['spinner_turns_per_call']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
