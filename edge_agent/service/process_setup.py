"""The daemon's process-wide settings, in one place, applied once when the agent starts.

Nothing in edge_agent changes process-wide state at import; `setup_process()` is called by the
agent (`edge-agent run`) before it builds anything.
"""

from __future__ import annotations

import sys
import threading

from edge_agent.sources.opencv_setup import configure_opencv

# Capture, output, spool and paho threads each do short bursts of Python between blocking calls;
# CPython's default 5 ms GIL switch interval makes them wait for each other (measured: a tiny
# model published 2,000/s at 5 ms and 4,000-6,000/s at 0.5 ms).
GIL_SWITCH_INTERVAL_S = 0.0005

_lock = threading.Lock()
_done = False


def setup_process() -> None:
    """GIL switch interval and OpenCV's settings for capture; later calls do nothing."""
    global _done
    with _lock:
        if _done:
            return
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        configure_opencv()
        _done = True
