"""The broker access control shipped in deploy/mosquitto, as shipped (only its paths and port changed): a real
mosquitto with TLS (a CA and server certificate made here with `cryptography`), a user per board and the ACL.
A board connects over TLS with its own credentials; the workstation pushes with --ca/--username/--password-file
and --key; an anonymous client cannot even connect; another board's credentials can neither send this board
a request nor read its requests."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import ssl
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from support import DEMO_FLOAT_MODEL, DEMO_MODEL, DEMO_VIDEO, REPO, AgentProcess, Broker, free_port, wait_until
from crafted_models import make_bundle, make_keys
from push_support import signed_payload

DEPLOY = REPO / "deploy" / "mosquitto"
USERS = {"board-1": "b1 pass", "board-2": "b2 pass", "workstation": "ws pass", "consumer": "c pass"}
FLOAT_SHA = hashlib.sha256(DEMO_FLOAT_MODEL.read_bytes()).hexdigest()


def write_certificates(folder) -> dict:
    """A CA, and a server certificate it signed for 127.0.0.1 / localhost."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-agent test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])).issuer_name(ca_name)
              .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.crt", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """The shipped mosquitto config with TLS, users and ACL; board-1 running behind it; keys and bundles."""
    folder = tmp_path_factory.mktemp("acl")
    certs = write_certificates(folder)
    passwd = folder / "edge-agent.passwd"
    for user, password in USERS.items():
        (folder / f"{user}.password").write_text(password + "\n")
        subprocess.run(["mosquitto_passwd", "-b", *([] if passwd.exists() else ["-c"]), str(passwd), user, password],
                       check=True, capture_output=True)
    acl = folder / "edge-agent.acl"
    acl.write_text((DEPLOY / "edge-agent.acl").read_text())
    port = free_port()
    conf = (DEPLOY / "edge-agent.conf").read_text()
    for shipped, here in (("listener 8883", f"listener {port} 127.0.0.1"), ("/etc/mosquitto/certs/ca.crt", certs["ca"]),
                          ("/etc/mosquitto/certs/server.crt", certs["cert"]),
                          ("/etc/mosquitto/certs/server.key", certs["key"]),
                          ("/etc/mosquitto/edge-agent.passwd", passwd), ("/etc/mosquitto/edge-agent.acl", acl)):
        assert shipped in conf, f"the shipped config names {shipped}"
        conf = conf.replace(shipped, str(here))
    broker = Broker(folder, port=port, own_config=conf).start()
    keys = make_keys(folder, "dev")
    v1 = make_bundle(folder / "v1.eab", DEMO_MODEL, keys["dev"], "1.0")
    v2 = make_bundle(folder / "v2.eab", DEMO_FLOAT_MODEL, keys["dev"], "2.0")
    config = folder / "board-1.toml"
    config.write_text(f"""
