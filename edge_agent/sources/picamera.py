"""Raspberry Pi CSI cameras through Picamera2 (OpenCV cannot read them on the libcamera stack)."""

from __future__ import annotations

import numpy as np

from edge_agent.config import SourceSpec
from edge_agent.sources.spec import SourceError, picamera_index

PICAMERA_HELP = (
    "Picamera2 is not installed in the agent's Python: on Raspberry Pi OS run "
    "`sudo apt install python3-picamera2` and create the venv with --system-site-packages "
    "(deploy/install.sh does this when it finds Picamera2)"
)


class PicameraSource:
    """Frames from a CSI camera as BGR arrays."""

    live = True

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.description = f"picamera2 camera {picamera_index(spec.uri)}"
        self._camera = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2  # imported lazily: only Raspberry Pi OS has it
        except ImportError as err:
            raise SourceError(f"{self.description}: {PICAMERA_HELP}") from err
        try:
            camera = Picamera2(picamera_index(self.spec.uri))
            size = (self.spec.width or 640, self.spec.height or 480)
            # libcamera's "RGB888" is stored B, G, R in memory: what OpenCV calls BGR.
            camera.configure(camera.create_video_configuration(main={"size": size, "format": "RGB888"}))
            camera.start()
        except Exception as err:  # Picamera2 raises many types; all mean "no camera"
            raise SourceError(f"{self.description} did not open: {err}. Check the ribbon cable and `rpicam-hello --list-cameras`") from err
        self._camera = camera

    def read(self) -> np.ndarray:
        try:
            return self._camera.capture_array("main")
        except Exception as err:
            raise SourceError(f"{self.description} stopped delivering frames: {err}") from err

    def close(self) -> None:
        if self._camera is not None:
            try:
                self._camera.stop()
                self._camera.close()
            finally:
                self._camera = None
