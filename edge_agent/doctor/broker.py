"""The MQTT broker, step by step, each bounded by the doctor's timeout: the name resolves, TCP
connects, TLS shakes hands (when configured), and the broker accepts the login.

The login is one MQTT 3.1.1 CONNECT written here (OASIS MQTT 3.1.1, 3.1 and 3.2): a blocking
socket with a timeout says exactly which step failed and never leaves a network thread behind.
Its client id is the doctor's own, so a running agent keeps its session.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
from dataclasses import replace
from pathlib import Path

from edge_agent.config import MqttConfig, format_server
from edge_agent.doctor.context import DoctorContext
from edge_agent.doctor.result import Check, fail, ok, skip, warn
from edge_agent.errors import EdgeAgentError

AREA = "broker"
CONNACK_CODES = {1: "unacceptable protocol version", 2: "client identifier rejected", 3: "server unavailable",
                 4: "bad user name or password", 5: "not authorised"}
UNIT = "/etc/systemd/system/edge-agent.service"


class StepFailed(EdgeAgentError):
    """One step of the broker check failed; the message says which and why."""


def resolve(host: str, port: int, timeout_s: float) -> list[tuple]:
    """getaddrinfo, bounded: it cannot be interrupted, so it runs on a daemon thread."""
    answer: list = []
    error: list[BaseException] = []

    def lookup() -> None:
        try:
            answer.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as err:
            error.append(err)

    thread = threading.Thread(target=lookup, name="doctor-dns", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise StepFailed(f"resolving {host} took longer than {timeout_s:g} s")
    if error:
        raise StepFailed(f"{host} does not resolve: {error[0]}")
    return answer


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive_s: int) -> bytes:
    flags = 0x02  # clean session
    payload = _string(client_id)
    if username:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    variable = _string("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive_s)
    return bytes([0x10]) + _remaining_length(len(variable) + len(payload)) + variable + payload


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack(">H", len(data)) + data


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def tls_context(mqtt: MqttConfig) -> ssl.SSLContext:
    """What paho's tls_set(ca_certs, certfile, keyfile, CERT_REQUIRED) + tls_insecure_set builds."""
    tls = mqtt.tls
    context = ssl.create_default_context(cafile=tls.ca_file or None)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file or None)
    context.check_hostname = not tls.insecure
    return context


def read_connack(sock: socket.socket) -> int:
    data = b""
    while len(data) < 4:
        chunk = sock.recv(4 - len(data))
        if not chunk:
            raise StepFailed("the broker closed the connection instead of answering CONNECT")
        data += chunk
    if data[0] != 0x20 or data[1] != 2:
        raise StepFailed(f"the broker answered CONNECT with {data.hex()}, not a CONNACK (is this an MQTT port?)")
    return data[3]


def password(ctx: DoctorContext) -> tuple[str | None, str]:
    """(the password the agent would use, "" or why it could not be read here)."""
    from edge_agent.mqtt.client import MqttSetupError
    from edge_agent.mqtt.publisher import read_password

    mqtt = ctx.config.mqtt
    if mqtt.password_credential and not ctx.env.get("CREDENTIALS_DIRECTORY"):
        # outside systemd: read the file the unit's LoadCredential= names
        source = _credential_source(ctx, mqtt.password_credential)
        if source is None:
            return None, f"no LoadCredential={mqtt.password_credential}:... in {UNIT}"
        try:
            return Path(source).read_text(encoding="utf-8").rstrip("\r\n") or None, ""
        except PermissionError:
            return None, f"{source} is readable by root only: run `sudo edge-agent doctor` to check the login"
        except OSError as err:
            return None, f"{source}: {err.strerror}"
    try:
        return read_password(mqtt), ""
    except MqttSetupError as err:
        return None, str(err)


def _credential_source(ctx: DoctorContext, name: str) -> str | None:
    for line in (ctx.read_text(UNIT) or "").splitlines():
        key, _, value = line.strip().partition("=")
        if key == "LoadCredential" and value.split(":", 1)[0] == name and ":" in value:
            return str(ctx.path(value.split(":", 1)[1]))
    return None


