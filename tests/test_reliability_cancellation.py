"""Cancellation at every await point of the public API, modelled on httpcore's cancellation tests.

The await points: ``load().__aenter__``, ``engine.stream().__aenter__``, ``__anext__``,
``aclose`` (stream), ``engine.infer`` and ``engine.aclose``. For each, a task is cancelled while it
is provably parked at that point (a gate holds the worker thread there, with the resource in
question already created), and afterwards we count:

- threads, both Python's (``threading.enumerate``) and the OS's (``/proc/self/task``, which sees
  ONNX Runtime's and FFmpeg's native pools);
- open file descriptors (``/proc/self/fd``: containers, sockets, model files);
- that the backend and the source the cancelled call had opened are closed.

Counts are taken before and after each scenario, outside the event loop (so the loop's own
executor threads do not count). The first use of ONNX Runtime and FFmpeg in a process opens a few
descriptors and threads that last as long as the process, so a module fixture warms both up
first, as tools/soak.py does. Every scenario runs on asyncio's loop and on uvloop (the CLI's).
Pinned and device buffers belong to the GPU path and are counted there (see RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xinfer_stream as xs
from xinfer_stream import video as xs_video
from xinfer_stream.cli import run_async
from xinfer_stream.runtime import _engine
from xinfer_stream.video._write import write_video

from .census import left_behind, steady
from .test_cli import tiny_classifier
from .test_runtime import CountingFrames, FakeBackend

PRE = xs.Preprocess(size=(8, 8))
LOOPS = ["asyncio", "uvloop"]


# -- counting ---------------------------------------------------------------------------------
def our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("xinfer")]


async def eventually(check: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def run(loop: str, coro: Coroutine[Any, Any, None]) -> None:
    if loop == "uvloop":
        run_async(coro)     # the CLI's runner: uvloop
    else:
        asyncio.run(coro)


class Gate:
    """Holds a worker thread at a chosen point: ``entered`` tells the test it is there,
    ``release()`` lets it go on."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()

    def hold(self) -> None:
        self.entered.set()
        if not self._open.wait(10):
            raise AssertionError("the gate was never released")

    def release(self) -> None:
        self._open.set()

    async def reached(self) -> None:
        assert await eventually(self.entered.is_set), "the worker never reached the gate"


async def cancelled(task: asyncio.Task[Any], within: float = 1.0) -> None:
    """Cancel ``task`` and check it ends with CancelledError promptly."""
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < within, "cancellation was not prompt"


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cancel")
    model = tiny_classifier(folder / "tiny.onnx")
    clip = folder / "clip.mp4"
    rng = np.random.default_rng(0)
    write_video(clip, [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(60)], gop=10)
    return model, clip


@pytest.fixture(scope="module", autouse=True)
def warm(assets: tuple[Path, Path]) -> None:
    """Open ONNX Runtime and FFmpeg once, on both loops, before anything is counted."""
    model, clip = assets

    async def once() -> None:
        async with xs.load(model, preprocess=PRE) as engine:
            await engine.infer(np.zeros((8, 8, 3), np.uint8))
            async with engine.stream(clip) as results:
                async for _ in results:
                    pass

    for loop in LOOPS:
        run(loop, once())


@pytest.fixture
def model(assets: tuple[Path, Path]) -> Path:
    return assets[0]


@pytest.fixture
def clip(assets: tuple[Path, Path]) -> Path:
    return assets[1]


@pytest.fixture
def baseline() -> Iterator[None]:
    """Every scenario leaves no thread or descriptor behind and none of our threads alive."""
    before = steady()
    yield
    assert left_behind(before) == []
    assert our_threads() == []


