"""Which boards belong to a group: read the retained state and status messages every agent publishes.

Each agent announces `"groups": [...]` in its retained `{prefix}/{device}/state` and its
availability in the retained `{prefix}/{device}/status` ("online" / "offline"). A broker sends
retained messages right after the subscription, so once no new device has shown up for a short
while, all have arrived (live state updates of devices already seen do not extend the wait).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

from edge_agent.host.broker import BrokerAddress, broker_listener

logger = logging.getLogger(__name__)

__all__ = ["BrokerAddress", "Fleet", "read_fleet"]

QUIET_S = 0.5  # no new device for this long: the broker has sent every retained message
MAX_WAIT_S = 5.0


@dataclass
class Fleet:
    """What the retained messages say: each device's groups, and which devices are offline."""

    groups: dict[str, list[str]] = field(default_factory=dict)
    offline: set[str] = field(default_factory=set)

    def members(self, group: str) -> list[str]:
        return sorted(device for device, groups in self.groups.items() if group in groups)


def read_fleet(broker: BrokerAddress, prefix: str) -> Fleet:
    """Collect the retained state and status of every device under `prefix`."""
    fleet = Fleet()
    lock = threading.Lock()
    last_new_device = [time.monotonic()]

    def on_message(topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        device, kind = parts[-2], parts[-1]
        with lock:
            if device not in fleet.groups and device not in fleet.offline:
                last_new_device[0] = time.monotonic()
            if kind == "status":
                if payload == b"offline":
                    fleet.offline.add(device)
                else:
                    fleet.offline.discard(device)
                return
            try:
                groups = json.loads(payload).get("groups", [])
            except (ValueError, AttributeError):
                logger.warning("device %s: its retained state is not JSON; ignored", device)
                return
            fleet.groups[device] = [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []

    base = prefix.rstrip("/")
    listener = broker_listener(broker, [f"{base}/+/state", f"{base}/+/status"], on_message,
                               client_id=f"edge-push-discover-{time.monotonic_ns()}")
    listener.start()
    try:
        started = time.monotonic()
        last_new_device[0] = started
        while time.monotonic() - started < MAX_WAIT_S:
            with lock:
                if time.monotonic() - last_new_device[0] >= QUIET_S:
                    break
            time.sleep(0.05)
    finally:
        listener.stop()
    return fleet
