"""A durable, bounded FIFO of outgoing MQTT messages: SQLite in WAL mode.

A message is written here before it is published and deleted only after the broker's
PUBACK, so a broker outage, a killed agent or a power cut loses nothing that reached the
spool. SQLite (standard library) survives power loss mid-write; a database that is
damaged anyway is moved aside at start and a fresh one begins.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import EdgeAgentError

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_ROW_OVERHEAD_BYTES = 64  # what SQLite spends per row beyond topic and payload, roughly


@dataclass(frozen=True)
class SpooledMessage:
    id: int
    topic: str
    payload: bytes
    qos: int


class SpoolError(EdgeAgentError, RuntimeError):
    """The spool could not be written (disk full, read-only, I/O error)."""


class Spool:
    """Owned by one thread: every method must be called from the thread that made it."""

    def __init__(self, path: Path, max_bytes: int, policy: str = "drop_oldest"):
        self.path = path
        self.max_bytes = max_bytes
        self.policy = policy
        self.dropped = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open_or_replace(path)
        self.count, self.bytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
        self.dropped = self.counter("spool/dropped")

    def _open_or_replace(self, path: Path) -> sqlite3.Connection:
        try:
            return self._open(path)
        except sqlite3.DatabaseError as err:
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                part = Path(str(path) + suffix)
                if part.exists():
                    part.rename(Path(str(aside) + suffix))
            logger.error("spool %s is damaged (%s): moved aside to %s, starting an empty spool", path, err, aside)
            return self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power cut may lose the last commits but never corrupts the file
            db.execute("PRAGMA synchronous=NORMAL")
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {result}")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def write(self, new: list[tuple[str, bytes, int]], acked: list[int], counters: dict[str, int], sent_up_to: int) -> list[SpooledMessage]:
        """In one transaction: forget acknowledged ids, append `new`, update counters, keep within max_bytes.

        Returns the rows appended (with their ids). Rows with id <= sent_up_to are in flight
        and never dropped. Raises SpoolError when the disk refuses the write.
        """
        try:
            self._db.execute("BEGIN IMMEDIATE")
            if acked:
                self._db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in acked])
            rows = []
            for topic, payload, qos in new:
                size = len(payload) + len(topic) + _ROW_OVERHEAD_BYTES
                if self.policy == "drop_new" and self.bytes_after_acks(acked) + size > self.max_bytes:
                    self.dropped += 1
                    continue
                cursor = self._db.execute(
                    "INSERT INTO messages (topic, payload, qos, size) VALUES (?, ?, ?, ?)", (topic, payload, qos, size)
                )
                rows.append(SpooledMessage(cursor.lastrowid, topic, payload, qos))
            if self.policy == "drop_oldest":
                self._drop_oldest(sent_up_to)
            counters = {**counters, "spool/dropped": self.dropped}
            self._db.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                list(counters.items()),
            )
            self._db.execute("COMMIT")
            self.count, self.bytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
            return [row for row in rows if self._exists(row.id)] if self.policy == "drop_oldest" and rows else rows
        except sqlite3.Error as err:
            self._rollback()
            try:
                self.dropped = self.counter("spool/dropped", default=self.dropped)
            except sqlite3.Error:
                pass
            raise SpoolError(f"spool {self.path} cannot be written: {err}") from err

    def bytes_after_acks(self, acked: list[int]) -> int:
        return self._db.execute("SELECT COALESCE(SUM(size), 0) FROM messages").fetchone()[0]

    def _drop_oldest(self, sent_up_to: int) -> None:
        total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM messages").fetchone()[0]
        while total > self.max_bytes:
            victims = self._db.execute(
                "SELECT id, size FROM messages WHERE id > ? ORDER BY id LIMIT 256", (sent_up_to,)
            ).fetchall()
            if not victims:
                return  # only in-flight rows remain
            freed = 0
            drop = []
            for row_id, size in victims:
                if total - freed <= self.max_bytes:
                    break
                drop.append((row_id,))
                freed += size
            self._db.executemany("DELETE FROM messages WHERE id = ?", drop)
            self.dropped += len(drop)
            total -= freed

    def _exists(self, row_id: int) -> bool:
        return self._db.execute("SELECT 1 FROM messages WHERE id = ?", (row_id,)).fetchone() is not None

    def read_after(self, after_id: int, limit: int) -> list[SpooledMessage]:
        """The oldest rows with id > after_id."""
        rows = self._db.execute(
            "SELECT id, topic, payload, qos FROM messages WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()
        return [SpooledMessage(row_id, topic, bytes(payload), qos) for row_id, topic, payload, qos in rows]

    def counter(self, name: str, default: int = 0) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else default

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error:
            pass

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
