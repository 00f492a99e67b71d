"""The MQTT package against a real mosquitto: where paho may be imported, and the publisher's callbacks."""

from __future__ import annotations

import re

from support import REPO

PAHO_IMPORT = re.compile(r"^\s*(import paho|from paho)", re.MULTILINE)


def test_paho_is_imported_in_one_module_only():
    importers = sorted(str(path.relative_to(REPO)) for path in (REPO / "edge_agent").rglob("*.py")
                       if PAHO_IMPORT.search(path.read_text(encoding="utf-8")))
    assert importers == ["edge_agent/mqtt/client.py"]
