"""The service's config file: TOML read by the standard library, checked here into frozen values.

A config names the model, the cameras, the batching, the postprocess, the sinks, the health
rule and the metrics endpoint::

    [model]
    path = "model.int8.onnx"           # .onnx, .engine/.plan, .pt/.pt2 (relative to this file)
    preprocess = "model.preprocess.json"   # or an inline table; default: the model's own

    [batching]
    max_batch = 8                      # default: the engine's max batch, else 32
    max_wait = 0.010                   # seconds the oldest frame may wait for a batch

    [postprocess]
    kind = "detect"                    # "classify", "detect" or "none"
    conf = 0.3

    [[cameras]]
    name = "door"
    source = "rtsp://10.0.0.7/stream"
    policy = "latest"
    reconnect = { attempts = 10, max_delay = 30.0 }

    [[sinks]]
    kind = "jsonl"                     # one JSON line a result; path "-" is stdout
    path = "results.jsonl"

    [[sinks]]
    kind = "callback"                  # an importable function, called with each Result
    target = "mypackage.alerts:on_result"

    [[sinks]]
    kind = "video"                     # annotated H.264, a file per camera per segment:
    path = "recordings"                # recordings/<camera>/<UTC start>-<index>.mp4
    segment_seconds = 60
    cameras = ["door"]                 # (any sink) only these cameras' results

Every key is checked: an unknown key, a value of the wrong type or range, two cameras of one
name, a model or labels file that is not there all raise one :class:`~xinfer_stream.ConfigError`
whose message is one line naming the file, the key path and the problem. Relative paths are
relative to the config file's folder, so a config means the same from any working directory.

TOML because the standard library reads it (``tomllib``) and it
has no implicit typing (YAML's ``no`` is a boolean). The checks are a small reader of our own
(:class:`_Table`), not a schema library: the schema is thirty keys, and one-line messages with
the key path are the point of this module.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

from .._errors import ConfigError


if TYPE_CHECKING:
    from ..preprocess import Preprocess
    from ..runtime import Camera
    from ..video import Reconnect

__all__ = ["BatchingConfig", "CameraConfig", "HealthConfig", "MetricsConfig", "ModelConfig",
           "PostprocessConfig", "ServiceConfig", "SinkConfig", "load_config", "parse_config"]

PostprocessKind = Literal["none", "classify", "detect"]
SinkKind = Literal["jsonl", "callback", "video"]

_BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
_POLICIES = ("every", "latest")
_DECODE = ("cpu", "nvdec")
_DETECT_FORMATS = ("auto", "yolox", "yolov8", "boxes", "gfl")
_RECONNECT_KEYS = ("attempts", "initial_delay", "max_delay", "multiplier")


# -- the values -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """``path``: the model file (checked to exist); ``backend``: ``"auto"`` (by suffix),
    ``"onnxruntime"``, ``"tensorrt"`` or ``"torch"``; ``preprocess``: the Preprocess (``None``:
    the model's own sidecar or metadata); ``threads``: ONNX Runtime's intra-op threads;
    ``plugins``: TensorRT plugin libraries."""

    path: Path
    backend: str = "auto"
    preprocess: Preprocess | None = None
    threads: int | None = None
    plugins: tuple[Path, ...] = ()


@dataclass(frozen=True)
class CameraConfig:
    """One camera: a unique ``name``, a ``source`` (a URL, or a file, folder, glob or device,
    made relative to the config file's folder; not checked to exist: a camera that cannot
    open fails on its own, as a :class:`~xinfer_stream.CameraEvent`), its ``policy``
    (``None``: ``"every"`` for files, ``"latest"`` for live sources), ``reconnect`` budget
    (``True``: the default :class:`~xinfer_stream.video.Reconnect`; ``False``: none) and how a
    file plays: ``realtime`` (at its frame rate, like a camera), ``loop`` (forever);
    ``process``: decode in a worker process; ``decode``: ``"cpu"`` or ``"nvdec"`` for this
    camera (``None``: ``batching.decode``)."""

    name: str
    source: str
    policy: str | None = None
    reconnect: Reconnect | bool = True
    realtime: bool = False
    loop: bool = False
    process: bool = False
    decode: str | None = None

    def camera(self) -> Camera:
        """The :class:`~xinfer_stream.Camera` that ``MultiStream.add`` takes."""
        from ..runtime import Camera

        options = {key: True for key in ("realtime", "loop", "process") if getattr(self, key)}
        return Camera(self.source, self.policy, self.reconnect, options, decode=self.decode)


@dataclass(frozen=True)
class BatchingConfig:
    """``engine.stream_many``'s batching: ``max_batch`` (``None``: the engine's, else 32),
    ``max_wait`` seconds, ``queue_size`` frames a camera may have waiting, ``decode``
    (``"cpu"`` or ``"nvdec"``)."""

    max_batch: int | None = None
    max_wait: float = 0.010
    queue_size: int = 2
    decode: str = "cpu"


@dataclass(frozen=True)
class PostprocessConfig:
    """``kind``: ``"none"`` (raw outputs), ``"classify"`` (``top``, ``labels``) or ``"detect"``
    (``format``, ``conf``, ``iou``, ``max_det``, ``classes``, ``agnostic``, ``labels``), as
    :func:`xinfer_stream.classify` and :func:`xinfer_stream.detect` take them; ``labels``: a
    file of class names, one a line (checked to exist)."""

    kind: PostprocessKind = "none"
    labels: Path | None = None
    top: int = 5
    format: str = "auto"
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    classes: tuple[int, ...] | None = None
    agnostic: bool = False

    def build(self) -> Any:
        """The postprocess ``engine.stream_many`` takes (``None`` for ``kind="none"``); reads
        the labels file."""
        from ..runtime import classify, detect, read_labels

        labels = read_labels(self.labels) if self.labels is not None else None
        if self.kind == "classify":
            return classify(top=self.top, labels=labels)
        if self.kind == "detect":
            return detect(self.format, conf=self.conf, iou=self.iou,  # type: ignore[arg-type]
                          classes=self.classes, labels=labels, max_det=self.max_det,
                          agnostic=self.agnostic)
        return None


@dataclass(frozen=True)
class SinkConfig:
    """Where results go. ``kind="jsonl"``: one JSON line a result (``runtime.result_to_json``)
    appended to ``path`` (``None``: standard output); ``kind="callback"``: ``target``
    (``"module:function"``) is imported at start and called with each Result on a worker
    thread; ``kind="video"``: annotated H.264 segments of ``segment_seconds`` per camera in
    the folder ``path`` (``service/_segments.py``). ``cameras``: only these cameras' results
    (``None``: every camera's)."""

    kind: SinkKind
    path: Path | None = None
    target: str | None = None
    cameras: tuple[str, ...] | None = None
    segment_seconds: float = 60.0

    def takes(self, camera: str) -> bool:
        """Whether this sink gets ``camera``'s results."""
        return self.cameras is None or camera in self.cameras


@dataclass(frozen=True)
class HealthConfig:
    """``/healthz`` answers 503 when more than ``failing_fraction`` of the cameras are failing
    (reconnecting, or failed for good), or when frames have waited ``stuck_after`` seconds
    without a batch completing (the engine is stuck)."""

    failing_fraction: float = 0.5
    stuck_after: float = 10.0


@dataclass(frozen=True)
class MetricsConfig:
    """The HTTP endpoint for ``/metrics`` and ``/healthz``: ``port`` (``None``: none; ``0``: a
    free port, see ``Service.metrics_address``) on ``host``."""

    port: int | None = None
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class ServiceConfig:
    """A whole config. ``source``: the file it was read from (``None`` when built in code)."""

    model: ModelConfig
    cameras: tuple[CameraConfig, ...]
    batching: BatchingConfig = BatchingConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    sinks: tuple[SinkConfig, ...] = ()
    health: HealthConfig = HealthConfig()
    metrics: MetricsConfig = MetricsConfig()
    source: Path | None = None


# -- reading ----------------------------------------------------------------------------------
def load_config(path: str | os.PathLike[str]) -> ServiceConfig:
    """Read and check the TOML config at ``path``; :class:`~xinfer_stream.ConfigError` (one line
    naming the file, the key path and the problem) for anything wrong with it."""
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the config file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    return parse_config(data, file)


def parse_config(data: Mapping[str, Any], file: str | os.PathLike[str]) -> ServiceConfig:
    """Check an already parsed config (``data``, as ``tomllib`` returns it) that came from
    ``file`` (named in messages; relative paths are resolved against its folder)."""
    top = _Table(data, "", Path(file))
    model = _model(top.table("model", required=True))
    cameras = tuple(_camera(t) for t in top.tables("cameras"))
    seen: set[str] = set()
    for i, cam in enumerate(cameras):
        if cam.name in seen:
            top.fail(f"cameras[{i}].name", f"{cam.name!r} is used by an earlier camera; "
                                            "camera names must be unique")
        seen.add(cam.name)
    batching = _batching(top.table("batching"))
    postprocess = _postprocess(top.table("postprocess"))
    sinks = tuple(_sink(t) for t in top.tables("sinks"))
    for i, sink in enumerate(sinks):
        on_gpu = [c.name for c in cameras
                  if sink.takes(c.name) and (c.decode or batching.decode) == "nvdec"]
        if sink.kind == "video" and on_gpu:
            top.fail(f"sinks[{i}].kind", f"a video sink draws on the frames' pixels, and camera "
                                         f"{on_gpu[0]!r} decodes on NVDEC, which keeps them on "
                                         "the GPU; decode it on the CPU ('cpu') or leave it out "
                                         "of the sink's cameras")
    health = _health(top.table("health"))
    metrics = _metrics(top.table("metrics"))
    top.done()
    return ServiceConfig(model=model, cameras=cameras, batching=batching,
                         postprocess=postprocess, sinks=sinks, health=health, metrics=metrics,
                         source=Path(file))


def _model(t: _Table) -> ModelConfig:
    path = t.path("path", required=True, must_exist=True)
    assert path is not None
    backend = t.choice("backend", _BACKENDS, "auto")
    preprocess = _preprocess(t)
    threads = t.optional_integer("threads", minimum=1)
    plugins = tuple(t.path_list("plugins", must_exist=True))
    t.done()
    return ModelConfig(path=path, backend=backend, preprocess=preprocess, threads=threads,
                       plugins=plugins)


def _preprocess(t: _Table) -> Preprocess | None:
    from .._errors import InvalidModelError
    from ..preprocess import Preprocess

    value = t.take("preprocess")
    if value is None:
        return None
    if isinstance(value, str):
        file = t.path("preprocess", value=value, must_exist=True)
        assert file is not None
        try:
            return Preprocess.load(file)
        except InvalidModelError as exc:
            t.fail("preprocess", str(exc))
    if isinstance(value, dict):
        try:
            return Preprocess.from_dict(value)
        except (TypeError, ValueError) as exc:
            t.fail("preprocess", str(exc))
    t.fail("preprocess", f"must be a Preprocess JSON file name or a table, got {_shown(value)}")


def _camera(t: _Table) -> CameraConfig:
    name = t.string("name", required=True)
    source = t.string("source", required=True)
    assert name is not None and source is not None
    if "://" not in source:  # a file, folder, glob or device: relative to the config's folder
        source = str(t.file.parent / Path(source).expanduser())
    policy = t.choice("policy", _POLICIES, None)
    reconnect = _reconnect(t)
    realtime = t.boolean("realtime", False)
    loop = t.boolean("loop", False)
    process = t.boolean("process", False)
    decode = t.choice("decode", _DECODE, None)
    if process and decode == "nvdec":
        t.fail("process", "a worker process decodes on the CPU; drop process or decode = "
                          "'nvdec'")
    t.done()
    return CameraConfig(name=name, source=source, policy=policy, reconnect=reconnect,
                        realtime=realtime, loop=loop, process=process, decode=decode)


def _reconnect(t: _Table) -> Reconnect | bool:
    from ..video import Reconnect

    value = t.take("reconnect")
    if value is None or isinstance(value, bool):
        return True if value is None else value
    if not isinstance(value, dict):
        t.fail("reconnect", f"must be true, false or a table ({', '.join(_RECONNECT_KEYS)}), "
                            f"got {_shown(value)}")
    r = _Table(value, t.key("reconnect"), t.file)
    default = Reconnect()
    attempts = r.integer("attempts", default.attempts, minimum=1)
    initial = r.number("initial_delay", default.initial_delay, minimum=0.0)
    most = r.number("max_delay", default.max_delay, minimum=0.0)
    multiplier = r.number("multiplier", default.multiplier, minimum=1.0)
    r.done()
    return Reconnect(attempts=attempts, initial_delay=initial, max_delay=most,
                     multiplier=multiplier)


def _batching(t: _Table) -> BatchingConfig:
    config = BatchingConfig(max_batch=t.optional_integer("max_batch", minimum=1),
                            max_wait=t.number("max_wait", 0.010, minimum=0.0),
                            queue_size=t.integer("queue_size", 2, minimum=1),
                            decode=t.choice("decode", _DECODE, "cpu"))
    t.done()
    return config


def _postprocess(t: _Table) -> PostprocessConfig:
    kind = t.choice("kind", ("none", "classify", "detect"), "none")
    labels = t.path("labels", must_exist=True)
    if kind == "classify":
        config = PostprocessConfig(kind="classify", labels=labels,
                                   top=t.integer("top", 5, minimum=1))
    elif kind == "detect":
        classes = t.int_list("classes")
        config = PostprocessConfig(
            kind="detect", labels=labels, format=t.choice("format", _DETECT_FORMATS, "auto"),
            conf=t.number("conf", 0.25, minimum=0.0, maximum=1.0),
            iou=t.number("iou", 0.45, minimum=0.0, maximum=1.0),
            max_det=t.integer("max_det", 300, minimum=1),
            classes=tuple(classes) if classes is not None else None,
            agnostic=t.boolean("agnostic", False))
    else:
        config = PostprocessConfig(labels=labels)
    t.done(f"(for kind = {kind!r})")
    return config


def _sink(t: _Table) -> SinkConfig:
    kind = t.choice("kind", ("jsonl", "callback", "video"), None, required=True)
    cameras = t.string_list("cameras")
    if kind == "video":
        folder = t.path("path", required=True)
        assert folder is not None
        if not folder.is_dir():
            t.fail("path", f"the folder {str(folder)!r} " + (
                "is not a folder" if folder.exists() else "does not exist; create it"))
        sink = SinkConfig(kind="video", path=folder,
                          cameras=tuple(cameras) if cameras is not None else None,
                          segment_seconds=t.number("segment_seconds", 60.0, minimum=0.0,
                                                   exclusive_minimum=True))
    elif kind == "jsonl":
        value = t.string("path", required=True)
        path = None if value == "-" else t.path("path", value=value)
        if path is not None and not path.parent.is_dir():
            t.fail("path", f"the folder {str(path.parent)!r} does not exist")
        sink = SinkConfig(kind="jsonl", path=path,
                          cameras=tuple(cameras) if cameras is not None else None)
    else:
        target = t.string("target", required=True)
        assert target is not None
        module, _, function = target.partition(":")
        if not module or not function.isidentifier():
            t.fail("target", f"must be 'module:function', got {target!r}")
        sink = SinkConfig(kind="callback", target=target,
                          cameras=tuple(cameras) if cameras is not None else None)
    t.done(f"(for kind = {kind!r})")
    return sink


def _health(t: _Table) -> HealthConfig:
    config = HealthConfig(
        failing_fraction=t.number("failing_fraction", 0.5, minimum=0.0, maximum=1.0),
        stuck_after=t.number("stuck_after", 10.0, minimum=0.0, exclusive_minimum=True))
    t.done()
    return config


def _metrics(t: _Table) -> MetricsConfig:
    config = MetricsConfig(port=t.optional_integer("port", minimum=0, maximum=65535),
                           host=t.string("host") or "127.0.0.1")
    t.done()
    return config


# -- the checked reader -----------------------------------------------------------------------
T = TypeVar("T")


class _Table:
    """One TOML table being read: each getter takes its key (checking type and range), and
    :meth:`done` fails on any key left untaken, so a misspelt key is never silently ignored.
    Every failure is a :class:`ConfigError` naming the file and the key path."""

    def __init__(self, data: Mapping[str, Any], prefix: str, file: Path) -> None:
        self._data = dict(data)
        self._prefix = prefix
        self.file = file

    def key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def fail(self, key: str, problem: str) -> NoReturn:
        where = self.key(key) if key else (self._prefix or "(top level)")
        raise ConfigError(f"{self.file}: {where}: {problem}")

    def take(self, name: str) -> Any:
        return self._data.pop(name, None)

    def done(self, context: str = "") -> None:
        if self._data:
            name = sorted(self._data)[0]
            self.fail(name, "unknown key" + (f" {context}" if context else "")
                      + "; check its spelling and the documented keys")

    def _get(self, name: str, kinds: type | tuple[type, ...], what: str, required: bool) -> Any:
        if name not in self._data:
            if required:
                self.fail(name, f"missing; give {what}")
            return None
        value = self._data.pop(name)
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple)
                                                    else (kinds,)):
            self.fail(name, f"must be {what}, got {_shown(value)}")
        if not isinstance(value, kinds):
            self.fail(name, f"must be {what}, got {_shown(value)}")
        return value

    def table(self, name: str, *, required: bool = False) -> _Table:
        value = self._get(name, dict, "a table", required)
        return _Table(value or {}, self.key(name), self.file)

    def tables(self, name: str) -> list[_Table]:
        value = self._get(name, list, f"an array of tables ([[{name}]])", False) or []
        tables = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                self.fail(f"{name}[{i}]", f"must be a table, got {_shown(item)}")
            tables.append(_Table(item, f"{self.key(name)}[{i}]", self.file))
        return tables

    def string(self, name: str, *, required: bool = False) -> str | None:
        value: str | None = self._get(name, str, "a string", required)
        if value is not None and not value.strip():
            self.fail(name, "must not be empty")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, bool, "true or false", False)
        return default if value is None else bool(value)

    def integer(self, name: str, default: int, *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        found = self.optional_integer(name, minimum=minimum, maximum=maximum)
        return default if found is None else found

    def optional_integer(self, name: str, *, minimum: int | None = None,
                         maximum: int | None = None) -> int | None:
        value = self._get(name, int, "an integer", False)
        if value is None:
            return None
        self._check_range(name, value, minimum, maximum)
        return int(value)

    def number(self, name: str, default: float, *, minimum: float | None = None,
               maximum: float | None = None, exclusive_minimum: bool = False) -> float:
        value = self._get(name, (int, float), "a number", False)
        if value is None:
            return default
        if value != value or value in (float("inf"), float("-inf")):
            self.fail(name, f"must be a finite number, got {value!r}")
        if exclusive_minimum and minimum is not None and value <= minimum:
            self.fail(name, f"must be above {minimum:g}, got {value!r}")
        self._check_range(name, value, minimum, maximum)
        return float(value)

    def _check_range(self, name: str, value: float, minimum: float | None,
                     maximum: float | None) -> None:
        if minimum is not None and value < minimum:
            self.fail(name, f"must be at least {minimum:g}, got {value!r}")
        if maximum is not None and value > maximum:
            self.fail(name, f"must be at most {maximum:g}, got {value!r}")

    def choice(self, name: str, choices: Sequence[T], default: T | None, *,
               required: bool = False) -> Any:
        listed = ", ".join(repr(c) for c in choices)
        value = self._get(name, str, f"one of {listed}", required)
        if value is None:
            return default
        if value not in choices:
            self.fail(name, f"must be one of {listed}, got {value!r}")
        return value

    def _list(self, name: str, kind: type, what: str) -> list[Any] | None:
        value = self._get(name, list, f"a list of {what}", False)
        if value is None:
            return None
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, kind):
                self.fail(f"{name}[{i}]", f"must be {what[:-1] if what.endswith('s') else what}"
                                          f", got {_shown(item)}")
        return list(value)

    def string_list(self, name: str) -> list[str] | None:
        return self._list(name, str, "strings")

    def int_list(self, name: str) -> list[int] | None:
        return self._list(name, int, "integers")

    def path(self, name: str, *, value: str | None = None, required: bool = False,
             must_exist: bool = False) -> Path | None:
        """A file name, relative to the config file's folder."""
        text = value if value is not None else self.string(name, required=required)
        if text is None:
            return None
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = self.file.parent / path
        if must_exist and not path.is_file():
            self.fail(name, f"{str(path)!r} " + ("is not a file" if path.exists()
                                                 else "does not exist") + "; check the path")
        return path

    def path_list(self, name: str, *, must_exist: bool) -> list[Path]:
        paths = []
        for i, text in enumerate(self.string_list(name) or []):
            path = self.path(f"{name}[{i}]", value=text, must_exist=must_exist)
            assert path is not None
            paths.append(path)
        return paths


def _shown(value: Any) -> str:
    """A value as a message shows it: its TOML kind, and short values themselves."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    kind = next((v for k, v in kinds.items() if type(value) is k), type(value).__name__)
    text = repr(value)
    return f"{kind} ({text})" if len(text) <= 40 else kind
