"""Ownership helpers shared by every CUDA resource: no public constructor, and a leak net.

Each resource (stream, event, buffer, pool, module, graph) is made only by its owner (a
:class:`~xinfer_stream.cuda.Device` or a pool), has an idempotent ``close()``, and keeps a
``weakref.finalize`` that holds only raw handles: if the object is collected while open, the
finalizer frees the handle and emits a ``ResourceWarning`` (an error in the test suite).
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["NoPublicConstructor", "leak_net"]

T = TypeVar("T")


class NoPublicConstructor(type):
    """Metaclass for objects whose ownership would be ambiguous if anyone could construct them.

    ``Cls(...)`` raises ``TypeError``; the owner calls ``Cls._create(...)`` (trio's pattern).
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor; get one from its "
            "owner (a Device method or a pool's acquire())")

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc,no-any-return]


def _release_leaked(what: str, release: Callable[..., object], args: tuple[Any, ...]) -> None:
    warnings.warn(f"unclosed {what}: close it (or use it as a context manager) before dropping it",
                  ResourceWarning, stacklevel=2)
    with contextlib.suppress(Exception):  # best effort in a finalizer; the warning reports it
        release(*args)


def leak_net(owner: object, what: str, release: Callable[..., object],
             *raw: Any) -> weakref.finalize:  # type: ignore[type-arg]
    """Register the safety net for ``owner``: on collection while open, warn and ``release(*raw)``.

    ``raw`` must be plain handles (ints, cuda-python handle objects), never ``owner`` itself. Call
    ``.detach()`` on the returned finalizer in ``close()``. It does not run at interpreter exit:
    by then the driver may be torn down, and the process's memory goes with it anyway.
    """
    finalizer = weakref.finalize(owner, _release_leaked, what, release, raw)
    finalizer.atexit = False
    return finalizer
