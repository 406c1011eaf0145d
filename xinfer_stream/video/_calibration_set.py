"""Calibration sets on disk: sampled frames as array shards plus a JSON manifest.

Layout of a set directory::

    manifest.json          what is in the set (below); written last, atomically
    shard-<sha16>.npy      uint8 (k, H, W, 3) frames of one shape, content-addressed

The manifest records, per frame, the source, its index, time and pts, the shard and row holding
it, and the SHA-256 of its pixels; per shard, its SHA-256; per source file, its size and SHA-256
when it was readable at save time. Shards are named by their content, so saving over an existing
set never overwrites a shard the previous manifest uses: until the new manifest is renamed into
place, the previous set is intact; afterwards shards no manifest refers to are removed.

Loading verifies every shard against the manifest and maps the shards read-only
(``mmap_mode="r"``), so the frames of a large set are paged in as they are used rather than held
in memory. A damaged or incomplete set raises :class:`InvalidCalibrationInput`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import InvalidCalibrationInput
from .._files import atomic_output, atomic_write_json, sha256_bytes, sha256_file
from ._sample import SampledFrame

__all__ = ["MANIFEST_NAME", "load_calibration_set", "save_calibration_set"]

MANIFEST_NAME = "manifest.json"
_FORMAT = "xinfer-stream/calibration-set"
_VERSION = 1
_SHARD_BYTES = 256 << 20


def _source_record(source: str) -> dict[str, Any]:
    record: dict[str, Any] = {"source": source}
    if os.path.isfile(source):
        record["size"] = os.path.getsize(source)
        record["sha256"] = sha256_file(source)
    return record


def _shards(frames: Sequence[SampledFrame]) -> list[list[int]]:
    """Group consecutive frames of one shape, at most ~256 MiB a shard."""
    groups: list[list[int]] = []
    for i, frame in enumerate(frames):
        last = groups[-1] if groups else None
        if (last is not None and frames[last[0]].image.shape == frame.image.shape
                and (len(last) + 1) * frame.image.nbytes <= _SHARD_BYTES):
            last.append(i)
        else:
            groups.append([i])
    return groups


def save_calibration_set(frames: Sequence[SampledFrame], directory: str | os.PathLike[str], *,
                         metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``frames`` as a calibration set in ``directory``; returns the manifest's path.

    ``metadata`` (JSON-serialisable: e.g. the strategy and seed used) is stored in the manifest.
    Atomic: a crash midway leaves the previous set in ``directory`` usable.
    """
    if not frames:
        raise InvalidCalibrationInput("cannot save an empty calibration set; sample at least "
                                      "one frame")
    for i, frame in enumerate(frames):
        image = frame.image
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InvalidCalibrationInput(
                f"frame {i} ({frame.source!r} at {frame.time:.3f} s) is a {image.dtype} array of "
                f"shape {image.shape}; calibration frames are RGB uint8 (H, W, 3)")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    shard_records: list[dict[str, Any]] = []
    frame_records: list[dict[str, Any]] = [{} for _ in frames]
    for group in _shards(frames):
        stack = np.stack([frames[i].image for i in group])
        data = stack.tobytes()
        digest = sha256_bytes(data)
        name = f"shard-{digest[:16]}.npy"
        if not (root / name).exists():
            with atomic_output(root / name) as tmp, open(tmp, "wb") as fh:
                np.save(fh, stack, allow_pickle=False)
        shard_records.append({"file": name, "sha256": sha256_file(root / name),
                              "frames": len(group), "shape": list(stack.shape[1:])})
        for row, i in enumerate(group):
            frame = frames[i]
            frame_records[i] = {
                "source": frame.source, "index": frame.index, "time": frame.time,
                "pts": frame.pts,
                "time_base": str(frame.time_base) if frame.time_base is not None else None,
                "shard": len(shard_records) - 1, "row": row,
                "sha256": sha256_bytes(np.ascontiguousarray(frame.image).tobytes()),
            }
    sources = list(dict.fromkeys(f.source for f in frames))
    manifest = {
        "format": _FORMAT, "version": _VERSION, "count": len(frames),
        "metadata": dict(metadata or {}),
        "sources": [_source_record(s) for s in sources],
        "shards": shard_records,
        "frames": frame_records,
    }
    atomic_write_json(root / MANIFEST_NAME, manifest)
    used = {s["file"] for s in shard_records}
    for stale in root.glob("shard-*.npy"):
        if stale.name not in used:
            stale.unlink(missing_ok=True)
    return root / MANIFEST_NAME


