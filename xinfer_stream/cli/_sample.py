"""``xinfer-stream sample``: sample calibration frames from videos and save them as a set."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from xinfer_stream.video import sample_frames, save_calibration_set

__all__ = ["add_parser", "run"]


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
    frames = sample_frames(args.videos, args.frames, strategy=args.strategy, seed=args.seed,
                           progress=False if args.quiet else None)
    manifest = save_calibration_set(frames, args.output, metadata={
        "strategy": args.strategy, "seed": args.seed, "requested": args.frames,
        "videos": list(args.videos)})
    if not args.quiet:
        sources = len({f.source for f in frames})
        print(f"wrote {len(frames)} frames from {sources} video(s) to {args.output} "
              f"(manifest {manifest.name})")
    return 0
