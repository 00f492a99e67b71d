"""What a layout match is: the layout chosen for a model and why, and a family's reason for not fitting.

Shared by the matchers in layouts.py and yolo_layouts.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_agent.errors import EdgeAgentError


@dataclass(frozen=True)
class LayoutMatch:
    """The layout chosen for a model, why, and what its decoder needs to know."""

    layout: str
    task: str
    why: str
    params: dict[str, Any] = field(default_factory=dict)


class NoMatch(EdgeAgentError):
    """A family's reason for not fitting (collected for the explanation; never leaves decode's layout matching)."""
