"""`edge-agent models rollback` and `models list --device`: one signed request per board over MQTT, and its answer."""

from __future__ import annotations

import json
import queue
import time

from edge_agent.delivery.keys import PrivateKey
from edge_agent.delivery.signed_request import sign_request
from edge_agent.delivery.update_protocol import models_base, new_id
from edge_agent.host.broker import BrokerAddress, broker_listener
from edge_agent.host.push import REFUSAL_GRACE_S, SUBSCRIBE_TIMEOUT_S
from edge_agent.host.push_results import NO_ANSWER, REJECTED, ROLLED_BACK, PushResult

TICK_S = 0.02
LISTED = "listed"


def request_rollback(devices: list[str], broker: BrokerAddress, prefix: str = "edge", pipeline: str = "",
                     timeout_s: float = 60.0, key: PrivateKey | None = None) -> list[PushResult]:
    """Send one rollback request to each device; a result per device (rolled back, rejected, no answer)."""
    answers = ask_boards(devices, broker, prefix, "rollback", {"pipeline": pipeline}, timeout_s, key)
    return [_result(device, answer, ROLLED_BACK if answer and answer[0].get("event") == "rolled_back" else REJECTED,
                    timeout_s) for device, answer in answers.items()]


def request_listing(devices: list[str], broker: BrokerAddress, prefix: str = "edge", timeout_s: float = 30.0,
                    key: PrivateKey | None = None) -> dict[str, PushResult | dict]:
    """Ask each device what its model store holds: the `models` of its answer, or a PushResult saying why not."""
    answers = ask_boards(devices, broker, prefix, "list", {}, timeout_s, key)
    listing: dict[str, PushResult | dict] = {}
    for device, answer in answers.items():
        if answer and answer[0].get("event") == LISTED and isinstance(answer[0].get("models"), dict):
            listing[device] = answer[0]["models"]
        else:
            listing[device] = _result(device, answer, REJECTED, timeout_s)
    return listing


def _result(device: str, answer: tuple[dict, float] | None, kind: str, timeout_s: float) -> PushResult:
    if answer is None:
        return PushResult(device, NO_ANSWER, f"no answer within {timeout_s:g} s", seconds=timeout_s)
    event, seconds = answer
    return PushResult(device, kind, str(event.get("reason") or ""), event.get("previous"), event.get("new"), seconds)


def ask_boards(devices: list[str], broker: BrokerAddress, prefix: str, action: str, params: dict, timeout_s: float,
               key: PrivateKey | None) -> dict[str, tuple[dict, float] | None]:
    """Publish one request (`action`, signed per device when `key` is given) to every device; each
    device's first answer carrying the request id (or naming it as claimed, when the board could not
    authenticate the request), with the seconds it took; None for no answer."""
    request_id = new_id(action)
    answers: queue.Queue[tuple[str, dict]] = queue.Queue()

    def on_message(topic: str, payload: bytes) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if isinstance(event, dict) and request_id in (event.get("request_id"), event.get("claimed_id")):
            answers.put((topic.split("/")[-3], event))

    listener = broker_listener(broker, [f"{models_base(prefix, d)}/events" for d in devices], on_message,
                               f"edge-{request_id}")
    listener.start(SUBSCRIBE_TIMEOUT_S)
    results: dict[str, tuple[dict, float]] = {}
    hints: dict[str, tuple[dict, float]] = {}
    started = time.monotonic()
    try:
        for device in devices:
            body = {"request_id": request_id, **params}
            message = sign_request(key, action, device, request_id, body) if key is not None else body
            listener.publish(f"{models_base(prefix, device)}/{action}", json.dumps(message, separators=(",", ":")), qos=1)
        while len(results) < len(devices) and time.monotonic() - started < timeout_s:
            now = time.monotonic() - started
            if all(d in results or (d in hints and now - hints[d][1] > REFUSAL_GRACE_S) for d in devices):
                break
            try:
                device, event = answers.get(timeout=TICK_S)
            except queue.Empty:
                continue
            if device in results or device not in devices:
                continue
            if event.get("request_id") == request_id:
                results[device] = (event, time.monotonic() - started)
            else:
                hints.setdefault(device, (event, time.monotonic() - started))
    finally:
        listener.stop()
    # a refusal that named our id only as claimed is the answer when no real one came
    return {device: results.get(device) or hints.get(device) for device in devices}
