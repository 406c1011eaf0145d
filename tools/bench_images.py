"""What ``images=True`` costs a frame: ``VideoFrame.to_rgb`` of real footage scaled to a size.

Decodes ``--clip`` (default: the shared car-detection.mp4) scaled by swscale to ``--size``
(default 1920x1080) in each host format the runtime meets (rgb24 on CPU backends, yuv420p on the
GPU path, nv12, bgr24), then times ``to_rgb()`` on each decoded frame, on this thread (one
core), and prints the median and p90 per format.

Usage: python3 tools/bench_images.py [--clip FILE] [--size 1920x1080] [--frames 60]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from xinfer_stream.video import open_source

_CLIP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video" / "car-detection.mp4"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, default=_CLIP)
    p.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT the frames are scaled to")
    p.add_argument("--frames", type=int, default=60)
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    print(f"clip {args.clip.name} scaled to {width}x{height}, {args.frames} frames")
    for fmt in ("rgb24", "bgr24", "yuv420p", "nv12"):
        times = []
        with open_source(args.clip, format=fmt, width=width, height=height) as source:
            for frame in source:
                started = time.perf_counter()
                frame.to_rgb()
                times.append(time.perf_counter() - started)
                if len(times) == args.frames:
                    break
        times.sort()
        print(f"{fmt:8} to_rgb: median {statistics.median(times) * 1e3:.2f} ms, "
              f"p90 {times[int(0.9 * (len(times) - 1))] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
