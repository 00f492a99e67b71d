"""The README is the user's manual: what it quotes from the program must be what the program says."""

from __future__ import annotations

import logging

from support import REPO
from edge_agent.service import source_health
from edge_agent.service.source_health import SourceHealth

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_no_editing_leftovers():
    assert "<!--" not in README, "an HTML comment left over from editing: fold its content into its section"


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
