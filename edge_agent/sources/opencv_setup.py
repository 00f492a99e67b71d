"""OpenCV's process-wide settings for capture, applied once at start (never at import).

Importing edge_agent must leave a host program's OpenCV as it was (a test, a notebook, a tool
that embeds the package); the daemon and the bench call `configure_opencv()` when they start.
"""

from __future__ import annotations

import os

RTSP_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
OPENCV_THREADS = 1
OPENCV_LOG_ERRORS_ONLY = 2  # cv2.utils.logging.LOG_LEVEL_ERROR


def configure_opencv() -> None:
    """Capture's OpenCV settings for this process (idempotent)."""
    import cv2

    # Capture and preprocessing run on one thread beside the interpreter's; OpenCV's own worker
    # threads would only take cores from invoke().
    cv2.setNumThreads(OPENCV_THREADS)
    # OpenCV's own warnings repeat on every reconnect attempt; the agent logs each outage once itself.
    cv2.setLogLevel(OPENCV_LOG_ERRORS_ONLY)
    # RTSP over TCP: UDP loses packets on Wi-Fi. Read by FFmpeg when a capture opens (other
    # protocols ignore it); a value the user set in the environment wins.
    os.environ.setdefault(RTSP_OPTIONS_ENV, "rtsp_transport;tcp")
