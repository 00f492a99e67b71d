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
FULL_UNTIL_BELOW = 0.9  # a full spool's episode ends once it is below this share of max_bytes


class SpoolSender:
    """Moves predictions from the pipelines through the spool to the broker.

    `undelivered` is one counter: +1 for each submitted message (and each row found in the spool
    at start), -1 when the broker acknowledges one or when one is dropped (spool full, or the
    in-memory queue that stands in for a spool the disk refuses overflowing)."""

    def __init__(self, publisher, path: Path, max_bytes: int, policy: str):
        self._publisher = publisher
        self._spool = Spool(path, max_bytes, policy)
        self.error = ""
        self.written = 0
        self.dropped_in_memory = 0  # never reached the spool: the disk refused them and memory ran out
        # (topic, payload, qos, retain, counter name or "", seq, state entries or None); topic "" = state only
        self._submitted: deque[tuple] = deque()
        self._acked: list[tuple[int, int]] = []  # (row id, size) acknowledged, to delete at the next write
        self._lock = threading.Lock()  # _pending, _acked, _inflight, _live_inflight
        self._pending = self._spool.count
        self._cursor = 0  # id of the newest row handed to paho
        self._ram: deque[SpooledMessage] = deque()
        self._ram_complete = self._spool.count == 0  # every unsent row is in _ram
        self._live: deque[tuple[str, bytes, int, bool]] = deque()
        self._states = self._spool.states()  # the newest state entry of each name, submitted or saved
        self._inflight = 0
        self._live_inflight = 0
        self._failed_mono = 0.0
        self._full_since: int | None = None  # spool.dropped when the current "spool full" episode began
        self._memory_full_since: int | None = None  # dropped_in_memory when the current overflow began
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt-spool", daemon=True)

    # --- called from other threads ------------------------------------------------
    def last_seq(self, pipeline: str) -> int:
        """The last prediction number spooled for `pipeline` (so numbering continues after a restart)."""
        return self._spool.counter(f"seq/{pipeline}")

    def submit(self, topic: str, payload: bytes, qos: int, pipeline: str, seq: int) -> None:
        """A prediction: its `seq` is the pipeline's numbering, which survives restarts."""
        with self._lock:
            self._pending += 1
        self._submitted.append((topic, payload, qos, False, f"seq/{pipeline}", seq, None))
        self._wake.set()  # whatever piles up while the thread is busy is written in one transaction

    def submit_messages(self, messages: list[tuple[str, bytes, int, bool]], states: dict[str, str | None] | None = None) -> None:
        """Messages (topic, payload, qos, retain) that go out in this order, and the state entries they
        leave (name → JSON, None deletes), written in the same transaction: a restart finds the state
        that matches exactly the messages that reached the disk."""
        states = states or {}
        if not messages and not states:
            return
        for name, value in states.items():
            if value is None:
                self._states.pop(name, None)
            else:
                self._states[name] = value
        with self._lock:
            self._pending += len(messages)
        items = [(t, p, q, r, "", 0, None) for t, p, q, r in messages]
        if not items:
            items.append(("", b"", 0, False, "", 0, None))  # a state change without a message
        items[-1] = (*items[-1][:6], dict(states))
        self._submitted.extend(items)
        self._wake.set()

    def state(self, name: str) -> str | None:
        """The newest state entry saved (or submitted) under `name`; None when there is none."""
        return self._states.get(name)

    def states_under(self, prefix: str) -> dict[str, str]:
        """Every state entry whose name starts with `prefix`, by the rest of its name."""
        return {name[len(prefix):]: value for name, value in list(self._states.items()) if name.startswith(prefix)}

    @property
    def count(self) -> int:
        return self._spool.count + sum(1 for item in list(self._submitted) if item[0])

    @property
    def dropped(self) -> int:
        return self._spool.dropped

    @property
    def undelivered(self) -> int:
        """Messages submitted (or found in the spool at start) and neither acknowledged nor dropped."""
        with self._lock:
            return self._pending

    @property
    def in_memory(self) -> int:
        """Undelivered messages that are not in the spool (the disk refused them): gone at exit."""
        with self._lock:
            return len(self._live) + self._live_inflight

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

    def flush(self, timeout_s: float) -> None:
        """Wait (bounded) until the spool thread has taken every submission: written, or dropped and counted."""
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and self._submitted and time.monotonic() < deadline:
            self._idle.clear()
            self._wake.set()
            self._idle.wait(max(0.0, min(0.2, deadline - time.monotonic())))

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
        if self._full_since is not None:
            logger.warning("spool still full at shutdown: %d messages dropped since it filled (%s)",
                           self._spool.dropped - self._full_since, self._spool.policy)
        unsent = len(self._live)  # (those in flight may still be acknowledged by paho)
        if unsent or self._memory_full_since is not None:
            self._live.clear()
            self._drop_from_memory(unsent)
            self._end_memory_episode()

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
        with self._lock:
            acked, self._acked = self._acked, []
        if new or acked:
            self._write(new, acked)
        if send and self._publisher.connected.is_set():
            self._send_live()
            self._send_spooled()

    def _write(self, new: list, acked: list[tuple[int, int]]) -> None:
        counters = {counter: seq for _, _, _, _, counter, seq, _ in new if counter}
        states: dict[str, str | None] = {}
        for *_, entries in new:
            if entries:
                states.update(entries)
        messages = [(t, p, q, r) for t, p, q, r, *_ in new if t]
        try:
            rows, dropped = self._spool.write(messages, acked, counters, self._cursor, states)
        except SpoolError as err:
            if not self.error:
                logger.error("%s; publishing live without the spool until it works again", err)
            self.error, self._failed_mono = str(err), time.monotonic()
            with self._lock:
                self._acked[:0] = acked  # still on disk: delete them at the next successful write
            self._keep_in_memory(messages)
            self._ram.clear()
            self._ram_complete = False
            return
        if self.error and time.monotonic() - self._failed_mono >= RECOVERED_AFTER_S:
            logger.info("spool %s writable again", self._spool.path)
            self.error = ""
        self.written += len(rows)
        if dropped:
            with self._lock:
                self._pending -= dropped
            if self._full_since is None:
                self._full_since = self._spool.dropped - dropped
                logger.warning("spool full (%d bytes): dropping the %s messages (policy %s) until it has room; "
                               "the count follows then", self._spool.max_bytes,
                               "newest" if self._spool.policy == "drop_new" else "oldest", self._spool.policy)
            # rows may have gone from the database that are still queued in memory
            self._ram.clear()
            self._ram_complete = False
        else:
            if self._full_since is not None and self._spool.bytes <= FULL_UNTIL_BELOW * self._spool.max_bytes:
                logger.warning("spool no longer full: %d messages dropped while it was (%s)",
                               self._spool.dropped - self._full_since, self._spool.policy)
                self._full_since = None
            if self._ram_complete and len(self._ram) + len(rows) <= RAM_ROWS:
                self._ram.extend(rows)
            else:
                self._ram_complete = False

    def _keep_in_memory(self, messages: list[tuple[str, bytes, int, bool]]) -> None:
        """Queue what the disk refused; beyond LIVE_FALLBACK_ROWS the oldest are dropped and counted."""
        self._live.extend(messages)
        overflow = len(self._live) - LIVE_FALLBACK_ROWS
        if overflow > 0:
            for _ in range(overflow):
                self._live.popleft()
            if self._memory_full_since is None:
                self._memory_full_since = self.dropped_in_memory
                logger.warning("spool %s cannot be written and more than %d predictions wait for the broker: the "
                               "oldest held in memory are dropped from now on; the count follows when the queue empties",
                               self._spool.path, LIVE_FALLBACK_ROWS)
            self._drop_from_memory(overflow)

    def _drop_from_memory(self, count: int) -> None:
        self.dropped_in_memory += count
        with self._lock:
            self._pending -= count

    def _end_memory_episode(self) -> None:
        logger.warning("spool: %d predictions dropped while held in memory (the disk refused writes and the broker "
                       "did not take them in time)", self.dropped_in_memory - (self._memory_full_since or 0))
        self._memory_full_since = None

    def _send_live(self) -> None:
        while self._live and self._inflight < MAX_INFLIGHT:
            topic, payload, qos, retain = message = self._live.popleft()
            if not self._hand_to_paho(topic, payload, qos, row=None, retain=retain):
                self._live.appendleft(message)
                return
        if not self._live and self._memory_full_since is not None:
            self._end_memory_episode()

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
            if not self._hand_to_paho(row.topic, row.payload, row.qos, row):
                self._ram.appendleft(row)
                return
            self._cursor = row.id

    def _hand_to_paho(self, topic: str, payload: bytes, qos: int, row: SpooledMessage | None, retain: bool = False) -> bool:
        with self._lock:
            self._inflight += 1  # before publish: the ack may arrive before publish() returns
            if row is None:
                self._live_inflight += 1
        retain = row.retain if row is not None else retain
        if self._publisher.publish(topic, payload, qos=qos, retain=retain, on_delivered=lambda: self._on_delivered(row)):
            return True
        with self._lock:
            self._inflight -= 1
            if row is None:
                self._live_inflight -= 1
        return False

    def _on_delivered(self, row: SpooledMessage | None) -> None:
        """On paho's thread: the broker has the message."""
        with self._lock:
            if row is not None:
                self._acked.append((row.id, row.size))
            else:
                self._live_inflight -= 1
            self._inflight -= 1
            self._pending -= 1
        self._wake.set()
