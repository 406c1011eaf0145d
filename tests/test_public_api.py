"""The curated public surface: ``__all__`` is sorted, complete and importable."""

from __future__ import annotations

import importlib

import pytest

import xinfer_stream

PACKAGES = ["xinfer_stream", "xinfer_stream.cuda", "xinfer_stream.engines", "xinfer_stream.preprocess",
            "xinfer_stream.quantize", "xinfer_stream.runtime", "xinfer_stream.service",
            "xinfer_stream.video"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    assert len(set(exported)) == len(exported)
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which is missing"


@pytest.mark.parametrize("name", PACKAGES)
def test_no_public_name_is_left_out_of_all(name: str) -> None:
    module = importlib.import_module(name)
    public = {n for n, v in vars(module).items()
              if not n.startswith("_") and not isinstance(v, type(importlib))
              and getattr(v, "__module__", name).startswith("xinfer_stream")}
    assert public <= set(module.__all__) | {"annotations"}, sorted(public - set(module.__all__))


def test_version_and_errors_tree() -> None:
    assert xinfer_stream.__version__
    for name in xinfer_stream.__all__:
        obj = getattr(xinfer_stream, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj is not xinfer_stream.XInferError:
            assert issubclass(obj, xinfer_stream.XInferError) or issubclass(obj, Warning), name
