"""What the model-push tests share: agent configs, a push through the real Pusher, and waits on what
the broker carries (predictions, events)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import json

from support import DEMO_VIDEO, REPO, Broker, Collector, wait_until
from edge_agent.delivery.keys import PrivateKey
from edge_agent.delivery.signed_request import sign_request
from edge_agent.delivery.update_protocol import PushBegin, describe_bundle, push_topic
from edge_agent.host.fleet import BrokerAddress
from edge_agent.host.push import Pusher, PushOptions
from edge_agent.host.push_results import PushResult

FRAME_INTERVAL_S = 0.05  # max_fps = 20 in the agents below


def agent_config(path: Path, broker: Broker, device: str, model: Path, trusted: list[Path] = (), top: str = "",
                 models: str = "", runtime: str = "auto", max_fps: float = 1 / FRAME_INTERVAL_S, spool: bool = True,
                 state_interval_s: float = 0.5, mqtt: str = "") -> Path:
    keys = ", ".join(f'"{key}"' for key in trusted)
    path.write_text(f"""
device_id = "{device}"
state_dir = "{path.parent / (device + '-state')}"
{f'trusted_keys = [{keys}]' if trusted else ''}
{top}
[mqtt]
host = "{broker.host}"
port = {broker.port}
state_interval_s = {state_interval_s}
{mqtt}
[spool]
enabled = {str(spool).lower()}
[models]
{models}
[pipelines.cam]
model = "{model}"
source = {{ uri = "{DEMO_VIDEO}", loop = true }}
runtime = "{runtime}"
max_fps = {max_fps}
num_threads = 1
""")
    return path


def push(broker: Broker, bundle: Path | bytes, devices: list[str], key: PrivateKey | None = None,
         **options) -> list[PushResult]:
    """A push through the real Pusher, as `edge-agent push` runs it (without the progress bars); every
    request signed with `key` when given."""
    content = bundle if isinstance(bundle, bytes) else bundle.read_bytes()
    name = "" if isinstance(bundle, bytes) else bundle.name
    pusher = Pusher(content, devices, PushOptions(BrokerAddress(broker.host, broker.port), key=key, **options),
                    name=name)
    return pusher.run()


def push_cli(broker: Broker, bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent", "push", str(bundle), "--broker", broker.address, *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def signed_payload(key: PrivateKey | None, action: str, device: str, request_id: str, params: dict) -> str:
    """A request as a pusher sends it: signed for `device` with `key` (unsigned when key is None)."""
    return json.dumps(sign_request(key, action, device, request_id, params) if key is not None else params)


def send_begin(client, key: PrivateKey | None, device: str, transfer_id: str, content: bytes, chunk_size: int,
               **begin_options) -> PushBegin:
    """Publish a (signed) begin for `content` by hand, as the Pusher would; the PushBegin it sent."""
    begin = describe_bundle(transfer_id, content, chunk_size, **begin_options)
    client.publish(push_topic("edge", device, transfer_id, "begin"),
                   signed_payload(key, "begin", device, transfer_id, begin.to_params()), qos=1)
    return begin


def send_end(client, key: PrivateKey | None, device: str, transfer_id: str) -> None:
    client.publish(push_topic("edge", device, transfer_id, "end"),
                   signed_payload(key, "end", device, transfer_id, {"transfer_id": transfer_id}), qos=1)


def predictions(collector: Collector, device: str) -> list[dict]:
    return collector.json(f"edge/{device}/cam/predictions")


def events(collector: Collector, device: str) -> list[dict]:
    return collector.json(f"edge/{device}/models/events")


def wait_serving(collector: Collector, device: str, sha256: str, count: int = 5, timeout_s: float = 30) -> list[dict]:
    """Wait until `count` more predictions arrived; every one of them must come from the model `sha256`."""
    seen = len(predictions(collector, device))
    assert wait_until(lambda: len(predictions(collector, device)) >= seen + count, timeout_s), \
        f"{device} stopped publishing predictions"
    fresh = predictions(collector, device)[seen:]
    assert {p["model"]["sha256"] for p in fresh} == {sha256}, "the model that serves changed"
    return fresh
