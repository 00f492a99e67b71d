"""Objects per label, in the whole frame and per zone, reported only when a number changes.

Subtopics (under `{prefix}/{device}/{pipeline}/`): `count/{label}` and `count/all`, and per zone
`{zone}/count/{label}` and `{zone}/count/all`. Only objects that have had their `new` event count,
until their `end`. Labels named by the configuration (or all of a small model's labels) are
reported from the start, as 0; others from the first time one is seen.
"""

from __future__ import annotations

from typing import Iterable

from edge_agent.config.topics import label_segment
from edge_agent.interpret.zones import Zone


def count_topics(labels: Iterable[str], zones: tuple[Zone, ...]) -> list[str]:
    """The count subtopics that exist from the start: `all` and each label, whole frame and per zone."""
    labels = list(labels)
    topics = ["count/all", *(f"count/{label_segment(label)}" for label in labels)]
    for zone in zones:
        topics.append(f"{zone.name}/count/all")
        topics += [f"{zone.name}/count/{label_segment(label)}" for label in labels if zone.admits(label)]
    return topics


class Counts:
    def __init__(self, labels: Iterable[str], zones: tuple[Zone, ...]):
        self.zones = zones
        self.published: dict[str, int] = {topic: 0 for topic in count_topics(labels, zones)}

    def changes(self, objects: Iterable[tuple[str, tuple[str, ...]]]) -> list[tuple[str, int]]:
        """(subtopic, count) for every count that differs from what was last reported; `objects` are
        (label, zones) of the objects that count now."""
        now = dict.fromkeys(self.published, 0)
        total = 0
        zone_totals = dict.fromkeys((z.name for z in self.zones), 0)
        for label, zones in objects:
            total += 1
            key = f"count/{label_segment(label)}"
            now[key] = now.get(key, 0) + 1
            for zone in zones:
                zone_totals[zone] += 1
                key = f"{zone}/count/{label_segment(label)}"
                now[key] = now.get(key, 0) + 1
        now["count/all"] = total
        for zone, value in zone_totals.items():
            now[f"{zone}/count/all"] = value
        changed = [(topic, value) for topic, value in now.items() if self.published.get(topic) != value]
        self.published.update(changed)
        return changed
