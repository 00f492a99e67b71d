"""Sources read through cv2.VideoCapture: cameras, V4L2 devices, streams, GStreamer pipelines, video files."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np

from edge_agent.config import SourceSpec
from edge_agent.sources.spec import SourceError, is_live, redact_url, source_kind

logger = logging.getLogger(__name__)

# OpenCV's process-wide settings (threads, log level, RTSP over TCP) are applied once at start by
# sources.opencv_setup.configure_opencv, never at import.


def opencv_has_gstreamer() -> bool:
    info = cv2.getBuildInformation()
    return any("GStreamer" in line and "YES" in line for line in info.splitlines())


class VideoCaptureSource:
    """A cv2.VideoCapture behind the Source interface; reads reuse one frame buffer."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.kind = source_kind(spec)
        self.live = is_live(spec)
        self.description = f"{self.kind} {redact_url(spec.uri)}"
        self._capture: cv2.VideoCapture | None = None
        self._buffer: np.ndarray | None = None

    def open(self) -> None:
        capture = self._make_capture()
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.description} did not open: {self._open_hint()}")
        self._capture = capture

    def read(self) -> np.ndarray | None:
        """The next frame (valid until the next read); None at the end of a file."""
        if self._capture is None:
            raise SourceError(f"{self.description} is not open")
        ok, frame = self._capture.read(self._buffer)
        if not ok or frame is None:
            if not self.live and self.spec.loop and self._rewind():
                ok, frame = self._capture.read(self._buffer)
            if not ok or frame is None:
                if self.live:
                    raise SourceError(f"{self.description} stopped delivering frames")
                return None
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        self._buffer = frame
        return frame

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
        self._buffer = None

    def _rewind(self) -> bool:
        if self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0):
            return True
        self.close()  # some containers cannot seek: reopen instead
        self.open()
        return True

    def _make_capture(self) -> cv2.VideoCapture:
        spec = self.spec
        # Timeouts only work when given to the constructor; set() afterwards is ignored.
        timeouts = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(spec.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(spec.read_timeout_s * 1000),
        ]
        if self.kind in ("camera", "v4l2"):
            device = int(spec.uri) if self.kind == "camera" else spec.uri
            params = []
            if spec.width and spec.height:
                params += [cv2.CAP_PROP_FRAME_WIDTH, spec.width, cv2.CAP_PROP_FRAME_HEIGHT, spec.height]
            if spec.fps:
                params += [cv2.CAP_PROP_FPS, int(spec.fps)]
            capture = cv2.VideoCapture(device, cv2.CAP_V4L2, params)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver from queueing stale frames
            return capture
        if self.kind == "gstreamer":
            if not opencv_has_gstreamer():
                raise SourceError(
                    f"{self.description}: this OpenCV build has no GStreamer support. Install Debian's "
                    "python3-opencv (built with GStreamer) and create the venv with --system-site-packages"
                )
            return cv2.VideoCapture(spec.uri, cv2.CAP_GSTREAMER)
        if self.kind == "stream":
            return cv2.VideoCapture(spec.uri, cv2.CAP_FFMPEG, timeouts)
        if not os.path.isfile(spec.uri):
            raise SourceError(f"video file {spec.uri} does not exist: check the source path")
        return cv2.VideoCapture(spec.uri, cv2.CAP_ANY, timeouts)

    def _open_hint(self) -> str:
        if self.kind in ("camera", "v4l2"):
            return (
                "check that the camera is plugged in (`v4l2-ctl --list-devices`), not used by another "
                "program, and that the agent's user is in the video group. A Raspberry Pi CSI camera "
                'needs source = "picamera2"'
            )
        if self.kind == "stream":
            return (
                f"check the URL, credentials and that the camera is reachable; gave up after "
                f"{self.spec.open_timeout_s:g} s (source.open_timeout_s)"
            )
        if self.kind == "gstreamer":
            return "check the pipeline with gst-launch-1.0 and that it ends in appsink"
        return "the file exists but OpenCV cannot decode it: check the file and its codec"
