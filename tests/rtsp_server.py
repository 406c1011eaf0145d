"""A small RTSP server for the tests: GStreamer's RTSP server (gi), on 127.0.0.1 only.

Run with the system Python that has ``python3-gi`` (``/usr/bin/python3``), not the project's:

    /usr/bin/python3 tests/rtsp_server.py CLIP.mp4 PORT /MOUNT

Serves the H.264 video of ``CLIP.mp4`` at ``rtsp://127.0.0.1:PORT/MOUNT`` without re-encoding
(``qtdemux ! rtph264pay``), paced in real time, as one shared media (a client that connects
later joins the running stream, as with a camera), over RTP interleaved in the RTSP connection
(TCP only: no UDP port is opened). ``PORT`` 0 picks a free port. When listening it prints one
line ``ready rtsp://127.0.0.1:PORT/MOUNT`` on stdout. Exit status 2 with one line on stderr when
gi, the RTSP server library or a GStreamer element is missing, 3 when the port cannot be bound.
SIGTERM and SIGINT end it cleanly; the tests mostly SIGKILL it (an outage).
"""

from __future__ import annotations

import signal
import sys

ELEMENTS = ("filesrc", "qtdemux", "rtph264pay", "appsink", "rtpbin")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: rtsp_server.py CLIP.mp4 PORT /MOUNT", file=sys.stderr)
        return 1
    clip, port, mount = argv
    try:
        import gi  # type: ignore[import-not-found, unused-ignore]

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtsp", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import (  # type: ignore[import-not-found, unused-ignore]
            GLib,
            Gst,
            GstRtsp,
            GstRtspServer,
        )
    except (ImportError, ValueError) as exc:
        print(f"missing: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    Gst.init(None)
    missing = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        print(f"missing: GStreamer elements {', '.join(missing)}", file=sys.stderr)
        return 2

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    location = clip.replace("\\", "\\\\").replace('"', '\\"')
    # config-interval=-1: SPS/PPS before every keyframe, so a client joining the shared stream
    # late can start decoding at the next keyframe.
    factory.set_launch(f'( filesrc location="{location}" ! qtdemux ! '
                       f"rtph264pay name=pay0 pt=96 config-interval=-1 )")
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
    server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr)
        return 3

    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"ready rtsp://127.0.0.1:{server.get_bound_port()}{mount}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
