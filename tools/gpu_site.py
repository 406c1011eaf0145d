"""Prune an unpacked site-packages folder (tools/make_site_archive.sh's) of what this machine has.

tools/gpu_check.sh runs it, with PYTHONPATH unset, on each archive it unpacks before putting the
folder on PYTHONPATH: a top-level package or module this Python already imports is removed with
its ``.dist-info`` (so ``importlib.metadata`` keeps reporting the machine's version), and the
machine's own copy stays in use — torch's dependencies (typing_extensions, filelock, ...) must not
be shadowed by the versions a carried package was downloaded with.

Usage: python3 tools/gpu_site.py FOLDER  (prints what it kept and what it dropped)
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path


def top_level(dist_info: Path) -> set[str]:
    """The top-level names a distribution installs, from its RECORD."""
    record = dist_info / "RECORD"
    if not record.exists():
        return set()
    names = set()
    for line in record.read_text().splitlines():
        first = line.split(",", 1)[0].split("/", 1)[0]
        if first and not first.endswith((".dist-info", ".data")):
            names.add(first)
    return names


def prune(folder: Path) -> tuple[list[str], list[str]]:
    """Remove what this Python already imports; returns (kept, dropped) top-level names."""
    kept, dropped = [], []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name.endswith((".dist-info", ".libs", ".data")) or name.startswith("__"):
            continue
        module = name.removesuffix(".py")
        if module.isidentifier() and importlib.util.find_spec(module) is not None:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            dropped.append(module)
        else:
            kept.append(module)
    for dist_info in folder.glob("*.dist-info"):
        names = top_level(dist_info)
        if names and not any((folder / n).exists() for n in names):
            shutil.rmtree(dist_info)
    return kept, dropped


def main() -> int:
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    kept, dropped = prune(Path(sys.argv[1]))
    print(f"carried: {' '.join(kept) or '-'}; the machine's own: {' '.join(dropped) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
