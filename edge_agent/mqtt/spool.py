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
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_ROW_OVERHEAD_BYTES = 64  # what SQLite spends per row beyond topic and payload, roughly


@dataclass(frozen=True)
class SpooledMessage:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool = False

    @property
    def size(self) -> int:
        """What the row counts against max_bytes (the `size` column)."""
        return row_size(self.topic, self.payload)


def row_size(topic: str, payload: bytes) -> int:
    return len(payload) + len(topic) + _ROW_OVERHEAD_BYTES


class SpoolError(EdgeAgentError, RuntimeError):
    """The spool could not be written (disk full, read-only, I/O error)."""


class Spool:
    """Owned by one thread: every method must be called from the thread that made it.

    `count` and `bytes` (rows and their sizes in the table) are counted once at open and then
    kept up to date by every write, so no round scans the table: on a full 100 MB spool a
    COUNT/SUM costs tens of milliseconds."""

    def __init__(self, path: Path, max_bytes: int, policy: str = "drop_oldest"):
        self.path = path
        self.max_bytes = max_bytes
        self.policy = policy
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
            columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            if "retain" not in columns:  # a spool written before retained messages went through it
                db.execute("ALTER TABLE messages ADD COLUMN retain INTEGER NOT NULL DEFAULT 0")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def write(self, new: list[tuple], acked: list[tuple[int, int]], counters: dict[str, int],
              sent_up_to: int, states: dict[str, str | None] | None = None) -> tuple[list[SpooledMessage], int]:
        """In one transaction: forget acknowledged (id, size) rows, append `new` (topic, payload, qos,
        retain), update counters and states (what a pipeline's interpret stage needs after a restart;
        None deletes one), keep within max_bytes.

        Returns the rows appended that are still there (with their ids) and how many messages the
        limit dropped (new ones with drop_new, the oldest unsent with drop_oldest). Rows with
        id <= sent_up_to are in flight and never dropped. Raises SpoolError when the disk refuses
        the write, leaving the spool and its counts as they were."""
        before = (self.count, self.bytes, self.dropped)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            if acked:
                self._forget(acked)
            rows = []
            dropped = 0
            for topic, payload, qos, *flags in new:  # (topic, payload, qos) or (..., retain)
                retain = bool(flags and flags[0])
                size = row_size(topic, payload)
                if self.policy == "drop_new" and self.bytes + size > self.max_bytes:
                    dropped += 1
                    continue
                cursor = self._db.execute(
                    "INSERT INTO messages (topic, payload, qos, size, retain) VALUES (?, ?, ?, ?, ?)",
                    (topic, payload, qos, size, int(retain)),
                )
                rows.append(SpooledMessage(cursor.lastrowid, topic, payload, qos, bool(retain)))
                self.count += 1
                self.bytes += size
            if self.policy == "drop_oldest" and self.bytes > self.max_bytes:
                newest_dropped, oldest = self._drop_oldest(sent_up_to)
                dropped += oldest
                rows = [row for row in rows if row.id > newest_dropped]  # the oldest unsent go first
            self.dropped += dropped
            counters = {**counters, "spool/dropped": self.dropped}
            self._db.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                list(counters.items()),
            )
            if states:
                self._db.executemany(
                    "INSERT INTO state (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    [(name, value) for name, value in states.items() if value is not None],
                )
                self._db.executemany("DELETE FROM state WHERE name = ?",
                                     [(name,) for name, value in states.items() if value is None])
            self._db.execute("COMMIT")
            return rows, dropped
        except sqlite3.Error as err:
            self._rollback()
            self.count, self.bytes, self.dropped = before
            raise SpoolError(f"spool {self.path} cannot be written: {err}") from err

    def _forget(self, acked: list[tuple[int, int]]) -> None:
        cursor = self._db.executemany("DELETE FROM messages WHERE id = ?", [(row_id,) for row_id, _ in acked])
        if cursor.rowcount == len(acked):
            self.count -= len(acked)
            self.bytes -= sum(size for _, size in acked)
        else:  # an id that was gone already: count again rather than drift
            self.count, self.bytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()

    def _drop_oldest(self, sent_up_to: int) -> tuple[int, int]:
        """Delete the oldest unsent rows until the spool fits; (the newest id dropped, how many)."""
        newest_dropped, dropped = 0, 0
        while self.bytes > self.max_bytes:
            victims = self._db.execute(
                "SELECT id, size FROM messages WHERE id > ? ORDER BY id LIMIT 256", (max(sent_up_to, newest_dropped),)
            ).fetchall()
            if not victims:
                break  # only in-flight rows remain
            drop = []
            for row_id, size in victims:
                if self.bytes <= self.max_bytes:
                    break
                drop.append((row_id,))
                self.count -= 1
                self.bytes -= size
                newest_dropped = row_id
            self._db.executemany("DELETE FROM messages WHERE id = ?", drop)
            dropped += len(drop)
        return newest_dropped, dropped

    def read_after(self, after_id: int, limit: int) -> list[SpooledMessage]:
        """The oldest rows with id > after_id."""
        rows = self._db.execute(
            "SELECT id, topic, payload, qos, retain FROM messages WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()
        return [SpooledMessage(row_id, topic, bytes(payload), qos, bool(retain)) for row_id, topic, payload, qos, retain in rows]

    def states(self) -> dict[str, str]:
        """Every saved state (name → JSON text)."""
        return dict(self._db.execute("SELECT name, value FROM state").fetchall())

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
