"""The README is the user's manual: what it quotes from the program must be what the program says."""

from __future__ import annotations

import logging
import re

from support import REPO
from edge_agent.service import source_health
from edge_agent.service.source_health import SourceHealth

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_no_editing_leftovers():
    """HTML comments are only the markers around the generated configuration reference."""
    leftovers = [c for c in re.findall(r"<!--(.*?)-->", README, re.S) if "generated" not in c]
    assert not leftovers, f"comments left over from editing (fold their content into the section): {leftovers}"


def test_the_log_lines_of_a_lost_camera_are_the_ones_the_agent_writes(caplog, monkeypatch):
    monkeypatch.setattr(source_health, "STABLE_S", 0.0)  # "back" is said once frames flowed this long
    health = SourceHealth("front_door", "camera 0", live=True)
    with caplog.at_level(logging.INFO, logger=source_health.__name__):
        health.failed("camera 0 stopped delivering frames")  # OpenCVSource's SourceError text
        health.opened()
        health.frame_arrived()
        health.frame_arrived()
    lost, back = [record.getMessage() for record in caplog.records]
    assert f"`{lost}`" in README, lost
    assert f"`{back}`" in README, back


def _headings(level: int) -> list[str]:
    headings, in_code = [], False
    for line in README.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#" * level + " "):
            headings.append(line[level + 1:])
    return headings


def test_sections_come_in_the_order_a_user_reads_them():
    """Quick start first, development last; other sections may sit between these."""
    wanted = ["Quick start", "Install on a board", "Configuration reference", "MQTT topics and payloads",
              "Models and tasks", "Workstation tools: convert, validate, sign", "Model delivery: `edge-agent push`",
              "Operations and troubleshooting", "Benchmarks", "Development"]
    present = [heading for heading in _headings(2) if heading in wanted]
    assert present == wanted, present
    assert _headings(2).count("Configuration reference") == 1, "one contiguous configuration reference"


def test_internal_links_point_at_headings():
    def anchor(heading: str) -> str:  # GitHub's rule: lower case, punctuation dropped, spaces to dashes
        return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")

    anchors = {anchor(h) for level in (1, 2, 3, 4) for h in _headings(level)}
    links = set(re.findall(r"\]\(#([^)]+)\)", README))
    assert links and links <= anchors, links - anchors
