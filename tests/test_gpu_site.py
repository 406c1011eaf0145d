"""tools/gpu_site.py: a carried site folder keeps only what the GPU machine lacks."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

spec = importlib.util.spec_from_file_location("gpu_site", REPO / "tools" / "gpu_site.py")
assert spec is not None and spec.loader is not None
gpu_site = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_site)


def dist(folder: Path, name: str, files: list[str]) -> None:
    info = folder / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "RECORD").write_text("".join(f"{f},sha256=x,1\n" for f in
                                         [*files, f"{info.name}/RECORD"]))


def test_what_this_python_imports_is_dropped_with_its_metadata(tmp_path: Path) -> None:
    """numpy (here, so the machine's own) goes with its dist-info; a package and a one-file
    module this Python lacks stay with theirs; folders that are not modules are left alone."""
    for package in ("numpy", "xinfer_carried_pkg"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "xinfer_carried_mod.py").write_text("")
    (tmp_path / "xinfer_carried_pkg.libs").mkdir()
    dist(tmp_path, "numpy", ["numpy/__init__.py"])
    dist(tmp_path, "carried", ["xinfer_carried_pkg/__init__.py", "xinfer_carried_mod.py"])

    kept, dropped = gpu_site.prune(tmp_path)

    assert (kept, dropped) == (["xinfer_carried_mod", "xinfer_carried_pkg"], ["numpy"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "carried-1.0.dist-info", "xinfer_carried_mod.py", "xinfer_carried_pkg",
        "xinfer_carried_pkg.libs"]


def test_the_command_says_what_it_kept_and_refuses_a_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "xinfer_carried_pkg").mkdir()
    tool = [sys.executable, str(REPO / "tools" / "gpu_site.py")]
    done = subprocess.run([*tool, str(tmp_path)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "carried: xinfer_carried_pkg; the machine's own: -"
    missing = subprocess.run([*tool, str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert missing.returncode == 2 and "Usage: python3 tools/gpu_site.py FOLDER" in missing.stderr
