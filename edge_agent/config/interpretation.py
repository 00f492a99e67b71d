"""What the interpret stage (edge_agent/interpret) does with a pipeline's decoded frames: tracks,
events, counts, zones, the stable label (`[pipelines.NAME.events]`, `[pipelines.NAME.zones.ZONE]`),
and how often predictions are published (`[pipelines.NAME.publish]`).
"""

from dataclasses import dataclass
from typing import Any

from edge_agent.config.setting import REQUIRED, Setting, derived, setting
from edge_agent.config.topics import TOPIC_UNSAFE, topic_safe

PREDICTION_POLICIES = ("every_frame", "on_change", "interval", "off")


def _polygon_problem(points: Any) -> str | None:
    if not isinstance(points, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
            for p in points):
        return f"expected a list of [x, y] points, got {points!r}"
    if len(points) < 3:
        return f"a polygon needs at least 3 points, got {len(points)}"
    outside = [p for p in points if not all(0.0 <= v <= 1.0 for v in p)]
    if outside:
        return (f"coordinates are fractions of the frame (0 to 1, x from the left, y from the top); "
                f"{outside[0]!r} is outside")
    return None


class PolygonKey:
    """`polygon = [[x, y], ...]`: at least 3 points in normalised frame coordinates."""

    type_text = "list of [x, y]"
    allowed_text = "3 or more points, each coordinate 0 to 1"
    tables: dict[str, type] = {}
    siblings: dict[str, tuple[type, Setting]] = {}

    def read(self, table: Any, name: str) -> tuple[tuple[float, float], ...]:
        table.consume(name)
        if name not in table.data:
            table.error(name, "required: a list of [x, y] points (fractions of the frame)")
            return ()
        problem = _polygon_problem(table.data[name])
        if problem:
            table.error(name, problem)
            return ()
        return tuple((float(x), float(y)) for x, y in table.data[name])


@dataclass(frozen=True)
class ZoneConfig:
    """An area of the frame; an object is in it when the bottom centre of its box is inside."""

    name: str = derived("the table's name; part of the zone's topics", lambda table, values: table.name,
                        check=lambda name: None if topic_safe(name) else f"the zone name {TOPIC_UNSAFE}")
    polygon: tuple[tuple[float, float], ...] = setting(REQUIRED, "the zone's corners, [x, y] fractions of the frame "
                                                                 "(x from the left, y from the top)", custom=PolygonKey())
    labels: tuple[str, ...] = setting((), "labels counted in this zone; empty: every tracked label", unique=True)


@dataclass(frozen=True)
class EventsConfig:
    """Tracking, events, counts and the stable label (see the README's "Events, counts and zones")."""

    enabled: bool = setting(True, "false: predictions only (no tracking, events, counts or label topics)")
    min_frames: int = setting(3, "frames an object (or a new top label) must be seen before it counts",
                              minimum=1, cap=10_000)
    max_disappeared_s: float = setting(3.0, "an object unseen this long has left (its `end` event)",
                                       minimum=0.01, cap=86_400.0)
    update_interval_s: float = setting(30.0, "an `update` event at least this often while an object stays; 0 = only on "
                                             "zone and score changes", minimum=0.0, cap=86_400.0)
    iou_threshold: float = setting(0.3, "tracker: a box overlapping an object's last box less than this is another "
                                        "object", minimum=0.01, maximum=1.0)


@dataclass(frozen=True)
class PublishConfig:
    """How often a pipeline publishes predictions; events, counts and labels go out whatever this says."""

    predictions: str = setting("every_frame", "every_frame; on_change: when the objects or top label change; "
                                              "interval: the newest every interval_s; off", choices=PREDICTION_POLICIES)
    interval_s: float = setting(1.0, "with predictions = \"interval\"", minimum=0.001, cap=86_400.0)
    heartbeat_s: float = setting(60.0, "with on_change: a prediction at least this often; 0 = never",
                                 minimum=0.0, cap=86_400.0)
