"""The interpret stage fed lists of decoded frames (no broker, no camera): tracking, events,
counts, zones, the stable label, the publishing policy, and what a restart does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_agent.interpret import Interpreter
from edge_agent.interpret.filters import LabelRule
from edge_agent.interpret.policy import PredictionPolicy
from edge_agent.interpret.stage import restore_state, state_entries
from edge_agent.interpret.tracker import IouTracker, Observation, iou_matrix
from edge_agent.interpret.zones import Zone, bottom_centre
from edge_agent.records import ClassScore, Detection

FPS = 10.0
LEFT_HALF = Zone("left", ((0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)))


def person(x: float, score: float = 0.9, y: float = 0.3, size: float = 0.2, class_id: int = 0, label: str = "person"):
    """A box whose left edge is at x; its bottom centre is at (x + size / 2, y + size)."""
    return Detection(class_id, label, score, (y, x, y + size, x + size))


def run(interp: Interpreter, frames, start_ts: float = 1000.0):
    """Feed frames (lists of detections), one every 1 / FPS s; every message as (subtopic, payload, retain)."""
    messages, ids = [], []
    for i, detections in enumerate(frames):
        result = interp.step(start_ts + i / FPS, detections=detections)
        messages += [(m.subtopic, m.payload, m.retain) for m in result.messages]
        ids.append(result.track_ids)
    return messages, ids


def events(messages):
    return [json.loads(p) for topic, p, _ in messages if topic == "events"]


def counts(messages):
    return [(topic, int(p)) for topic, p, retain in messages if "count/" in topic]


def interp(**options) -> Interpreter:
    base = dict(model_labels=["person", "car", "dog"], min_frames=3, max_disappeared_s=0.5, update_interval_s=0.0,
                track=("person", "car"), zones=(LEFT_HALF,))
    return Interpreter("detection", **{**base, **options})


def test_an_object_that_appears_crosses_a_zone_and_leaves():
    # x from 0.10 to 0.60 in 0.05 steps (bottom centre from 0.20 to 0.70): in the left half, then not
    frames = [[person(0.10 + 0.05 * i)] for i in range(11)] + [[]] * 8
    messages, ids = run(interp(), frames)
    kinds = [(e["type"], e["zones"]) for e in events(messages)]
    assert kinds == [("new", ["left"]), ("update", []), ("end", [])]
    new, update, end = events(messages)
    assert {new["track_id"], update["track_id"], end["track_id"]} == {1}
    assert new["label"] == "person" and new["id"] == 0 and new["ts"] == pytest.approx(1000.2)  # third frame
    assert update["ts"] == pytest.approx(1000.7)  # x = 0.40: bottom centre 0.50 is on the edge (inside); 0.55 is out
    assert end["end_ts"] == pytest.approx(1001.0) and end["reason"] == "left"  # the last frame it was seen in
    assert end["duration_s"] == pytest.approx(1.0) and end["start_ts"] == pytest.approx(1000.0)
    assert [e["seq"] for e in events(messages)] == [1, 2, 3]
    # counts change only with the events: 1 person (and 1 in the zone), out of the zone, then none
    assert counts(messages) == [("count/all", 1), ("count/person", 1), ("left/count/all", 1), ("left/count/person", 1),
                                ("left/count/all", 0), ("left/count/person", 0), ("count/all", 0), ("count/person", 0)]
    assert all(retain for topic, _, retain in messages if "count/" in topic)
    assert not any(retain for topic, _, retain in messages if topic == "events")
    assert all(t == (1,) for t in ids[:11]) and ids[11] == ()


def test_a_flicker_shorter_than_min_frames_makes_no_event():
    messages, ids = run(interp(), [[person(0.2)], [person(0.2)], [], [], [], [], [], [], []])
    assert messages == [] and ids[0] == (1,)  # tracked (it has a track_id) but never announced


def test_the_median_score_must_reach_the_labels_threshold():
    rules = {"person": LabelRule(threshold=0.7)}
    scores = [0.55, 0.6, 0.9, 0.9, 0.9]  # medians of the last 3: 0.6, 0.9 -> new on the fourth frame
    messages, _ = run(interp(rules=rules), [[person(0.2, s)] for s in scores])
    new = events(messages)
    assert [e["type"] for e in new] == ["new"] and new[0]["ts"] == pytest.approx(1000.3)
    low, _ = run(interp(rules=rules), [[person(0.2, s)] for s in [0.55, 0.6, 0.65, 0.6, 0.62]])
    assert low == []


def test_two_objects_keep_their_own_ids_and_count_together():
    frames = [[person(0.1), person(0.6, class_id=1, label="car")] for _ in range(4)] + [[person(0.1)]] * 3 + [[]] * 7
    messages, ids = run(interp(), frames)
    assert ids[0] == (1, 2) and ids[3] == (1, 2) and ids[4] == (1,)
    assert [(e["type"], e["label"]) for e in events(messages)] == [("new", "person"), ("new", "car"), ("end", "car"),
                                                                   ("end", "person")]
    whole = [(t, v) for t, v in counts(messages) if t.startswith("count/")]
    assert whole == [("count/all", 2), ("count/person", 1), ("count/car", 1),  # both new in the same frame
                     ("count/all", 1), ("count/car", 0), ("count/all", 0), ("count/person", 0)]


def test_zones_use_the_bottom_centre_and_their_labels():
    door = Zone("door", ((0.0, 0.8), (1.0, 0.8), (1.0, 1.0), (0.0, 1.0)), labels=("person",))
    assert bottom_centre((0.1, 0.2, 0.9, 0.4)) == (pytest.approx(0.3), 0.9)
    # a tall box that covers the zone but stands above it is not in it; one whose feet are in it is
    assert not door.holds("person", (0.1, 0.2, 0.7, 0.4)) and door.holds("person", (0.5, 0.2, 0.85, 0.4))
    assert not door.holds("car", (0.5, 0.2, 0.85, 0.4))  # the zone counts persons only
    concave = Zone("l", ((0, 0), (1, 0), (1, 0.2), (0.2, 0.2), (0.2, 1), (0, 1)))
    assert concave.contains(0.5, 0.1) and concave.contains(0.1, 0.5) and not concave.contains(0.5, 0.5)
    assert concave.contains(1.0, 0.0) and concave.contains(0.2, 0.6)  # corners and edges are inside


def test_track_and_min_area_choose_what_is_tracked():
    tiny = Detection(0, "person", 0.9, (0.5, 0.5, 0.52, 0.52))  # 0.0004 of the frame
    dog = person(0.5, class_id=2, label="dog")
    messages, ids = run(interp(rules={"person": LabelRule(0.5, min_area=0.01)}), [[tiny, dog, person(0.1)]] * 4)
    assert ids[0] == (None, None, 1)  # too small, not in `track`, tracked
    assert [e["label"] for e in events(messages)] == ["person"]


def test_update_on_interval_and_on_a_better_score():
    steady, _ = run(interp(update_interval_s=0.5), [[person(0.1)]] * 13)
    assert [(e["type"], round(e["ts"] - 1000, 1)) for e in events(steady)] == [("new", 0.2), ("update", 0.7), ("update", 1.2)]
    better, _ = run(interp(), [[person(0.1, s)] for s in (0.6, 0.6, 0.6, 0.62, 0.66, 0.7)])
    assert [(e["type"], e["top_score"]) for e in events(better)] == [("new", 0.6), ("update", 0.66)]


def test_objects_end_without_frames_and_when_the_pipeline_stops():
    it = interp()
    run(it, [[person(0.1)]] * 3)
    assert it.tick(1000.5).messages == ()  # 0.3 s unseen: not yet
    ended = [json.loads(m.payload) for m in it.tick(1001.0).messages if m.subtopic == "events"]
    assert [(e["type"], e["reason"]) for e in ended] == [("end", "left")]
    it = interp()
    run(it, [[person(0.1)]] * 3)
    result = it.finish()
    assert [(m.subtopic, m.payload) for m in result.messages if m.subtopic != "events"] == [
        ("count/all", "0"), ("count/person", "0"), ("left/count/all", "0"), ("left/count/person", "0")]
    assert json.loads(result.messages[0].payload)["reason"] == "stopped"
    assert result.state == {"": result.state[""], "open/1": None}


def persist(entries: dict, changes: dict | None) -> dict:
    """What the spool does with an Interpretation's state changes (None deletes an entry)."""
    entries = dict(entries)
    for name, value in (changes or {}).items():
        if value is None:
            entries.pop(name, None)
        else:
            entries[name] = value
    return entries


