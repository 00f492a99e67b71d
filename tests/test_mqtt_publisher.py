"""The MQTT package against a real mosquitto: where paho may be imported, and the publisher's callbacks."""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest

from support import REPO, Broker, wait_until

PAHO_IMPORT = re.compile(r"^\s*(import paho|from paho)", re.MULTILINE)


def test_paho_is_imported_in_one_module_only():
    importers = sorted(str(path.relative_to(REPO)) for path in (REPO / "edge_agent").rglob("*.py")
                       if PAHO_IMPORT.search(path.read_text(encoding="utf-8")))
    assert importers == ["edge_agent/mqtt/client.py"]


def make_publisher(broker, device: str):
    from edge_agent.config import MqttConfig
    from edge_agent.mqtt.publisher import MqttPublisher

    publisher = MqttPublisher(MqttConfig(host=broker.host, port=broker.port), device)
    publisher.start()
    return publisher


def test_a_delivery_callback_may_publish(session_broker, collect):
    """on_delivered runs after the publisher's lock is released: a callback that publishes
    (on the caller's thread for QoS 0, on paho's thread for QoS 1) must not deadlock."""
    collector = collect(session_broker, ["edge/chained/#"])
    publisher = make_publisher(session_broker, "chained")
    try:
        assert wait_until(lambda: publisher.delivered == 1, 10)  # "online"
        delivered_before = publisher.delivered
        for qos in (0, 1):
            done = threading.Event()

            def publish_next(qos=qos, done=done) -> None:
                publisher.publish(f"edge/chained/second{qos}", "2", qos=1, on_delivered=done.set)

            publisher.publish(f"edge/chained/first{qos}", "1", qos=qos, on_delivered=publish_next)
            assert done.wait(10), f"the message published from a QoS {qos} delivery callback never went out"
        assert wait_until(lambda: len(collector.payloads("/second0")) == 1 and len(collector.payloads("/second1")) == 1, 10)
        assert publisher.wait_delivered(5) and publisher.delivered - delivered_before == 4
    finally:
        publisher.stop(5)


def test_a_callback_that_raises_is_logged_and_the_publisher_goes_on(session_broker, collect, caplog):
    collector = collect(session_broker, ["edge/raising/#"])
    publisher = make_publisher(session_broker, "raising")
    try:
        assert publisher.connected.wait(10)
        publisher.publish("edge/raising/first", "1", qos=1, on_delivered=lambda: 1 / 0)
        done = threading.Event()
        publisher.publish("edge/raising/second", "2", qos=1, on_delivered=done.set)
        assert done.wait(10)
        assert wait_until(lambda: len(collector.payloads("/second")) == 1, 10)
    finally:
        publisher.stop(5)
    assert "ZeroDivisionError" in caplog.text


@pytest.mark.slow
def test_a_lost_broker_is_logged_once_not_at_every_reconnect_attempt(tmp_path, caplog):
    caplog.set_level(logging.INFO, "edge_agent")
    broker = Broker(tmp_path).start()
    publisher = make_publisher(broker, "blip")
    try:
        assert publisher.connected.wait(10)
        broker.stop()
        assert wait_until(lambda: not publisher.connected.is_set(), 10)
        time.sleep(7)  # reconnect attempts 1, 2 and 4 s apart: each used to log "Client is not connected"
        broker.start()
        assert wait_until(publisher.connected.is_set, 20)
    finally:
        publisher.stop(5)
        broker.stop()
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in loud if "not connected" in m], loud
    assert len([m for m in loud if " lost " in m]) == 1, loud
    assert len([r for r in caplog.records if r.getMessage().endswith(" back")]) == 1
