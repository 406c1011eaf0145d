"""What ``run`` writes besides its rows: ``--save`` (an annotated video), ``--save-frames``
(annotated JPEGs) and ``--json`` (one line a frame).

Every path is checked before the model is loaded (a missing folder, one this user cannot write, a
video name without a known container), so a typo fails in a second, not after the inference. The
video and the JSON lines go to temporary files beside their destinations, renamed over them
only when the stream ends without an error: an error leaves the previous files (or none), never
partial ones; so does Ctrl-C on a file, while Ctrl-C on a live source (a URL, a camera) is how
its recording ends, and finishes them. Each JPEG is written whole or not at all.

The pictures are the results' own frames (``engine.stream(..., images=True)``), so live sources
work as files do. The video's frame rate: a file's own rate; for a live source, measured from
the timestamps of its first frames (``video.RATE_SAMPLE_FRAMES``, held until then), else
30 frames a second; the closing line says which.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: --help must not load the library
    from xinfer_stream import Result

__all__ = ["Outputs", "add_output_options", "check_arguments", "check_folder",
           "check_output_file"]

_VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")


def add_output_options(p: argparse.ArgumentParser) -> None:
    """Add the ``outputs`` group to ``run``'s parser."""
    g = p.add_argument_group("outputs (written atomically: an error or Ctrl-C leaves the previous "
                             "file, or none)")
    g.add_argument("--save", type=Path, metavar="VIDEO",
                   help="write the video with the detections (--detect) or the top class (--top) "
                        "drawn on each frame: H.264 at the source's frame rate (.mp4, .mov, .mkv);"
                        " on a live source until Ctrl-C, at the rate its timestamps show")
    g.add_argument("--save-frames", type=Path, metavar="DIR",
                   help="write annotated JPEGs of every --save-every-th frame into DIR")
    g.add_argument("--save-every", type=int, default=None, metavar="N",
                   help="with --save-frames: every Nth frame (default: about one a second, by "
                        "the source's frame rate)")
    g.add_argument("--json", type=Path, metavar="FILE",
                   help="write one JSON line a frame: frame, pts, source, camera, and the "
                        "detections or classes")


def check_output_file(flag: str, path: Path) -> None:
    """``ValueError`` naming ``flag`` and ``path`` unless a file can be made at ``path``: its
    folder exists and this user can create files there (tried, not guessed from mode bits)."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a folder; give a file name")
    check_folder(flag, folder, path)


def check_folder(flag: str, folder: Path, named: Path | None = None) -> None:
    """``ValueError`` naming ``flag`` unless ``folder`` exists and accepts new files."""
    shown = str(named if named is not None else folder)
    if not folder.exists():
        raise ValueError(f"{flag} {shown!r}: the folder {str(folder)!r} does not exist; create it "
                         "or write somewhere else")
    if not folder.is_dir():
        raise ValueError(f"{flag} {shown!r}: {str(folder)!r} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".xinfer-stream-write-test.", dir=folder)
    except OSError as exc:
        raise ValueError(f"{flag} {shown!r}: cannot write in {str(folder)!r} "
                         f"({exc.strerror or exc}); check its permissions or write somewhere "
                         "else") from None
    os.close(fd)
    os.unlink(probe)


def check_arguments(args: argparse.Namespace) -> None:
    """The output flags' own checks, before anything is opened."""
    if args.save is not None:
        if args.save.suffix.lower() not in _VIDEO_SUFFIXES:
            raise ValueError(f"--save {str(args.save)!r}: name the video .mp4, .m4v, .mov or .mkv")
        check_output_file("--save", args.save)
    if args.json is not None:
        check_output_file("--json", args.json)
    if args.save_frames is not None:
        parent = args.save_frames.parent if str(args.save_frames.parent) else Path(".")
        if args.save_frames.exists() and not args.save_frames.is_dir():
            raise ValueError(f"--save-frames {str(args.save_frames)!r} is a file; give a folder")
        check_folder("--save-frames", args.save_frames if args.save_frames.is_dir() else parent,
                     args.save_frames)
    elif args.save_every is not None:
        raise ValueError("--save-every says how often --save-frames writes; pass --save-frames DIR")
    if args.save_every is not None and args.save_every < 1:
        raise ValueError(f"--save-every must be a positive number of frames, got {args.save_every}")
    if (args.save is not None or args.save_frames is not None) and not (args.detect or args.top):
        raise ValueError("--save and --save-frames draw detections (--detect FORMAT) or classes "
                         "(--top K): pass one of them")


