"""Predictions as JSON lines on standard output, for piping and debugging (logs go to stderr)."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from edge_agent.records import Prediction


class StdoutSink:
    name = "stdout"

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()

    def send(self, prediction: Prediction, payload_json: str) -> None:
        with self._lock:
            try:
                self._stream.write(payload_json + "\n")
                self._stream.flush()
            except BrokenPipeError:  # the reader went away (e.g. `| head`); keep running
                pass

    def close(self, timeout_s: float) -> None:
        with self._lock:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                pass
