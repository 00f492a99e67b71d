"""Store-and-forward: every QoS 1 prediction goes through the disk spool, oldest first.

One thread owns the spool. Each round it writes what the pipelines submitted and forgets
what the broker acknowledged (one SQLite transaction), then, while connected, hands the
oldest unsent rows to paho, keeping at most MAX_INFLIGHT unacknowledged. New predictions
queue behind a backlog, so a subscriber sees every pipeline's messages in order. When the
disk refuses writes, messages are published live from memory and the failure is reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path

from edge_agent.mqtt.spool import Spool, SpooledMessage, SpoolError

logger = logging.getLogger(__name__)

MAX_INFLIGHT = 100
READ_BATCH = 500
RAM_ROWS = 5_000  # rows also kept in memory so steady state never reads the database back
ROUND_S = 0.05  # idle wake-up; submissions and acknowledgements wake the thread at once
LIVE_FALLBACK_ROWS = 10_000  # in-memory queue while the disk refuses writes
RECOVERED_AFTER_S = 10.0  # a disk that accepts writes again is trusted after this long


class SpoolSender:
    """Moves predictions from the pipelines through the spool to the broker."""

    def __init__(self, publisher, path: Path, max_bytes: int, policy: str):
        self._publisher = publisher
        self._spool = Spool(path, max_bytes, policy)
        self.error = ""
        self.written = 0
        self._submitted: deque[tuple[str, bytes, int, str, int]] = deque()
        self._acked: list[int] = []
        self._acked_lock = threading.Lock()
        self._cursor = 0  # id of the newest row handed to paho
        self._ram: deque[SpooledMessage] = deque()
        self._ram_complete = self._spool.count == 0  # every unsent row is in _ram
        self._live: deque[tuple[str, bytes, int]] = deque(maxlen=LIVE_FALLBACK_ROWS)
        self._inflight = 0
        self._failed_mono = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt-spool", daemon=True)

    # --- called from other threads ------------------------------------------------
    def last_seq(self, pipeline: str) -> int:
        """The last prediction number spooled for `pipeline` (so numbering continues after a restart)."""
        return self._spool.counter(f"seq/{pipeline}")

    def submit(self, topic: str, payload: bytes, qos: int, pipeline: str, seq: int) -> None:
        self._submitted.append((topic, payload, qos, pipeline, seq))
        self._wake.set()  # whatever piles up while the thread is busy is written in one transaction

    @property
    def count(self) -> int:
        return self._spool.count + len(self._submitted)

    @property
    def dropped(self) -> int:
        return self._spool.dropped

    def snapshot(self) -> dict:
        return {
            "messages": self.count,
            "bytes": self._spool.bytes,
            "max_bytes": self._spool.max_bytes,
            "dropped": self._spool.dropped,
            "policy": self._spool.policy,
            "error": self.error,
        }

    def start(self) -> None:
        self._thread.start()

    @property
    def undelivered(self) -> int:
        """Messages submitted but not yet acknowledged by the broker (0 means all delivered)."""
        with self._acked_lock:
            inflight = self._inflight
        unsent = 0 if (self._ram_complete and not self._ram) else max(1, len(self._ram))
        return len(self._submitted) + len(self._live) + unsent + inflight

    def drain(self, deadline: float) -> None:
        """Until `deadline`: commit what was submitted and let delivery catch up while connected."""
        while time.monotonic() < deadline:
            self._idle.clear()
            self._wake.set()
            self._idle.wait(max(0.0, min(0.2, deadline - time.monotonic())))
            if not self._submitted and (self.undelivered == 0 or not self._publisher.connected.is_set()):
                return

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if not self._thread.is_alive():  # never close the database under a running transaction
            self._spool.close()

    # --- the spool thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                self._round(send=not stopping)
            except Exception as err:  # the edge of the thread: a dead spool thread would stall every prediction
                if not self.error:
                    logger.exception("spool round failed; retrying every %g s", ROUND_S)
                self.error, self._failed_mono = f"{type(err).__name__}: {err}", time.monotonic()
                self._ram.clear()
                self._ram_complete = False
                self._stop.wait(ROUND_S)
            if stopping:
                return
            self._idle.set()
            self._wake.wait(ROUND_S)
            self._wake.clear()

    def _round(self, send: bool = True) -> None:
        new = [self._submitted.popleft() for _ in range(len(self._submitted))]
        with self._acked_lock:
            acked, self._acked = self._acked, []
        if new or acked:
            self._write(new, acked)
        if send and self._publisher.connected.is_set():
            self._send_live()
            self._send_spooled()

    def _write(self, new: list, acked: list[int]) -> None:
        counters = {f"seq/{pipeline}": seq for _, _, _, pipeline, seq in new}
        dropped_before = self._spool.dropped
        try:
            rows = self._spool.write([(t, p, q) for t, p, q, _, _ in new], acked, counters, self._cursor)
        except SpoolError as err:
            if not self.error:
                logger.error("%s; publishing live without the spool until it works again", err)
            self.error, self._failed_mono = str(err), time.monotonic()
            with self._acked_lock:
                self._acked[:0] = acked  # still on disk: delete them at the next successful write
            self._live.extend((t, p, q) for t, p, q, _, _ in new)
            self._ram.clear()
            self._ram_complete = False
            return
        if self.error and time.monotonic() - self._failed_mono >= RECOVERED_AFTER_S:
            logger.info("spool %s writable again", self._spool.path)
            self.error = ""
        self.written += len(rows)
        if self._spool.dropped != dropped_before:
            # rows may have gone from the database that are still queued in memory
            logger.warning("spool full (%d bytes): %d messages dropped (%s)", self._spool.max_bytes,
                           self._spool.dropped - dropped_before, self._spool.policy)
            self._ram.clear()
            self._ram_complete = False
        elif self._ram_complete and len(self._ram) + len(rows) <= RAM_ROWS:
            self._ram.extend(rows)
        else:
            self._ram_complete = False

    def _send_live(self) -> None:
        while self._live and self._inflight < MAX_INFLIGHT:
            topic, payload, qos = self._live.popleft()
            if not self._hand_to_paho(topic, payload, qos, row_id=None):
                self._live.appendleft((topic, payload, qos))
                return

    def _send_spooled(self) -> None:
        while self._inflight < MAX_INFLIGHT:
            if not self._ram:
                if self._ram_complete:
                    return
                batch = self._spool.read_after(self._cursor, READ_BATCH)
                self._ram.extend(batch)
                self._ram_complete = len(batch) < READ_BATCH
                if not batch:
                    return
            row = self._ram.popleft()
            if row.id <= self._cursor:
                continue
            if not self._hand_to_paho(row.topic, row.payload, row.qos, row.id):
                self._ram.appendleft(row)
                return
            self._cursor = row.id

    def _hand_to_paho(self, topic: str, payload: bytes, qos: int, row_id: int | None) -> bool:
        with self._acked_lock:
            self._inflight += 1  # before publish: the ack may arrive before publish() returns
        if self._publisher.publish(topic, payload, qos=qos, on_delivered=lambda: self._on_delivered(row_id)):
            return True
        with self._acked_lock:
            self._inflight -= 1
        return False

    def _on_delivered(self, row_id: int | None) -> None:
        """On paho's thread: the broker has the message."""
        with self._acked_lock:
            if row_id is not None:
                self._acked.append(row_id)
            self._inflight -= 1
        self._wake.set()