class Outputs:
    """The files one ``run`` writes, opened before the model loads; :meth:`write` per result (on
    a worker thread: it draws and encodes), then :meth:`close` on success or :meth:`abort` on
    any way out. Results must carry their frame (``images=True``) when :attr:`images`."""

    def __init__(self, source: str, *, save: Path | None = None, save_frames: Path | None = None,
                 save_every: int | None = None, json: Path | None = None,
                 preset: str = "veryfast") -> None:
        """Open the files asked for (paths checked already: :func:`check_arguments`)."""
        from xinfer_stream.runtime import JsonLinesWriter
        from xinfer_stream.video import frame_rate

        self._save, self._preset = save, preset
        self._video: Any = None
        self._json: Any = None
        self._frames_dir: Path | None = save_frames
        self._save_every = save_every
        self._every = save_every or 30
        self._held: list[Result] = []  # live source: frames held until their rate is known
        self.saved_frames = 0
        self.images = save is not None or save_frames is not None
        self.wanted = self.images or json is not None
        self.live = not _is_local(source)
        self.rate: Fraction | None = None
        self.rate_from = ""
        try:
            if self.images and not self.live:
                self.rate = frame_rate(source) if Path(source).is_file() else None
                self.rate_from = "the file's frame rate" if self.rate else "30 fps assumed"
                self._start_pictures(self.rate or Fraction(30))
            if json is not None:
                self._json = JsonLinesWriter(json)
            if self._frames_dir is not None:
                self._frames_dir.mkdir(exist_ok=True)
        except BaseException:
            self.abort()
            raise

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Outputs:
        """``run``'s outputs, from its flags (checked here again)."""
        check_arguments(args)
        return cls(args.source, save=args.save, save_frames=args.save_frames,
                   save_every=args.save_every, json=args.json)

    def _start_pictures(self, rate: Fraction) -> None:
        """The rate is known: open the video and set the JPEG interval (about one a second)."""
        from xinfer_stream.video import VideoWriter

        self.rate = rate
        self._every = self._save_every or max(1, round(rate))
        if self._save is not None:
            self._video = VideoWriter(self._save, fps=rate, preset=self._preset)

    def write(self, r: Result) -> None:
        """Write what the flags ask of one result (blocking: call it off the event loop)."""
        if self._json is not None:
            self._json.write(r)
        if not self.images:
            return
        if r.image is None:
            raise ValueError(f"frame {r.frame_index} of {r.source!r} carries no image: stream "
                             "with images=True for --save and --save-frames")
        if self.rate is not None:
            self._draw(r)
            return
        from xinfer_stream.video import RATE_SAMPLE_FRAMES

        self._held.append(r)
        if len(self._held) >= RATE_SAMPLE_FRAMES:
            self._release_held()

    def _release_held(self) -> None:
        """Measure the live source's rate from the held frames, then draw them."""
        from xinfer_stream.video import rate_from_timestamps

        rate = rate_from_timestamps([r.pts for r in self._held])
        self.rate_from = ("measured from the stream's timestamps" if rate is not None
                          else "no timestamps: 30 fps assumed")
        self._start_pictures(rate or Fraction(30))
        held, self._held = self._held, []
        for r in held:
            self._draw(r)

    def _draw(self, r: Result) -> None:
        from xinfer_stream.video import annotate, write_jpeg

        assert r.image is not None
        shot = self._frames_dir is not None and r.frame_index % self._every == 0
        if self._video is None and not shot:
            return
        drawn = annotate(r.image, r.prediction)
        if self._video is not None:
            self._video.write(drawn)
        if shot:
            assert self._frames_dir is not None
            name = f"{Path(r.source).stem or 'frame'}_{r.frame_index:06d}.jpg"
            write_jpeg(self._frames_dir / name, drawn)
            self.saved_frames += 1

    def close(self) -> list[str]:
        """Finish every file (rename into place); lines saying what was written."""
        said = []
        if self._held:
            self._release_held()
        if self._video is not None:
            self._video.close()
            assert self.rate is not None
            said.append(f"saved {self._video.frames} annotated frames to {str(self._video.path)!r} "
                        f"(H.264, {float(self.rate):.3g} fps: {self.rate_from})")
        elif self._save is not None:
            raise ValueError(f"--save {str(self._save)!r}: the stream gave no frame; nothing "
                             "saved")
        if self._json is not None:
            self._json.close()
            said.append(f"saved {self._json.lines} JSON lines to {str(self._json.path)!r}")
        if self._frames_dir is not None:
            said.append(f"saved {self.saved_frames} annotated JPEGs to {str(self._frames_dir)!r}")
        return said

    def abort(self) -> None:
        """Discard the video and the JSON lines; the destinations keep what they had."""
        self._held = []
        for owner in (self._video, self._json):
            if owner is not None:
                owner.abort()


def _is_local(source: str) -> bool:
    """A file, folder or glob on this machine (not a URL or a camera device)."""
    import glob

    return (Path(source).exists() and not source.startswith("/dev/")) or glob.has_magic(source)