def check_broker(ctx: DoctorContext) -> list[Check]:
    if ctx.config is None:
        return [skip(AREA, "broker", "no config: no broker to check (--config FILE)")]
    mqtt = ctx.config.mqtt
    if not ctx.needs_mqtt():
        return [skip(AREA, "broker", "no pipeline publishes over MQTT")]
    if len(mqtt.addresses) == 1:
        return _check_server(ctx, *mqtt.addresses[0])
    checks: list[Check] = []
    for index, (host, port) in enumerate(mqtt.addresses):  # every broker the board may fail over to
        checks += [replace(c, name=f"{c.name} servers[{index}]") for c in _check_server(ctx, host, port)]
    return checks


def _check_server(ctx: DoctorContext, host: str, port: int) -> list[Check]:
    """TCP, TLS and login to one broker."""
    mqtt = replace(ctx.config.mqtt, host=host, port=port)  # what the messages and fixes name
    where = format_server((host, port))
    timeout = ctx.timeout_s
    checks: list[Check] = []
    try:
        addresses = resolve(mqtt.host, mqtt.port, timeout)
        family, kind, proto, _, address = addresses[0]
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError as err:
            sock.close()
            why = "no answer" if isinstance(err, TimeoutError) else err.strerror or str(err)
            raise StepFailed(f"TCP to {where} failed: {why} (within {timeout:g} s)") from None
        checks.append(ok(AREA, "tcp", f"TCP to {where} ({address[0]}) connects"))
        try:
            if mqtt.tls is not None:
                try:
                    sock = tls_context(mqtt).wrap_socket(sock, server_hostname=mqtt.host)
                except ssl.SSLCertVerificationError as err:
                    raise StepFailed(f"TLS to {where}: the broker's certificate is not trusted: {err.verify_message}") from None
                except (ssl.SSLError, OSError) as err:
                    why = f"no handshake within {timeout:g} s" if isinstance(err, TimeoutError) else str(err)
                    raise StepFailed(f"TLS to {where} failed: {why}") from None
                checks.append(ok(AREA, "tls", f"TLS handshake with {where}: {sock.version()}, certificate verified"
                                              + (" (host name not checked: insecure = true)" if mqtt.tls.insecure else "")))
            secret, unread = password(ctx)
            if unread and mqtt.username:
                checks.append(warn(AREA, "login", f"the password could not be read here ({unread}); the login was tried without it",
                                   "run the doctor as root or as the service user"))
            client_id = f"edge-agent-doctor-{os.getpid()}"
            sock.sendall(connect_packet(client_id, mqtt.username or None, secret, mqtt.keepalive_s))
            try:
                code = read_connack(sock)
            except TimeoutError:
                raise StepFailed(f"the broker at {where} did not answer CONNECT within {timeout:g} s") from None
            if code:
                raise StepFailed(f"the broker refused the login: {CONNACK_CODES.get(code, f'code {code}')}"
                                 + (f" (user {mqtt.username!r})" if mqtt.username else " (anonymous)"))
            sock.sendall(b"\xe0\x00")  # DISCONNECT: a clean goodbye
            checks.append(ok(AREA, "login", f"the broker accepts the login ({'user ' + repr(mqtt.username) if mqtt.username else 'anonymous'})"))
        finally:
            sock.close()
    except StepFailed as err:
        checks.append(fail(AREA, _step_name(checks, mqtt), str(err), _fix(str(err), mqtt)))
    except (OSError, ssl.SSLError, ValueError) as err:
        checks.append(fail(AREA, _step_name(checks, mqtt), f"{where}: {err}", "check [mqtt] in the config"))
    return checks


def _step_name(done: list[Check], mqtt: MqttConfig) -> str:
    names = [c.name for c in done]
    if "tcp" not in names:
        return "tcp"
    if mqtt.tls is not None and "tls" not in names:
        return "tls"
    return "login"


def _fix(message: str, mqtt: MqttConfig) -> str:
    if "resolve" in message or "TCP" in message:
        key = "[mqtt] servers" if mqtt.servers else "[mqtt] host/port"
        return (f"check {key} ({format_server((mqtt.host, mqtt.port))}), that the broker runs and that no firewall blocks it "
                f"(`mosquitto_sub -h {mqtt.host} -p {mqtt.port} -t test` from this board)")
    if "certificate" in message:
        return "set [mqtt.tls] ca_file to the CA that signed the broker's certificate (and use the name in the certificate as host)"
    if "TLS" in message:
        return "is this the broker's TLS port (usually 8883)? A plain port (1883) does not answer a TLS handshake"
    if "login" in message:
        return "check [mqtt] username and the password file (or the broker's ACL for this user)"
    return "check the broker's log"


__all__ = ["check_broker", "connect_packet", "read_connack", "StepFailed"]