# -- load().__aenter__ ------------------------------------------------------------------------
@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize("loop", LOOPS)
def test_cancel_load_while_the_model_is_loading(loop: str, model: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled while the loader thread has created the ONNX Runtime session: the session is
    closed when the loader finishes, though nobody is left to receive it."""
    gate, opened = Gate(), []
    real = _engine.open_backend

    def slow_open(*args: Any, **kwargs: Any) -> Any:
        backend = real(*args, **kwargs)
        opened.append(backend)
        gate.hold()
        return backend

    monkeypatch.setattr(_engine, "open_backend", slow_open)

    async def main() -> None:
        engine = xs.load(model, preprocess=PRE)

        async def enter() -> None:
            async with engine:
                raise AssertionError("entered a cancelled engine")

        task = asyncio.create_task(enter())
        await gate.reached()
        await cancelled(task)
        gate.release()
        assert await eventually(lambda: opened[0].closed), "the loaded backend was never closed"
        assert engine.closed
        with pytest.raises(xs.ClosedResourceError):
            engine.stream([])

    run(loop, main())


@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize("loop", LOOPS)
def test_cancel_load_during_warmup_of_a_given_backend(loop: str) -> None:
    """A Backend handed to load() belongs to the engine: cancelling the load closes it."""
    gate = Gate()

    class WarmingBackend(FakeBackend):
        def run(self, feeds: Any) -> Any:
            gate.hold()
            return super().run(feeds)

    backend = WarmingBackend()

    async def main() -> None:
        task = asyncio.create_task(xs.load(backend, preprocess=PRE).__aenter__())
        await gate.reached()
        await cancelled(task)
        gate.release()
        assert await eventually(lambda: backend.closed), "the given backend was never closed"

    run(loop, main())


# -- engine.stream().__aenter__ ---------------------------------------------------------------
@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize("loop", LOOPS)
def test_cancel_stream_enter_while_the_source_opens(loop: str, model: Path, clip: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled while the container is open but not yet handed over: the opener closes it."""
    gate, sources = Gate(), []
    real = xs_video.open_source

    def slow_open_source(*args: Any, **kwargs: Any) -> Any:
        source = real(*args, **kwargs)
        sources.append(source)
        gate.hold()
        return source

    monkeypatch.setattr(xs_video, "open_source", slow_open_source)

    async def main() -> None:
        async with xs.load(model, preprocess=PRE) as engine:
            stream = engine.stream(clip)
            task = asyncio.create_task(stream.__aenter__())
            await gate.reached()
            await cancelled(task)
            assert stream.closed
            gate.release()
            assert await eventually(lambda: sources[0].closed), "the opened source was never closed"
            # The engine is still good for another stream.
            async with engine.stream(CountingFrames(5)) as results:
                assert len([r async for r in results]) == 5

    run(loop, main())


# -- __anext__ --------------------------------------------------------------------------------
@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize("loop", LOOPS)
def test_cancel_the_consumer_waiting_in_anext(loop: str, model: Path, clip: Path) -> None:
    """The task iterating is cancelled while __anext__ waits for a result (inference is held):
    leaving ``async with`` joins the decode and inference threads and closes the container."""
    gate = Gate()

    def held(outputs: Any) -> None:
        gate.hold()

    async def consume(engine: xs.StreamingEngine) -> None:
        async with engine.stream(clip, postprocess=held) as results:
            async for _ in results:
                raise AssertionError("no result can arrive while the gate is shut")

    async def main() -> None:
        async with xs.load(model, preprocess=PRE) as engine:
            task = asyncio.create_task(consume(engine))
            await gate.reached()
            task.cancel()
            gate.release()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert our_threads() == []

    run(loop, main())


@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize("loop", LOOPS)
def test_a_timed_out_anext_loses_no_result(loop: str, model: Path, clip: Path) -> None:
    """``wait_for(results.__anext__(), t)`` timing out cancels __anext__ while it waits; the
    stream stays usable and the next calls deliver every frame, in order, none lost."""
    async def main() -> None:
        async with xs.load(FakeBackend(delay=0.02), preprocess=PRE) as engine:
            async with engine.stream(CountingFrames(40)) as results:
                got: list[int] = []
                timeouts = 0
                while True:
                    try:
                        r = await asyncio.wait_for(results.__anext__(), 0.005)
                    except TimeoutError:
                        timeouts += 1
                        continue
                    except StopAsyncIteration:
                        break
                    got.append(r.frame_index)
        assert got == list(range(40))
        assert timeouts > 0

    run(loop, main())


# -- ResultStream.aclose ----------------------------------------------------------------------
@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize("loop", LOOPS)
def test_cancel_stream_aclose_midway(loop: str, model: Path, clip: Path) -> None:
    """aclose() is cancelled while it waits for the inference thread to stop: it finishes the
    release before the CancelledError leaves it."""
    gate = Gate()

    def held(outputs: Any) -> None:
        gate.hold()

    async def main() -> None:
        async with xs.load(model, preprocess=PRE) as engine:
            stream = engine.stream(clip, postprocess=held)
            await stream.__aenter__()
            await gate.reached()
            closing = asyncio.create_task(stream.aclose())
            await asyncio.sleep(0.05)   # aclose is now waiting on the held inference thread
            assert not closing.done()
            closing.cancel()
            threading.Timer(0.2, gate.release).start()
            with pytest.raises(asyncio.CancelledError):
                await closing
            assert stream.closed
            assert our_threads() == []
            await stream.aclose()       # idempotent, also after a cancelled close

    run(loop, main())


# -- engine.infer -----------------------------------------------------------------------------
@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize("loop", LOOPS)
def test_cancel_infer_while_the_model_runs(loop: str, model: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()

    async def main() -> None:
        async with xs.load(model, preprocess=PRE) as engine:
            real = engine.backend.run

            def held_run(feeds: Any) -> Any:
                gate.hold()
                return real(feeds)

            monkeypatch.setattr(engine.backend, "run", held_run)
            task = asyncio.create_task(engine.infer(np.zeros((8, 8, 3), np.uint8)))
            await gate.reached()
            await cancelled(task)
            gate.release()
            monkeypatch.undo()
            # The engine still answers after a cancelled call.
            result = await engine.infer(np.full((8, 8, 3), 3, np.uint8))
            assert result.outputs["logits"].shape == (1, 4)

    run(loop, main())


# -- engine.aclose ----------------------------------------------------------------------------
@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize("loop", LOOPS)
def test_cancel_engine_aclose_with_open_streams(loop: str, model: Path, clip: Path) -> None:
    """engine.aclose() closes every stream, then the backend; cancelled while closing the first
    of three streams, it still releases all three and the backend."""
    gate = Gate()

    def held(outputs: Any) -> None:
        gate.hold()

    async def main() -> None:
        engine = xs.load(model, preprocess=PRE)
        await engine.__aenter__()
        streams = [engine.stream(clip, postprocess=held) for _ in range(3)]
        for s in streams:
            await s.__aenter__()
        await gate.reached()
        closing = asyncio.create_task(engine.aclose())
        await asyncio.sleep(0.05)
        assert not closing.done()
        closing.cancel()
        threading.Timer(0.2, gate.release).start()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert engine.closed and all(s.closed for s in streams)
        assert engine._backend is not None and engine._backend.closed
        assert our_threads() == []

    run(loop, main())


@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize("loop", LOOPS)
def test_cancel_everything_at_once_from_outside(loop: str, model: Path, clip: Path) -> None:
    """The whole program is cancelled (Ctrl-C in a CLI, a supervisor shutting a task down) at a
    random moment of a busy stream: repeat at several moments."""
    async def work() -> None:
        async with xs.load(model, preprocess=PRE) as engine:
            async with engine.stream(clip, batch=2) as results:
                async for r in results:
                    await engine.infer(np.zeros((8, 8, 3), np.uint8))
                    del r

    async def main() -> None:
        for delay in (0.0, 0.001, 0.01, 0.03, 0.08):
            task = asyncio.create_task(work())
            await asyncio.sleep(delay)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            assert await eventually(lambda: our_threads() == [])

    run(loop, main())
