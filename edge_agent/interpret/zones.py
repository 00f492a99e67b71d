"""Zones: polygons in normalised frame coordinates (x from the left, y from the top, 0 to 1).

An object is in a zone when the bottom centre of its box is inside the polygon (Frigate's
convention: where a person or car stands, not where its head is). Points on an edge count as inside.
"""

from __future__ import annotations

from dataclasses import dataclass

Box = tuple[float, float, float, float]  # ymin, xmin, ymax, xmax
EDGE_EPS = 1e-9  # a point this close to an edge is on it


def bottom_centre(box: Box) -> tuple[float, float]:
    """(x, y) of the middle of the box's lower edge."""
    ymin, xmin, ymax, xmax = box
    return (xmin + xmax) / 2.0, ymax


@dataclass(frozen=True)
class Zone:
    name: str
    polygon: tuple[tuple[float, float], ...]
    labels: tuple[str, ...] = ()  # empty: every tracked label

    def admits(self, label: str) -> bool:
        return not self.labels or label in self.labels

    def __post_init__(self) -> None:
        xs, ys = [p[0] for p in self.polygon], [p[1] for p in self.polygon]
        object.__setattr__(self, "_bounds", (min(xs) - EDGE_EPS, min(ys) - EDGE_EPS, max(xs) + EDGE_EPS, max(ys) + EDGE_EPS))

    def contains(self, x: float, y: float) -> bool:
        """Even-odd rule, with points on an edge inside."""
        xmin, ymin, xmax, ymax = self._bounds
        if not (xmin <= x <= xmax and ymin <= y <= ymax):
            return False
        inside = False
        points = self.polygon
        for i, (x1, y1) in enumerate(points):
            x2, y2 = points[i - 1]
            if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
                inside = not inside
        if inside:
            return True
        return any(_on_segment(x, y, x1, y1, *points[i - 1]) for i, (x1, y1) in enumerate(points))

    def holds(self, label: str, box: Box) -> bool:
        return self.admits(label) and self.contains(*bottom_centre(box))


def _on_segment(x: float, y: float, x1: float, y1: float, x2: float, y2: float, eps: float = EDGE_EPS) -> bool:
    cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
    if abs(cross) > eps:
        return False
    return min(x1, x2) - eps <= x <= max(x1, x2) + eps and min(y1, y2) - eps <= y <= max(y1, y2) + eps


def zones_holding(zones: tuple[Zone, ...], label: str, box: Box) -> tuple[str, ...]:
    """The names of the zones an object of `label` with `box` is in, in configuration order."""
    if not zones:
        return ()
    x, y = bottom_centre(box)
    return tuple(zone.name for zone in zones if zone.admits(label) and zone.contains(x, y))
