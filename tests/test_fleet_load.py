"""The fleet load harness (tests/fleet_load.py) at a small step, so it cannot rot: real endpoints in a worker
process, a real mosquitto, the real `edge-agent push --group`; every board must activate and store the bundle."""

from __future__ import annotations

import json

import pytest

import fleet_load


@pytest.mark.slow
def test_the_load_harness_pushes_to_5_boards_and_every_one_activates(tmp_path):
    out = tmp_path / "numbers.json"
    assert fleet_load.main(["--boards", "5", "--per-process", "3", "--discover-s", "3", "--json-out", str(out)]) == 0
    (step,) = json.loads(out.read_text())
    assert step["processes"] == 2 and step["connected"] == 5
    assert step["activated"] == 5 and step["installed"] == 5 and step["active_on_disk"] == 5, step
    assert step["failures"] == [] and step["dropped_requests"] == 0, step
    # one broadcast: the broker received the bundle about once, and sent each board its copy
    assert step["broker_received_bytes"] < 1.5 * step["bundle_bytes"], step
    assert step["broker_sent_bytes"] > 5 * step["bundle_bytes"], step
