"""The spool carries the interpret stage's messages: the retain flag, and the state written in the
same transaction, kept across a reopen; a spool written before these existed is migrated in place."""

from __future__ import annotations

import sqlite3

from edge_agent.mqtt.spool import Spool


def test_retained_messages_and_states_survive_a_reopen(tmp_path):
    path = tmp_path / "spool.db"
    spool = Spool(path, 1_000_000)
    rows, _ = spool.write([("edge/a/door/count/person", b"1", 1, True), ("edge/a/door/events", b"{}", 1, False)], [], {},
                       0, {"interpret/door": '{"open": {"1": {}}}'})
    assert [r.retain for r in rows] == [True, False]
    spool.close()
    again = Spool(path, 1_000_000)
    assert [(r.topic, r.retain) for r in again.read_after(0, 10)] == [("edge/a/door/count/person", True),
                                                                     ("edge/a/door/events", False)]
    assert again.states() == {"interpret/door": '{"open": {"1": {}}}'}
    again.close()


def test_a_spool_from_before_retained_messages_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "spool.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
                               qos INTEGER NOT NULL, size INTEGER NOT NULL);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO messages (topic, payload, qos, size) VALUES ('edge/a/door/predictions', x'7b7d', 1, 90);
        INSERT INTO counters VALUES ('seq/door', 41);
    """)
    db.commit()
    db.close()
    spool = Spool(path, 1_000_000)
    assert [(r.topic, r.payload, r.retain) for r in spool.read_after(0, 10)] == [("edge/a/door/predictions", b"{}", False)]
    assert spool.counter("seq/door") == 41 and spool.states() == {}
    spool.write([("edge/a/door/label", b"7", 1, True)], [], {}, 0)
    assert spool.read_after(1, 10)[0].retain
    spool.close()