device_id = "board-1"
state_dir = "{folder / 'board-1-state'}"
trusted_keys = ["{folder / 'dev.pub'}"]
groups = ["lab"]
[mqtt]
host = "127.0.0.1"
port = {port}
username = "board-1"
password_file = "{folder / 'board-1.password'}"
state_interval_s = 0.5
[mqtt.tls]
ca_file = "{certs['ca']}"
[pipelines.cam]
model = "{v1}"
source = {{ uri = "{DEMO_VIDEO}", loop = true }}
max_fps = 20
num_threads = 1
""")
    agent = AgentProcess(["run", "--config", str(config)], folder)
    try:
        yield {"folder": folder, "broker": broker, "certs": certs, "keys": keys, "v2": v2, "agent": agent}
    finally:
        agent.kill()
        broker.stop()


def client(secured, user: str | None, received: list | None = None, topics: tuple[str, ...] = ()) -> tuple[mqtt.Client, list]:
    """A TLS client logged in as `user` (None: anonymous); (client, CONNACK reason codes received)."""
    connacks: list = []
    made = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.monotonic_ns()}")
    made.tls_set(ca_certs=str(secured["certs"]["ca"]), cert_reqs=ssl.CERT_REQUIRED)
    if user is not None:
        made.username_pw_set(user, USERS[user])

    def connected(c, userdata, flags, reason_code, properties):
        connacks.append(reason_code)
        if not reason_code.is_failure and topics:
            c.subscribe([(t, 1) for t in topics])

    made.on_connect = connected
    if received is not None:
        made.on_message = lambda c, u, m: received.append((m.topic, m.payload))
    made.connect("127.0.0.1", secured["broker"].port)
    made.loop_start()
    return made, connacks


def stop(made: mqtt.Client) -> None:
    made.disconnect()
    made.loop_stop()


def payloads(received: list, suffix: str) -> list[bytes]:
    return [payload for topic, payload in list(received) if topic.endswith(suffix)]


def test_a_board_behind_tls_and_the_acl_publishes_and_takes_a_push_from_the_workstation(secured):
    received: list = []
    consumer, connacks = client(secured, "consumer", received, ("edge/#",))
    try:
        assert wait_until(lambda: payloads(received, "board-1/cam/predictions"), 30), secured["agent"].stderr
        result = subprocess.run(
            [sys.executable, "-m", "edge_agent", "push", str(secured["v2"]), "--device", "board-1", "--json",
             "--broker", secured["broker"].address, "--ca", str(secured["certs"]["ca"]), "--username", "workstation",
             "--password-file", str(secured["folder"] / "workstation.password"),
             "--key", str(secured["folder"] / "dev.key")], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr + secured["agent"].stderr
        assert json.loads(result.stdout)[0]["result"] == "activated"
        assert "via 127.0.0.1:" in result.stderr and "(TLS), signed with key" in result.stderr
        assert wait_until(lambda: json.loads(payloads(received, "board-1/cam/predictions")[-1])["model"]["sha256"]
                          == FLOAT_SHA, 15)
    finally:
        stop(consumer)


def test_an_anonymous_client_cannot_connect_and_a_wrong_password_is_refused(secured):
    anonymous, connacks = client(secured, None)
    try:
        assert wait_until(lambda: connacks, 10)
        assert connacks[0].is_failure, connacks
    finally:
        stop(anonymous)
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "models", "rollback", "--device", "board-1", "--broker",
         secured["broker"].address, "--ca", str(secured["certs"]["ca"]), "--username", "workstation",
         "--password-file", str(secured["folder"] / "board-2.password")],
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1 and "refused the connection" in result.stderr, result.stderr


def test_another_boards_credentials_can_neither_command_this_board_nor_read_its_requests(secured):
    """board-2 is a valid user, signing with a stolen *request* key even: the ACL alone keeps its rollback
    away from board-1, and a push to board-1 is invisible to it."""
    spy_received: list = []
    spy, connacks = client(secured, "board-2", spy_received, ("edge/board-1/models/#", "edge/board-2/#"))
    watcher_received: list = []
    watcher, _ = client(secured, "consumer", watcher_received, ("edge/board-1/models/events",))
    try:
        assert wait_until(lambda: connacks and not connacks[0].is_failure, 10)
        time.sleep(0.5)  # both subscribed
        request = signed_payload(secured["keys"]["dev"], "rollback", "board-1", "rollback-spy",
                                 {"request_id": "rollback-spy", "pipeline": ""})
        spy.publish("edge/board-1/models/rollback", request, qos=1)
        spy.publish("edge/board-2/state", json.dumps({"groups": []}), qos=1, retain=False)  # its own prefix: allowed
        # the workstation lists board-1's store over MQTT: the answer arrives, and the spy sees nothing of it
        listing = subprocess.run(
            [sys.executable, "-m", "edge_agent", "models", "list", "--device", "board-1", "--json", "--broker",
             secured["broker"].address, "--ca", str(secured["certs"]["ca"]), "--username", "workstation",
             "--password-file", str(secured["folder"] / "workstation.password"),
             "--key", str(secured["folder"] / "dev.key")], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert listing.returncode == 0, listing.stdout + listing.stderr
        assert isinstance(json.loads(listing.stdout)["devices"]["board-1"]["pipelines"], dict)
        time.sleep(2)
        answered = [json.loads(p) for p in payloads(watcher_received, "models/events")]
        assert not any(e.get("request_id") == "rollback-spy" or e.get("claimed_id") == "rollback-spy"
                       for e in answered), "the board never saw board-2's request"
        assert not [t for t, _ in spy_received if t.startswith("edge/board-1/models/")], \
            "board-2 reads none of board-1's requests or answers"
        assert "rolling back" not in secured["agent"].stderr and "rolled back" not in secured["agent"].stderr
    finally:
        stop(spy)
        stop(watcher)


def test_discovery_passes_the_acl_and_another_board_cannot_answer_in_board_1s_name(secured):
    """The workstation's discover reaches board-1 and its answer comes back through the shipped ACL;
    board-2 (a valid user) hears the request and answers it under board-1's id, which the ACL drops, so
    board-1 is not taken for a device id used twice (which would keep it out of every group push)."""
    forger, connacks = client(secured, "board-2", None, ("edge/fleet/discover",))
    heard: list = []

    def forge(c, userdata, message) -> None:
        request = json.loads(message.payload)
        heard.append(request)
        forged = {"request_id": request.get("request_id"), "device": "board-1", "instance": "feedfacefeedface",
                  "agent_version": "6.6.6", "groups": [], "pipelines": [], "truncated": False}
        c.publish("edge/board-1/fleet/answer", json.dumps(forged), qos=1)

    forger.on_message = forge
    received: list = []
    consumer, _ = client(secured, "consumer", received, ("edge/board-1/cam/predictions",))
    try:
        assert wait_until(lambda: payloads(received, "board-1/cam/predictions"), 30), "board-1 is up"
        assert wait_until(lambda: connacks and not connacks[0].is_failure, 10)
        time.sleep(0.5)  # subscribed
        result = subprocess.run(
            [sys.executable, "-m", "edge_agent", "fleet", "list", "--json", "--discover-s", "2", "--broker",
             secured["broker"].address, "--ca", str(secured["certs"]["ca"]), "--username", "workstation",
             "--password-file", str(secured["folder"] / "workstation.password"),
             "--key", str(secured["folder"] / "dev.key")], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        board = {d["device"]: d for d in json.loads(result.stdout)["devices"]}["board-1"]
        assert "answer" in board["sources"], "the discover and the answer passed the ACL"
        assert heard, "board-2 heard the discover (a broadcast every board may read) and forged an answer"
        assert (board["duplicate"], board["answers"]) == (False, 1), "board-2's forged answer never arrived"
    finally:
        stop(forger)
        stop(consumer)


def test_a_group_push_passes_the_acl_and_another_board_cannot_write_to_the_group(secured):
    """The broadcast topics of `push --group` go through the shipped ACL from the workstation to board-1;
    board-2 (a valid user) may not publish there, so its chunk never reaches board-1 (whose dropped-chunk
    count stays where it was)."""
    received: list = []
    consumer, _ = client(secured, "consumer", received, ("edge/board-1/state", "edge/board-1/cam/predictions"))
    forger, connacks = client(secured, "board-2")
    try:
        assert wait_until(lambda: payloads(received, "board-1/state") and connacks, 15)

        def dropped() -> int:
            return json.loads(payloads(received, "board-1/state")[-1]).get("models", {}).get("dropped_chunks", 0)

        before = dropped()
        forger.publish("edge/fleet/group/lab/push/push-forged/chunk/0", b"x" * 100, qos=1)
        v3 = make_bundle(secured["folder"] / "v3.eab", DEMO_MODEL, secured["keys"]["dev"], "3.0")
        result = subprocess.run(
            [sys.executable, "-m", "edge_agent", "push", str(v3), "--group", "lab", "--json", "--discover-s", "3",
             "--broker", secured["broker"].address, "--ca", str(secured["certs"]["ca"]), "--username", "workstation",
             "--password-file", str(secured["folder"] / "workstation.password"),
             "--key", str(secured["folder"] / "dev.key")], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr + secured["agent"].stderr
        assert [(r["device"], r["result"]) for r in json.loads(result.stdout)] == [("board-1", "activated")]
        assert "once for group lab" in result.stderr
        seen = len(payloads(received, "board-1/state"))
        assert wait_until(lambda: len(payloads(received, "board-1/state")) > seen + 1, 10)
        assert dropped() == before, "board-2's chunk never reached board-1"
    finally:
        stop(consumer)
        stop(forger)
