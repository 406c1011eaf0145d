"""Lifecycle helpers shared by every owner of a resource: no public constructor, and a leak net.

- :class:`NoPublicConstructor`: objects whose ownership would be ambiguous if anyone could make
  them (a CUDA stream, a frame source, a result stream, a loaded engine) refuse ``Cls(...)``;
  their owner calls ``Cls._create(...)`` (trio's pattern).
- :func:`leak_net`: every owner of a thread, a container or a CUDA handle keeps a
  ``weakref.finalize`` that holds only what it must release (raw handles, never the owner): if
  the owner is collected while open, the finalizer releases it and emits a ``ResourceWarning``
  (an error in the test suite). ``close()`` detaches it.
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
    """Metaclass: ``Cls(...)`` raises ``TypeError``; the owner calls ``Cls._create(...)``.

    A class may say where its instances come from in ``_made_by`` (e.g. ``"open_source(...)"``).
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        made_by = getattr(cls, "_made_by", "its owner")
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor; get one "
                        f"from {made_by}")

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

    ``raw`` must not reference ``owner`` (else it is never collected). Call ``.detach()`` on the
    returned finalizer in ``close()``. It does not run at interpreter exit: by then the driver or
    the threads may be torn down, and the process's resources go with it anyway.
    """
    finalizer = weakref.finalize(owner, _release_leaked, what, release, raw)
    finalizer.atexit = False
    return finalizer