def test_a_restart_ends_what_was_open_once_and_corrects_retained_counts():
    before = interp()
    disk: dict = {}
    for i in range(4):
        disk = persist(disk, before.step(1000.0 + i / FPS, detections=[person(0.1)]).state)
    saved = restore_state(disk)  # what the spool holds after the `new` (the agent then dies)
    assert list(saved["open"]) == ["1"] and saved["retained"]["count/person"] == "1"
    saved["retained"]["count/cat"] = "2"  # a topic an older configuration reported
    after = interp(saved=saved)
    start = after.start()
    ends = [json.loads(m.payload) for m in start.messages if m.subtopic == "events"]
    assert [(e["type"], e["track_id"], e["reason"], e["seq"]) for e in ends] == [("end", 1, "restarted", 2)]
    assert ends[0]["end_ts"] == pytest.approx(1000.2)  # the last time the previous run recorded it (its `new`)
    retained = {m.subtopic: m.payload for m in start.messages if m.retain}
    assert retained["count/person"] == "0" and retained["count/all"] == "0" and retained["count/cat"] == ""  # "" deletes
    assert all(m.retain for m in start.messages if m.subtopic != "events")
    disk = persist(state_entries(saved), start.state)
    state = restore_state(disk)
    assert state["open"] == {} and state["seq"] == 2 and "count/cat" not in state["retained"]
    again = interp(saved=state).start()  # a second restart: nothing left to end, no repeated `end`
    assert not [m for m in again.messages if m.subtopic == "events"]
    fresh, ids = run(interp(saved=state), [[person(0.1)]] * 3)
    assert ids[0] == (2,) and events(fresh)[0]["seq"] == 3  # ids and numbering go on


