"""Predictions to a serial port (pyserial), for a microcontroller beside the board.

Each prediction is one line: the JSON payload, or compact `label,score` (csv). Writing
happens on the sink's own thread behind a small queue, so a slow or unplugged port never
stalls inference; when the queue is full the oldest line is dropped and counted. A port
that fails is reopened with capped backoff and the change is logged once.
"""

from __future__ import annotations

import logging
import queue
import threading

import serial

from edge_agent.config import SerialConfig
from edge_agent.records import Prediction

logger = logging.getLogger(__name__)

QUEUE_LINES = 64
REOPEN_MIN_DELAY_S = 0.5
REOPEN_MAX_DELAY_S = 10.0


def format_line(prediction: Prediction, payload_json: str, line_format: str) -> bytes:
    """The bytes written for one prediction, newline-terminated."""
    if line_format == "csv":
        top = prediction.top()
        text = f"{top[0]},{top[1]:.3f}" if top else "none,0.000"
    else:
        text = payload_json
    return text.encode("utf-8") + b"\n"


class SerialSink:
    name = "serial"

    def __init__(self, config: SerialConfig):
        self.config = config
        self.written = 0
        self.dropped = 0
        self._lines: queue.Queue[bytes] = queue.Queue(maxsize=QUEUE_LINES)
        self._stop = threading.Event()
        self._port: serial.SerialBase | None = None
        self._thread = threading.Thread(target=self._run, name="serial-sink", daemon=True)
        self._thread.start()

    def send(self, prediction: Prediction, payload_json: str) -> None:
        line = format_line(prediction, payload_json, self.config.format)
        while True:
            try:
                self._lines.put_nowait(line)
                return
            except queue.Full:
                try:
                    self._lines.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def close(self, timeout_s: float) -> None:
        """Write what is queued (bounded by timeout_s), then close the port."""
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        delay_s = REOPEN_MIN_DELAY_S
        failed = False
        while True:
            if self._port is None:
                if self._stop.is_set():
                    return
                try:
                    self._port = serial.serial_for_url(
                        self.config.port, baudrate=self.config.baud, write_timeout=self.config.write_timeout_s
                    )
                except (serial.SerialException, OSError, ValueError) as err:
                    if not failed:
                        logger.warning("serial port %s unavailable (%s); retrying", self.config.port, err)
                        failed = True
                    self._stop.wait(delay_s)
                    delay_s = min(delay_s * 2, REOPEN_MAX_DELAY_S)
                    continue
                logger.info("serial port %s %s at %d baud", self.config.port, "back" if failed else "open", self.config.baud)
                failed, delay_s = False, REOPEN_MIN_DELAY_S
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    self._close_port()
                    return
                continue
            try:
                self._port.write(line)
                self.written += 1
            except (serial.SerialException, OSError) as err:
                self.dropped += 1
                logger.warning("serial port %s failed (%s); reopening", self.config.port, err)
                failed = True
                self._close_port()

    def _close_port(self) -> None:
        if self._port is not None:
            try:
                self._port.flush()
                self._port.close()
            except (serial.SerialException, OSError):
                pass
            self._port = None
