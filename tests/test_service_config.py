"""The service's config file (``xinfer_stream.service.load_config``): a full config read into
its frozen values, and every kind of bad input refused with one line naming the file, the key
path and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

import xinfer_stream as xs
from xinfer_stream.service import (CameraConfig, HealthConfig, PostprocessConfig, SinkConfig,
                                   load_config)
from xinfer_stream.video import Reconnect

from .test_cli import tiny_classifier

FULL = """
[model]
path = "tiny.onnx"
preprocess = { size = [8, 8], mean = [1.0, 2.0, 3.0] }
threads = 1

[batching]
max_batch = 4
max_wait = 0.02
queue_size = 3

[postprocess]
kind = "detect"
conf = 0.3
classes = [0, 2]
agnostic = true

[[cameras]]
name = "door"
source = "rtsp://10.0.0.7/stream"
policy = "latest"
reconnect = { attempts = 10, max_delay = 30.0 }

[[cameras]]
name = "yard"
source = "clips/yard.mp4"
realtime = true
loop = true
reconnect = false

[[sinks]]
kind = "jsonl"
path = "-"

[[sinks]]
kind = "callback"
target = "mypackage.alerts:on_result"
cameras = ["door"]

[health]
failing_fraction = 0.25
stuck_after = 3

[metrics]
port = 0
"""

MINIMAL = """
[model]
path = "tiny.onnx"

[[cameras]]
name = "a"
source = "a.mp4"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    tiny_classifier(tmp_path / "tiny.onnx")
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "serve.toml"
    path.write_text(text)
    return path


def test_a_full_config_reads_into_its_values(folder: Path) -> None:
    config = load_config(write(folder, FULL))
    assert config.source == folder / "serve.toml"
    assert config.model.path == folder / "tiny.onnx"  # relative to the config's folder
    assert config.model.preprocess == xs.Preprocess(size=(8, 8), mean=(1.0, 2.0, 3.0))
    assert config.model.threads == 1
    assert (config.batching.max_batch, config.batching.max_wait,
            config.batching.queue_size) == (4, 0.02, 3)
    assert config.postprocess == PostprocessConfig(kind="detect", conf=0.3, classes=(0, 2),
                                                   agnostic=True)
    assert config.postprocess.build().agnostic
    assert config.cameras == (
        CameraConfig("door", "rtsp://10.0.0.7/stream", policy="latest",
                     reconnect=Reconnect(attempts=10, max_delay=30.0)),
        CameraConfig("yard", str(folder / "clips/yard.mp4"), reconnect=False, realtime=True,
                     loop=True))
    assert config.cameras[1].camera() == xs.Camera(str(folder / "clips/yard.mp4"), None, False,
                                                   {"realtime": True, "loop": True})
    assert config.sinks == (SinkConfig("jsonl", path=None),
                            SinkConfig("callback", target="mypackage.alerts:on_result",
                                       cameras=("door",)))
    assert config.health == HealthConfig(failing_fraction=0.25, stuck_after=3.0)
    assert config.metrics.port == 0


def test_a_minimal_config_takes_the_defaults(folder: Path) -> None:
    config = load_config(write(folder, MINIMAL))
    assert config.model.preprocess is None and config.model.backend == "auto"
    assert config.batching.max_batch is None and config.batching.max_wait == 0.010
    assert config.postprocess.kind == "none" and config.sinks == ()
    assert config.cameras[0].camera() == xs.Camera(str(folder / "a.mp4"), None, True, {})
    assert config.metrics.port is None


def test_a_video_sink_reads_its_folder_relative_to_the_config(folder: Path) -> None:
    (folder / "recordings").mkdir()
    config = load_config(write(folder, MINIMAL + '\n[[sinks]]\nkind = "video"\n'
                                                 'path = "recordings"\nsegment_seconds = 0.5\n'
                                                 'cameras = ["a"]\n'))
    assert config.sinks == (SinkConfig("video", path=folder / "recordings", cameras=("a",),
                                       segment_seconds=0.5),)
    assert config.sinks[0].takes("a") and not config.sinks[0].takes("b")
    default = load_config(write(folder, MINIMAL + '\n[[sinks]]\nkind = "video"\npath = "."\n'))
    assert default.sinks[0].segment_seconds == 60.0 and default.sinks[0].takes("b")


def test_a_preprocess_file_is_read_relative_to_the_config(folder: Path) -> None:
    xs.Preprocess(size=(8, 8), color="bgr").save(folder / "tiny.preprocess.json")
    config = load_config(write(folder, MINIMAL.replace(
        'path = "tiny.onnx"', 'path = "tiny.onnx"\npreprocess = "tiny.preprocess.json"')))
    assert config.model.preprocess == xs.Preprocess(size=(8, 8), color="bgr")


