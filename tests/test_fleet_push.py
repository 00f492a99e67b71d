"""A push to a group: 20 real agents against one mosquitto, one of them trusting another key. `edge-agent push
--group` finds the members in their retained state, and the table shows 19 activated and 1 rejected;
a 21st agent in another group is not touched."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from support import DEMO_FLOAT_MODEL, DEMO_MODEL, wait_until
from crafted_models import make_bundle, make_keys
from push_support import agent_config, predictions, push_cli

FLEET_SIZE = 20
INT8_SHA = hashlib.sha256(DEMO_MODEL.read_bytes()).hexdigest()
FLOAT_SHA = hashlib.sha256(DEMO_FLOAT_MODEL.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_push_to_a_group_of_twenty_boards(tmp_path, session_broker, collect, agent_process):
    keys = make_keys(tmp_path, "dev", "other")
    v1 = make_bundle(tmp_path / "v1.eab", DEMO_MODEL, keys["dev"], "1.0")
    v2 = make_bundle(tmp_path / "v2.eab", DEMO_FLOAT_MODEL, keys["dev"], "2.0")
    v1_by_other = make_bundle(tmp_path / "v1-other.eab", DEMO_MODEL, keys["other"], "1.0")
    collector = collect(session_broker, ["edge/+/cam/predictions", "edge/+/state"])
    devices = [f"fleet-{n:02d}" for n in range(FLEET_SIZE)]
    doubter = devices[7]  # trusts only the other key: it must refuse a bundle signed by dev
    for device in devices + ["bystander"]:
        trusted, model = ([tmp_path / "other.pub"], v1_by_other) if device == doubter else ([tmp_path / "dev.pub"], v1)
        group = "lab" if device == "bystander" else "fleet"
        config = agent_config(tmp_path / f"{device}.toml", session_broker, device, model, trusted,
                              top=f'groups = ["{group}", "all"]', max_fps=5)
        agent_process("run", "--config", str(config))
    everyone = devices + ["bystander"]
    assert wait_until(lambda: all(predictions(collector, d) for d in everyone), 60), \
        [d for d in everyone if not predictions(collector, d)]
    assert wait_until(lambda: all(collector.payloads(f"edge/{d}/state") for d in everyone), 10)

    started = time.monotonic()
    result = push_cli(session_broker, v2, "--group", "fleet", "--json", "--key", str(tmp_path / "dev.key"))
    push_s = time.monotonic() - started
    table = json.loads(result.stdout)
    assert result.returncode == 1, "one board did not activate"
    assert [r["device"] for r in table] == devices, "every member, and only members"
    outcomes = {r["device"]: r["result"] for r in table}
    assert sorted(outcomes.values()) == ["activated"] * (FLEET_SIZE - 1) + ["rejected"]
    assert outcomes[doubter] == "rejected"
    assert "not trusted here" in next(r["reason"] for r in table if r["device"] == doubter)
    print(f"push of {v2.stat().st_size} bytes to {FLEET_SIZE} boards: {push_s:.1f} s (command), "
          f"slowest board {max(r['seconds'] for r in table):.1f} s")

    def serving(device: str) -> str:
        return predictions(collector, device)[-1]["model"]["sha256"]

    assert wait_until(lambda: all(serving(d) == FLOAT_SHA for d in devices if d != doubter), 10)
    mark = {d: len(predictions(collector, d)) for d in everyone}
    assert wait_until(lambda: all(len(predictions(collector, d)) >= mark[d] + 3 for d in everyone), 20), \
        "every board keeps publishing"
    assert serving(doubter) == INT8_SHA and serving("bystander") == INT8_SHA
    for device in everyone:
        seqs = [p["seq"] for p in predictions(collector, device)]
        assert seqs == list(range(1, len(seqs) + 1)), f"{device} lost or repeated a prediction"
