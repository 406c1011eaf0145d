"""``BuildOptions``: everything that decides what engine the builder makes, and its shapes.

The options are recorded in the engine's metadata; :meth:`BuildOptions.recipe` (all options but
where the timing cache lives) is compared on the next build to skip an unchanged rebuild.

Optimization profiles: a dynamic batch dimension gets the range ``min_batch .. max_batch`` with
``opt_batch`` as the shape TensorRT tunes for (default 1: the per-frame latency path); dynamic
height and width need :attr:`hw_range`. ``profiles`` identical profiles are added, one per
execution context that may run at the same time (TensorRT needs a profile per concurrently used
context on a dynamic-shape engine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .._errors import EngineBuildError

__all__ = ["BuildOptions", "HwRange", "NetworkInput", "ProfileShapes", "profile_shapes"]

HwRange = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (min, opt, max) of (H, W)
ProfileShapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class NetworkInput:
    """An input as the parsed network has it; ``-1`` marks a dynamic dimension."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class BuildOptions:
    """What to build. Sizes in bytes; ``None`` leaves TensorRT's default."""

    int8: bool = False
    fp16: bool = False
    calibration_method: str | None = None
    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int | None = None
    hw_range: HwRange | None = None
    profiles: int = 1
    workspace: int | None = None
    builder_optimization_level: int | None = None
    timing_cache: str | None = None
    device: int = 0

    def __post_init__(self) -> None:
        for name in ("min_batch", "profiles"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("opt_batch", "max_batch", "workspace"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if self.max_batch is not None:
            opt = self.opt_batch if self.opt_batch is not None else self.min_batch
            if not self.min_batch <= opt <= self.max_batch:
                raise ValueError(f"batch sizes must satisfy min <= opt <= max, got min "
                                 f"{self.min_batch}, opt {opt}, max {self.max_batch}")
        elif self.opt_batch is not None:
            raise ValueError("opt_batch needs max_batch (with_max_batch_size(max, opt=...))")
        level = self.builder_optimization_level
        if level is not None and (isinstance(level, bool) or not isinstance(level, int)
                                  or not 0 <= level <= 5):
            raise ValueError(f"builder_optimization_level must be 0..5, got {level!r}")
        if self.hw_range is not None:
            hw = tuple(tuple(int(v) for v in pair) for pair in self.hw_range)
            if len(hw) != 3 or any(len(pair) != 2 or min(pair) < 1 for pair in hw):
                raise ValueError(f"hw_range must be ((h, w) min, opt, max), got {self.hw_range!r}")
            (h0, w0), (h1, w1), (h2, w2) = hw
            if not (h0 <= h1 <= h2 and w0 <= w1 <= w2):
                raise ValueError(f"input shapes must satisfy min <= opt <= max per axis, got {hw}")
            object.__setattr__(self, "hw_range", hw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hw_range"] = [list(p) for p in self.hw_range] if self.hw_range is not None else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildOptions:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown build options {sorted(unknown)}")
        fields = dict(data)
        if fields.get("hw_range") is not None:
            fields["hw_range"] = tuple(tuple(p) for p in fields["hw_range"])
        return cls(**fields)

    def recipe(self) -> dict[str, Any]:
        """The options that shape the engine (the timing cache only speeds the build up)."""
        d = self.to_dict()
        del d["timing_cache"]
        return d


def profile_shapes(inputs: Sequence[NetworkInput], options: BuildOptions,
                   model_name: str) -> ProfileShapes:
    """The (min, opt, max) shape of every dynamic input; empty for a static network.

    ``EngineBuildError`` says what to pass when a dynamic dimension has no range, or when a range
    is asked of a fixed dimension.
    """
    shapes: ProfileShapes = {}
    problems: list[str] = []
    for inp in inputs:
        dims = inp.shape
        if -1 not in dims:
            if options.max_batch is not None and dims and dims[0] != options.max_batch and len(inputs) == 1:
                problems.append(
                    f"input {inp.name!r} has a fixed batch of {dims[0]} ({list(dims)}), so a max "
                    f"batch of {options.max_batch} cannot be built; re-export the model with a "
                    "dynamic batch axis")
            continue
        lo, opt, hi = list(dims), list(dims), list(dims)
        for axis, d in enumerate(dims):
            if d != -1:
                continue
            if axis == 0:
                if options.max_batch is None:
                    problems.append(f"input {inp.name!r} has a dynamic batch; give "
                                    "with_max_batch_size(N) (CLI: --max-batch N)")
                    continue
                lo[0] = options.min_batch
                opt[0] = options.opt_batch if options.opt_batch is not None else options.min_batch
                hi[0] = options.max_batch
            elif len(dims) == 4 and axis in _hw_axes(dims) and options.hw_range is not None:
                k = _hw_axes(dims).index(axis)
                lo[axis], opt[axis], hi[axis] = (p[k] for p in options.hw_range)
            else:
                problems.append(f"input {inp.name!r} {list(dims)} has dynamic axis {axis}; give "
                                "with_input_shapes(min=(h, w), opt=(h, w), max=(h, w))")
        shapes[inp.name] = (tuple(lo), tuple(opt), tuple(hi))
    if problems:
        raise EngineBuildError(f"cannot set the optimization profile of {model_name!r}: "
                               + "; ".join(problems))
    return shapes


def _hw_axes(dims: Sequence[int]) -> tuple[int, int]:
    """(H axis, W axis) of a 4-D image tensor: NCHW when axis 1 is 3 channels, else NHWC."""
    return (1, 2) if dims[3] == 3 and dims[1] != 3 else (2, 3)
