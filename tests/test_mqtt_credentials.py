"""MQTT credentials against a real mosquitto that refuses anonymous clients: the password from a
systemd credential (LoadCredential=), and a wrong password logged once and retried with backoff."""

from __future__ import annotations

import signal
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from support import DEMO_MODEL, DEMO_VIDEO, Broker, wait_until, write_config


def broker_with_user(tmp_path, user: str, password: str) -> Broker:
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), user, password], check=True, capture_output=True)
    return Broker(tmp_path, password_file=passwords).start()


def config(tmp_path, broker: Broker, device: str) -> str:
    return str(write_config(tmp_path / f"{device}.toml", f"""
device_id = "{device}"
state_dir = "{tmp_path}/state"
[mqtt]
host = "{broker.host}"
port = {broker.port}
username = "agent"
password_credential = "mqtt_password"
[pipelines.cam]
model = "{DEMO_MODEL}"
source = {{ uri = "{DEMO_VIDEO}", loop = true }}
max_fps = 20
"""))


def subscribe(broker: Broker, topic: str, received: list) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.username_pw_set("agent", "s3cret pass")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    client.on_message = lambda c, u, m: received.append(m.payload)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def test_password_from_systemd_credentials_directory(tmp_path, agent_process):
    broker = broker_with_user(tmp_path, "agent", "s3cret pass")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt_password").write_text("s3cret pass\n")
    received: list[bytes] = []
    client = subscribe(broker, "edge/credtest/cam/predictions", received)
    try:
        agent = agent_process("run", "--config", config(tmp_path, broker, "credtest"),
                              env={"CREDENTIALS_DIRECTORY": str(credentials)})
        assert wait_until(lambda: len(received) >= 5, 30), agent.stderr
        agent.signal(signal.SIGTERM)
        assert agent.wait(20) == 0, agent.stderr
    finally:
        client.disconnect()
        client.loop_stop()
        broker.stop()
    assert "s3cret" not in agent.stderr, "the password must never reach the log"


@pytest.mark.slow
def test_a_refused_password_is_logged_once_and_retried_with_backoff(tmp_path, agent_process):
    broker = broker_with_user(tmp_path, "agent", "right password")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt_password").write_text("wrong password")
    try:
        agent = agent_process("run", "--config", config(tmp_path, broker, "refused"),
                              env={"CREDENTIALS_DIRECTORY": str(credentials)})
        assert wait_until(lambda: "refused the connection" in agent.stderr, 30), agent.stderr
        time.sleep(4)
        assert agent.process.poll() is None, "a refused login must not stop the agent"
        agent.signal(signal.SIGTERM)
        assert agent.wait(20) == 0, agent.stderr
    finally:
        broker.stop()
    assert agent.stderr.count("refused the connection") == 1, agent.stderr
    attempts = (tmp_path / "mosquitto.log").read_text().count("not authorised")
    assert 1 <= attempts <= 6, f"{attempts} connection attempts in ~5 s: backoff must space them out"
    assert "wrong password" not in agent.stderr


def test_password_credential_without_systemd_is_a_clear_error(tmp_path, agent_process):
    broker = Broker(tmp_path)
    agent = agent_process("run", "--config", config(tmp_path, broker, "nocreds"), env={"CREDENTIALS_DIRECTORY": ""})
    assert agent.wait(30) != 0
    assert "CREDENTIALS_DIRECTORY" in agent.stderr and "Traceback" not in agent.stderr
