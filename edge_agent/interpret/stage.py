"""The Interpreter: one pipeline's interpret stage, from decoded frames to what is published.

Each call returns an Interpretation: the track_id of each detection, the messages to publish
(subtopics under `{prefix}/{device}/{pipeline}/`), whether this frame's prediction is published,
and, whenever messages were produced, the changes to the state a restart needs (named JSON
entries, to be written with those messages in the same spool transaction, so that after a crash
the next start ends exactly the events that were open: no `end` lost, none repeated, none
without its `new`). The state is one small entry ("": numbering, retained topics) and one per
open event ("open/ID"), so an event costs the entries it changes, not all the open objects.

Retained topics (counts, label) are corrected at start: every count this pipeline reports is
published as 0, the label is cleared, and any retained topic the previous run left that this run
does not report is deleted, so a fresh subscriber never sees "1 person" from before a restart.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from edge_agent.interpret.counts import Counts
from edge_agent.interpret.events import ObjectEvent, ObjectEvents, ended_after_restart
from edge_agent.interpret.filters import DetectionFilter, LabelRule
from edge_agent.interpret.label_state import LabelChange, StableLabel
from edge_agent.interpret.policy import PredictionPolicy
from edge_agent.interpret.tracker import IouTracker, Observation
from edge_agent.interpret.zones import Zone

logger = logging.getLogger(__name__)

TRACKED_TASKS = ("detection", "pose")  # tasks whose results have boxes to track
MAX_AUTO_LABELS = 20  # without `track`, a model with at most this many labels reports each from the start
STATE_VERSION = 1


@dataclass(frozen=True)
class Message:
    subtopic: str
    payload: str
    retain: bool = False


@dataclass(frozen=True)
class Interpretation:
    track_ids: tuple[int | None, ...] = ()  # one per detection given, None where not tracked
    messages: tuple[Message, ...] = ()
    publish_prediction: bool = True
    state: dict[str, str | None] | None = None  # entries to persist with `messages` (None: delete); None: no change
    events: tuple[ObjectEvent | LabelChange, ...] = ()  # what `messages` announce, as data (views read them)


def restore_state(entries: dict[str, str]) -> dict[str, Any]:
    """The state an Interpreter takes (`saved=`) from the persisted entries."""
    try:
        state = json.loads(entries.get("", "{}"))
        open_events = {name[len("open/"):]: json.loads(value) for name, value in entries.items()
                       if name.startswith("open/") and value}
    except ValueError:
        return {}
    return {**state, "open": open_events} if isinstance(state, dict) else {}


def state_entries(state: dict[str, Any]) -> dict[str, str]:
    """The persisted entries of a whole state (what restore_state reads back)."""
    core = {k: v for k, v in state.items() if k != "open"}
    entries = {"": json.dumps(core, separators=(",", ":"))}
    entries.update({f"open/{tid}": json.dumps(v, separators=(",", ":")) for tid, v in state.get("open", {}).items()})
    return entries


def reported_labels(track: Sequence[str], model_labels: Sequence[str] | None) -> tuple[str, ...]:
    """The labels whose counts (and Home Assistant entities) exist from the start: `track`, else
    every label of a model with at most MAX_AUTO_LABELS labels, else none (only `all`)."""
    if track:
        return tuple(track)
    if model_labels and len(model_labels) <= MAX_AUTO_LABELS:
        return tuple(dict.fromkeys(model_labels))
    return ()


def unknown_labels(named: dict[str, str], model_labels: Sequence[str] | None) -> dict[str, str]:
    """The labels named by configuration keys (key path → label) that the model does not have."""
    if not model_labels:
        return {}
    known = set(model_labels)
    return {key: label for key, label in named.items() if label not in known}


class Interpreter:
    """Tracking, events, counts, zones, stable label and publishing policy for one pipeline."""

    def __init__(self, task: str, *, model_labels: Sequence[str] | None = None, enabled: bool = True,
                 min_frames: int = 3, max_disappeared_s: float = 3.0, update_interval_s: float = 30.0,
                 iou_threshold: float = 0.3, track: Sequence[str] = (), rules: dict[str, LabelRule] | None = None,
                 default_threshold: float = 0.5, zones: tuple[Zone, ...] = (), policy: PredictionPolicy | None = None,
                 saved: dict[str, Any] | None = None):
        self.task = task
        self.policy = policy or PredictionPolicy()
        self.tracking = enabled and task in TRACKED_TASKS
        self.labelling = enabled and task == "classification"
        saved = saved if isinstance(saved, dict) and saved.get("v") == STATE_VERSION else {}
        self.seq = int(saved.get("seq", 0))
        self._left_open: dict[str, dict] = dict(saved.get("open", {}))
        self._left_retained: dict[str, str] = dict(saved.get("retained", {}))
        self.retained: dict[str, str] = {}
        self.zones = zones if self.tracking else ()
        self.filter = DetectionFilter(track, rules or {}, default_threshold)
        self.tracker = IouTracker(iou_threshold, max_disappeared_s, next_id=int(saved.get("next_track_id", 1)))
        self.objects = ObjectEvents(min_frames, update_interval_s, lambda label: self.filter.rule(label).threshold, self.zones)
        self.counts = Counts(reported_labels(track, model_labels), self.zones) if self.tracking else None
        self.label = StableLabel(min_frames) if self.labelling else None
        self._changed_open: dict[str, str | None] = {}  # open-event entries changed since the last Interpretation

    # ----------------------------------------------------------------- the calls
    def start(self) -> Interpretation:
        """Before the first frame: end what the previous run left open, correct retained topics."""
        messages = [self._event_message(ended_after_restart(int(track_id), saved))
                    for track_id, saved in sorted(self._left_open.items(), key=lambda item: int(item[0]))]
        self._changed_open.update({f"open/{track_id}": None for track_id in self._left_open})
        fresh: dict[str, str] = {}
        if self.counts is not None:
            fresh.update((topic, "0") for topic in self.counts.published)
        if self.label is not None:
            fresh.update({"label": "", "label/attributes": ""})
        for topic in self._left_retained:
            fresh.setdefault(topic, "")  # a topic this run does not report: deleted
        messages += [self._retained(topic, payload) for topic, payload in fresh.items()]
        self._left_open, self._left_retained = {}, {}
        return Interpretation(messages=tuple(messages), publish_prediction=False, state=self._state_changes())

    def step(self, ts: float, detections: Sequence[Any] = (), classes: Sequence[Any] = (),
             outputs: Sequence[Any] = ()) -> Interpretation:
        """One decoded frame (captured at `ts`, UNIX seconds). `detections` are Detection-like
        (.id, .label, .score, .box), `classes` ClassScore-like, best first."""
        messages: list[Message] = []
        events: list[ObjectEvent | LabelChange] = []
        track_ids: tuple[int | None, ...] = ()
        if self.tracking:
            track_ids = self._track(detections, ts, messages, events)
        elif self.label is not None:
            change = self.label.observe(classes, ts)
            if change is not None:
                messages += self._label_messages(change)
                events.append(change)
        publish = self.policy.wants(ts, self._signature(track_ids, detections, classes, outputs)
                                    if self.policy.needs_signature else None)
        return Interpretation(track_ids, tuple(messages), publish, self._state_changes() if messages else None,
                              tuple(events))

    def tick(self, ts: float) -> Interpretation:
        """No frame arrived: objects unseen for max_disappeared_s still end."""
        if not self.tracking or not self.tracker.tracks:
            return Interpretation(publish_prediction=False)
        messages: list[Message] = []
        ended = [e for e in (self.objects.gone(track) for track in self.tracker.expire(ts)) if e is not None]
        self._add_events(ended, messages)
        return Interpretation(messages=tuple(messages), publish_prediction=False,
                              state=self._state_changes() if messages else None, events=tuple(ended))

    def finish(self) -> Interpretation:
        """The pipeline stops: every object ends ("stopped") and the counts fall to 0."""
        if not self.tracking:
            return Interpretation(publish_prediction=False)
        messages: list[Message] = []
        ended = [e for e in (self.objects.gone(track, "stopped") for track in list(self.tracker.tracks.values()))
                 if e is not None]
        self.tracker.tracks.clear()
        self._add_events(ended, messages)
        return Interpretation(messages=tuple(messages), publish_prediction=False,
                              state=self._state_changes() if messages else None, events=tuple(ended))

    def snapshot(self) -> dict[str, Any]:
        """The whole state (what `saved=` takes): numbering, open events, retained topics."""
        return {"v": STATE_VERSION, "seq": self.seq, "next_track_id": self.tracker.next_id,
                "open": {str(obj.track.track_id): obj.to_state() for obj in self.objects.confirmed()},
                "retained": dict(self.retained)}

    def _state_changes(self) -> dict[str, str | None]:
        core = {"v": STATE_VERSION, "seq": self.seq, "next_track_id": self.tracker.next_id, "retained": self.retained}
        changes = {"": json.dumps(core, separators=(",", ":")), **self._changed_open}
        self._changed_open = {}
        return changes

    # ----------------------------------------------------------------- inside
    def _track(self, detections: Sequence[Any], ts: float, messages: list[Message],
               events: list[ObjectEvent | LabelChange]) -> tuple[int | None, ...]:
        accepts = self.filter.accepts
        chosen = [i for i, d in enumerate(detections) if accepts(d.label, d.box)]
        ids: list[int | None] = [None] * len(detections)
        if chosen:
            observations = [Observation(int(d.id), d.label, float(d.score), tuple(d.box)) for d in (detections[i] for i in chosen)]
            tracks = self.tracker.tracks
            for i, track_id in zip(chosen, self.tracker.update(observations, ts)):
                ids[i] = track_id
                event = self.objects.seen(tracks[track_id], ts)
                if event is not None:
                    events.append(event)
        for track in self.tracker.expire(ts):
            event = self.objects.gone(track)
            if event is not None:
                events.append(event)
        if events:
            self._add_events(events, messages)
        return tuple(ids)

    def _add_events(self, events: list[ObjectEvent], messages: list[Message]) -> None:
        messages += [self._event_message(event) for event in events]
        for event in events:
            obj = self.objects.objects.get(event.track_id) if event.type != "end" else None
            self._changed_open[f"open/{event.track_id}"] = (
                json.dumps(obj.to_state(), separators=(",", ":")) if obj is not None else None)
        if self.counts is not None and events:
            objects = ((obj.track.label, obj.zones) for obj in self.objects.confirmed())
            messages += [self._retained(topic, str(value)) for topic, value in self.counts.changes(objects)]

    def _label_messages(self, change: LabelChange) -> list[Message]:
        self.seq += 1
        attributes = json.dumps({"score": round(change.score, 5), "previous": change.previous,
                                 "since_ts": round(change.ts, 6)}, separators=(",", ":"))
        return [Message("events", json.dumps(change.to_payload(self.seq), separators=(",", ":"))),
                self._retained("label", change.label), self._retained("label/attributes", attributes)]

    def _event_message(self, event: ObjectEvent) -> Message:
        self.seq += 1
        return Message("events", json.dumps(event.to_payload(self.seq), separators=(",", ":")))

    def _retained(self, topic: str, payload: str) -> Message:
        if payload:
            self.retained[topic] = payload
        else:
            self.retained.pop(topic, None)
        return Message(topic, payload, retain=True)

    @staticmethod
    def _signature(track_ids: tuple[int | None, ...], detections: Sequence[Any], classes: Sequence[Any],
                   outputs: Sequence[Any]) -> Any:
        if detections:
            tracked = frozenset(t for t in track_ids if t is not None)
            untracked = tuple(sorted(d.label for d, t in zip(detections, track_ids or (None,) * len(detections)) if t is None))
            return tracked, untracked
        if classes:
            return classes[0].label
        if outputs:
            return json.dumps(list(outputs), sort_keys=True, default=str)
        return None


def interpreter_for(config: Any, task: str, model_labels: Sequence[str] | None, default_threshold: float,
                    saved: dict[str, Any] | None = None) -> Interpreter:
    """The Interpreter a PipelineConfig describes (warns about labels the model does not have)."""
    for key, label in unknown_labels(config.named_labels(), model_labels).items():
        logger.warning("pipeline %s: %s names label %r, which the model does not have; its labels are: %s",
                       config.name, f"pipelines.{config.name}.{key}", label, ", ".join(model_labels or ()))
    events = config.events
    threshold = config.threshold if config.threshold is not None else default_threshold
    # a label's `new` threshold defaults to its per-frame min_score: lowering min_score below the pipeline's
    # threshold must let those objects have events too, not only appear in predictions
    min_scores = dict(config.min_scores)
    rules = {label: LabelRule(score) for label, score in min_scores.items()}
    rules.update({f.name: LabelRule(f.threshold if f.threshold is not None else min_scores.get(f.name, threshold),
                                    f.min_area) for f in config.label_filters})
    publish = config.publish
    return Interpreter(
        task, model_labels=model_labels, enabled=events.enabled, min_frames=events.min_frames,
        max_disappeared_s=events.max_disappeared_s, update_interval_s=events.update_interval_s,
        iou_threshold=events.iou_threshold, track=config.track, rules=rules, default_threshold=threshold,
        zones=tuple(Zone(z.name, z.polygon, z.labels) for z in config.zones),
        policy=PredictionPolicy(publish.predictions, publish.interval_s, publish.heartbeat_s), saved=saved,
    )
