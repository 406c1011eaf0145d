"""Make the H.264 clips the runtime benchmark decodes: a real shared clip scaled up and looped.

Usage: python3 tools/make_bench_clip.py SOURCE OUT.mp4 WIDTH HEIGHT FRAMES
(as run for BENCHMARKS.md: car-detection.mp4 -> car_1080p.mp4 1920 1080 600, and
car_720p.mp4 1280 720 600; libx264 veryfast, crf 27, 30 fps).
"""

from __future__ import annotations

import sys
from fractions import Fraction

import av


def main() -> int:
    source, out_path, width, height, count = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                              int(sys.argv[4]), int(sys.argv[5]))
    with av.open(source) as inp, av.open(out_path, "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "27", "preset": "veryfast"}
        written = 0
        while written < count:
            inp.seek(0)
            for frame in inp.decode(video=0):
                scaled = frame.reformat(width=width, height=height, format="yuv420p")
                scaled.pts, scaled.time_base = written, Fraction(1, 30)
                for packet in stream.encode(scaled):
                    out.mux(packet)
                written += 1
                if written >= count:
                    break
        for packet in stream.encode():
            out.mux(packet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
