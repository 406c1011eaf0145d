"""``xinfer-stream sample``: sample calibration frames from videos and save them as a set.

It says how many frames came from each video, and warns when videos that are copies of one scene
(:func:`~xinfer_stream.video.duplicate_sources`) hold most of the set: a calibration set that is
mostly one scene calibrates for that scene.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ._progress import StageProgress
from ._quantize import check_frames

__all__ = ["DUPLICATE_SHARE", "add_parser", "run"]

# Copies of one scene holding more than this share of the frames are worth a warning.
DUPLICATE_SHARE = 0.5


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``sample`` on an ``argparse`` subparsers object; returns its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sample", help="sample calibration frames from videos and save them as a calibration set",
        description="Sample frames that represent the footage and save them (array shards plus a "
                    "manifest with sources, timestamps and hashes) for reproducible calibration.")
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, folders or globs")
    p.add_argument("-n", "--frames", type=int, default=256, help="frames to sample (default 256)")
    p.add_argument("--strategy", choices=["uniform", "keyframes", "diverse"], default="uniform")
    p.add_argument("--seed", type=int, default=0, help="seed for 'diverse' (default 0)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                   help="calibration-set folder to write (replaced atomically if it exists)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``sample``; 0."""
    from xinfer_stream.video import duplicate_sources, sample_frames, save_calibration_set

    check_frames("--frames", args.frames)
    progress = StageProgress(enabled=not args.quiet)
    try:
        frames = sample_frames(args.videos, args.frames, strategy=args.strategy, seed=args.seed,
                               progress=progress)
    finally:
        progress.close()
    manifest = save_calibration_set(frames, args.output, metadata={
        "strategy": args.strategy, "seed": args.seed, "requested": args.frames,
        "videos": list(args.videos)})
    per_source = Counter(f.source for f in frames)
    if not args.quiet:
        print(f"wrote {len(frames)} frames from {len(per_source)} video(s) to {args.output} "
              f"(manifest {manifest.name})")
        width = max(len(str(n)) for n in per_source.values())
        for source, count in per_source.items():
            print(f"  {count:{width}d} frames  {source}")
    for group in duplicate_sources(frames):
        held = sum(per_source[s] for s in group)
        if held > DUPLICATE_SHARE * len(frames) and len(group) < len(per_source):
            names = ", ".join(os.path.basename(s) for s in group)
            print(f"xinfer-stream: warning: {held} of {len(frames)} frames come from {names}, "
                  "which look like copies of one scene: the set calibrates mostly for that scene; "
                  "leave the copies out, or sample the other videos separately", file=sys.stderr)
    return 0
