"""`edge-agent models rollback`: ask boards over MQTT to go back to their previous model."""

from __future__ import annotations

import json
import queue
import time

from edge_agent.host.fleet import BrokerAddress
from edge_agent.host.push import NO_ANSWER, REJECTED, ROLLED_BACK, SUBSCRIBE_TIMEOUT_S, PushResult
from edge_agent.delivery.update_protocol import models_base, new_id
from edge_agent.mqtt.listener import MqttListener

TICK_S = 0.02


def request_rollback(devices: list[str], broker: BrokerAddress, prefix: str = "edge", pipeline: str = "",
                     timeout_s: float = 60.0) -> list[PushResult]:
    """Send one rollback request to each device; a result per device (rolled back, rejected, no answer)."""
    request_id = new_id("rollback")
    answers: queue.Queue[tuple[str, dict]] = queue.Queue()

    def on_message(topic: str, payload: bytes) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if isinstance(event, dict) and event.get("request_id") == request_id:
            answers.put((topic.split("/")[-3], event))

    listener = MqttListener(broker.host, broker.port, [f"{models_base(prefix, d)}/events" for d in devices], on_message,
                            client_id=f"edge-{request_id}", username=broker.username, password=broker.password)
    listener.start(SUBSCRIBE_TIMEOUT_S)
    results: dict[str, PushResult] = {}
    started = time.monotonic()
    try:
        request = json.dumps({"request_id": request_id, "pipeline": pipeline})
        for device in devices:
            listener.publish(f"{models_base(prefix, device)}/rollback", request, qos=1)
        while len(results) < len(devices) and time.monotonic() - started < timeout_s:
            try:
                device, event = answers.get(timeout=TICK_S)
            except queue.Empty:
                continue
            if device in results or device not in devices:
                continue
            kind = ROLLED_BACK if event.get("event") == "rolled_back" else REJECTED
            results[device] = PushResult(device, kind, str(event.get("reason") or ""), event.get("previous"),
                                         event.get("new"), time.monotonic() - started)
    finally:
        listener.stop()
    return [results.get(device) or PushResult(device, NO_ANSWER, f"no answer within {timeout_s:g} s",
                                              seconds=time.monotonic() - started) for device in devices]