def test_an_event_saves_only_what_it_changes():
    it = interp()
    results = [it.step(1000.0 + i / FPS, detections=[person(0.1), person(0.6, class_id=1, label="car")]) for i in range(3)]
    assert set(results[2].state) == {"", "open/1", "open/2"}  # two `new`s: their entries and the numbering
    later = [it.step(1001.0 + i / FPS, detections=[person(0.1)]) for i in range(8)]
    ended = [r.state for r in later if r.state]
    assert ended == [{"": ended[0][""], "open/2": None}]  # the car's end deletes its entry alone


def test_classification_changes_only_when_a_new_label_has_held():
    it = Interpreter("classification", min_frames=3)
    tops = ["3", "3", "3", "7", "3", "7", "7", "7", "7"]
    changes, labels = [], []
    for i, top in enumerate(tops):
        result = it.step(2000.0 + i, classes=(ClassScore(int(top), top, 0.8 + 0.01 * i),))
        changes += [json.loads(m.payload) for m in result.messages if m.subtopic == "events"]
        labels += [(m.subtopic, m.payload) for m in result.messages if m.subtopic.startswith("label")]
    assert [(c["label"], c["previous"]) for c in changes] == [("3", None), ("7", "3")]
    assert changes[1]["ts"] == 2007.0 and changes[1]["score"] == pytest.approx(0.86)  # median of the run of 7s
    assert [l for l in labels if l[0] == "label"] == [("label", "3"), ("label", "7")]
    assert json.loads(labels[-1][1]) == {"score": 0.86, "previous": "3", "since_ts": 2007.0}
    start = Interpreter("classification", saved=it.snapshot()).start()
    assert {(m.subtopic, m.payload) for m in start.messages} == {("label", ""), ("label/attributes", "")}


@pytest.mark.parametrize("mode, expected", [
    ("every_frame", [True] * 8),
    ("off", [False] * 8),
    ("interval", [True, False, False, True, False, False, True, False]),  # interval_s 0.3 at 10 fps
    ("on_change", [True, False, False, True, False, True, False, False]),
])
def test_the_publishing_policy(mode, expected):
    it = interp(policy=PredictionPolicy(mode, interval_s=0.3, heartbeat_s=0.0))
    frames = [[person(0.1)]] * 3 + [[person(0.1), person(0.6)]] * 2 + [[]] * 3
    published = [it.step(1000 + i / FPS, detections=f).publish_prediction for i, f in enumerate(frames)]
    assert published == expected


def test_on_change_sends_a_heartbeat():
    policy = PredictionPolicy("on_change", heartbeat_s=1.0)
    assert [policy.wants(t, "same") for t in (0.0, 0.5, 0.99, 1.0, 1.5, 2.0)] == [True, False, False, True, False, True]


def test_the_trackers_stated_limit_a_jump_without_overlap_is_a_new_object():
    tracker = IouTracker(iou_threshold=0.3, max_disappeared_s=1.0)
    a = tracker.update([Observation(0, "person", 0.9, (0.1, 0.1, 0.3, 0.3))], 0.0)
    b = tracker.update([Observation(0, "person", 0.9, (0.1, 0.12, 0.3, 0.32))], 0.1)  # IoU 0.82: the same
    c = tracker.update([Observation(0, "person", 0.9, (0.1, 0.35, 0.3, 0.55))], 0.2)  # no overlap: a new id
    assert a == b == [1] and c == [2]


def test_iou_matrix_and_class_separation():
    a = np.array([[0, 0, 1, 1], [0, 0, 0.5, 0.5]], float)
    b = np.array([[0, 0, 1, 1], [0.5, 0.5, 1, 1], [2, 2, 3, 3]], float)
    assert np.allclose(iou_matrix(a, b), [[1, 0.25, 0], [0.25, 0, 0]])
    tracker = IouTracker()
    same_place = (0.1, 0.1, 0.5, 0.5)
    assert tracker.update([Observation(0, "person", 0.9, same_place), Observation(1, "car", 0.9, same_place)], 0) == [1, 2]
    assert tracker.update([Observation(1, "car", 0.9, same_place), Observation(0, "person", 0.9, same_place)], 0.1) == [2, 1]