BAD = [
    # (what to change in MINIMAL, what to append, the key path, words of the problem)
    ("", "\n[batching]\nmax_bach = 4\n", "batching.max_bach", "unknown key"),
    ("[model]", "foo = 1\n[model]", "foo", "unknown key"),
    ('path = "tiny.onnx"', 'path = "missing.onnx"', "model.path", "does not exist"),
    ("", '\n[[cameras]]\nname = "a"\nsource = "b.mp4"\n', "cameras[1].name", "unique"),
    ("", "\n[batching]\nmax_batch = 0\n", "batching.max_batch", "at least 1"),
    ("", '\n[batching]\nmax_wait = "10ms"\n', "batching.max_wait", "must be a number"),
    ("", "\n[batching]\nmax_batch = true\n", "batching.max_batch", "must be an integer"),
    ('source = "a.mp4"', 'source = "a.mp4"\npolicy = "newest"', "cameras[0].policy",
     "'every', 'latest'"),
    ('source = "a.mp4"', 'source = "a.mp4"\nreconnect = { tries = 3 }',
     "cameras[0].reconnect.tries", "unknown key"),
    ('source = "a.mp4"', "", "cameras[0].source", "missing"),
    ('name = "a"', 'name = ""', "cameras[0].name", "must not be empty"),
    ("", '\n[postprocess]\nkind = "classify"\nconf = 0.5\n', "postprocess.conf",
     "unknown key (for kind = 'classify')"),
    ("", '\n[postprocess]\nkind = "detect"\niou = 1.5\n', "postprocess.iou", "at most 1"),
    ("", '\n[postprocess]\nkind = "detect"\nagnostic = "yes"\n', "postprocess.agnostic",
     "true or false"),
    ("", '\n[postprocess]\nkind = "classify"\nlabels = "nope.txt"\n', "postprocess.labels",
     "does not exist"),
    ("", '\n[[sinks]]\nkind = "jsonl"\n', "sinks[0].path", "missing"),
    ("", '\n[[sinks]]\nkind = "jsonl"\npath = "no/such/folder/r.jsonl"\n', "sinks[0].path",
     "does not exist"),
    ("", '\n[[sinks]]\nkind = "callback"\ntarget = "nocolon"\n', "sinks[0].target",
     "'module:function'"),
    ("", '\n[[sinks]]\nkind = "mp4"\n', "sinks[0].kind", "'jsonl', 'callback', 'video'"),
    ("", '\n[[sinks]]\nkind = "video"\n', "sinks[0].path", "missing"),
    ("", '\n[[sinks]]\nkind = "video"\npath = "no/such/folder"\n', "sinks[0].path",
     "does not exist; create it"),
    ("", '\n[[sinks]]\nkind = "video"\npath = "tiny.onnx"\n', "sinks[0].path",
     "is not a folder"),
    ("", '\n[[sinks]]\nkind = "video"\npath = "."\nsegment_seconds = 0\n',
     "sinks[0].segment_seconds", "above 0"),
    ("", '\n[[sinks]]\nkind = "video"\npath = "."\nsegment_seconds = "1m"\n',
     "sinks[0].segment_seconds", "must be a number"),
    ("", '\n[[sinks]]\nkind = "video"\npath = "."\ntarget = "a:b"\n', "sinks[0].target",
     "unknown key (for kind = 'video')"),
    ("", '\n[[sinks]]\nkind = "jsonl"\npath = "r.jsonl"\nsegment_seconds = 5\n',
     "sinks[0].segment_seconds", "unknown key (for kind = 'jsonl')"),
    ("", '\n[batching]\ndecode = "nvdec"\n[[sinks]]\nkind = "video"\npath = "."\n',
     "sinks[0].kind", "camera 'a' decodes on NVDEC, which keeps them on the GPU"),
    ('source = "a.mp4"', 'source = "a.mp4"\ndecode = "nvdec"\n[[sinks]]\nkind = "video"\n'
     'path = "."', "sinks[0].kind", "camera 'a' decodes on NVDEC"),
    ('source = "a.mp4"', 'source = "a.mp4"\ndecode = "gpu"', "cameras[0].decode",
     "'cpu', 'nvdec'"),
    ('source = "a.mp4"', 'source = "a.mp4"\ndecode = "nvdec"\nprocess = true',
     "cameras[0].process", "a worker process decodes on the CPU"),
    ("", "\n[health]\nstuck_after = 0\n", "health.stuck_after", "above 0"),
    ("", "\n[metrics]\nport = 70000\n", "metrics.port", "at most 65535"),
    ("", "\n[model.preprocess]\nsize = [8]\ncolour = 'rgb'\n", "model.preprocess",
     "unknown Preprocess keys"),
    ('[model]\npath = "tiny.onnx"', "", "model", "missing; give a table"),
    (MINIMAL, 'cameras = 3\n[model]\npath = "tiny.onnx"\n', "cameras", "array of tables"),
]


@pytest.mark.parametrize(("old", "new", "key", "problem"), BAD,
                         ids=[case[2] + ":" + case[3] for case in BAD])
def test_each_bad_input_fails_with_one_line_naming_file_key_and_problem(
        folder: Path, old: str, new: str, key: str, problem: str) -> None:
    text = MINIMAL.replace(old, new) if old else MINIMAL + new
    path = write(folder, text)
    with pytest.raises(xs.ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message, message
    assert isinstance(caught.value, ValueError)  # an input error, as the CLI reports it


def test_a_file_that_is_not_toml_or_not_there_is_one_line_too(folder: Path) -> None:
    with pytest.raises(xs.ConfigError, match=r"serve.toml: not valid TOML: .*line 1"):
        load_config(write(folder, "[model\npath = 1\n"))
    with pytest.raises(xs.ConfigError, match=r"nope.toml: cannot read the config file"):
        load_config(folder / "nope.toml")


def test_a_camera_may_decode_elsewhere_than_the_batching_default(folder: Path) -> None:
    """Per-camera ``decode``: the camera the config makes says where it decodes; a video sink
    may take the cameras decoded on the CPU while the rest decode on NVDEC."""
    text = MINIMAL.replace('source = "a.mp4"', 'source = "a.mp4"\ndecode = "cpu"\nprocess = true')
    text += ('[[cameras]]\nname = "b"\nsource = "b.mp4"\n'
             '[batching]\ndecode = "nvdec"\n'
             '[[sinks]]\nkind = "video"\npath = "."\ncameras = ["a"]\n')
    config = load_config(write(folder, text))
    a, b = (camera.camera() for camera in config.cameras)
    assert (a.decode, dict(a.options), b.decode) == ("cpu", {"process": True}, None)