def _damaged(root: Path, what: str) -> InvalidCalibrationInput:
    return InvalidCalibrationInput(
        f"calibration set {str(root)!r} is damaged: {what}; sample the frames again and save "
        f"them with save_calibration_set")


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise InvalidCalibrationInput(
            f"no calibration set at {str(root)!r}: {MANIFEST_NAME} is missing; create one with "
            f"sample_frames(...) and save_calibration_set(frames, directory)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(root, f"{MANIFEST_NAME} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise _damaged(root, f"{MANIFEST_NAME} is not a calibration-set manifest "
                             f"(format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("version") != _VERSION:
        raise InvalidCalibrationInput(
            f"calibration set {str(root)!r} has version {manifest.get('version')!r}; this "
            f"xinfer-stream reads version {_VERSION}: sample and save the set again")
    return manifest


def _field(root: Path, record: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    value = record.get(key) if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _damaged(root, f"manifest entry {record!r} lacks a valid {key!r}")
    return value


def _seconds(root: Path, record: dict[str, Any]) -> float:
    value = _field(root, record, "time", (int, float))
    try:
        return float(value)
    except OverflowError as exc:
        raise _damaged(root, f"time {value!r} is not a number of seconds") from exc


def _time_base(root: Path, record: dict[str, Any]) -> Fraction | None:
    text = record.get("time_base")
    if text is None:
        return None
    try:
        return Fraction(str(text))
    except (ValueError, ZeroDivisionError) as exc:
        raise _damaged(root, f"time base {text!r} is not a fraction") from exc


def load_calibration_set(directory: str | os.PathLike[str], *, verify_frames: bool = False
                         ) -> list[SampledFrame]:
    """Read a set written by :func:`save_calibration_set`, in the order it was saved.

    Shards are checked against their SHA-256 and memory-mapped read-only; ``verify_frames``
    also re-hashes every frame (reads all pixels once).
    """
    root = Path(directory)
    manifest = _read_manifest(root)
    shards_meta = manifest.get("shards")
    frames_meta = manifest.get("frames")
    if not isinstance(shards_meta, list) or not isinstance(frames_meta, list):
        raise _damaged(root, "the manifest lists no shards or frames")
    arrays: list[npt.NDArray[np.uint8]] = []
    for record in shards_meta:
        name = _field(root, record, "file", str)
        if Path(name).name != name or not name.startswith("shard-"):
            raise _damaged(root, f"shard name {name!r} is not a file in the set")
        path = root / name
        if not path.is_file():
            raise _damaged(root, f"shard {name!r} is missing")
        if sha256_file(path) != _field(root, record, "sha256", str):
            raise _damaged(root, f"shard {name!r} does not match its SHA-256")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise _damaged(root, f"shard {name!r} is not a readable .npy file ({exc})") from exc
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] != 3 or (
                array.shape[0] != _field(root, record, "frames", int)):
            raise _damaged(root, f"shard {name!r} holds {array.dtype} {array.shape}, not the "
                                 f"{record.get('frames')} RGB uint8 frames the manifest says")
        arrays.append(array)
    frames: list[SampledFrame] = []
    for record in frames_meta:
        shard = _field(root, record, "shard", int)
        row = _field(root, record, "row", int)
        if not (0 <= shard < len(arrays) and 0 <= row < arrays[shard].shape[0]):
            raise _damaged(root, f"frame entry {record!r} points outside the shards")
        image = arrays[shard][row]
        if verify_frames and sha256_bytes(np.ascontiguousarray(image).tobytes()) != record.get("sha256"):
            raise _damaged(root, f"frame {len(frames)} does not match its SHA-256")
        frames.append(SampledFrame(
            source=_field(root, record, "source", str),
            index=_field(root, record, "index", int),
            time=_seconds(root, record),
            image=image,
            pts=record.get("pts") if isinstance(record.get("pts"), int) else None,
            time_base=_time_base(root, record)))
    if len(frames) != manifest.get("count"):
        raise _damaged(root, f"the manifest counts {manifest.get('count')!r} frames but lists "
                             f"{len(frames)}")
    return frames
