"""The HTTP server's settings, attacked and mistaken: the agent (a real child process) refuses to
start with the reason, before any pipeline runs; TLS with client certificates lets in only a
client whose certificate the configured CA signed."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import re
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support import DEMO_MODEL, DEMO_VIDEO, free_port, wait_until, write_config

TOKEN = "0123456789abcdef0123456789abcdef"


def config(tmp_path: Path, http: str, pipeline_extra: str = "") -> Path:
    return write_config(tmp_path / "agent.toml", f"""
device_id = "bad-http"
state_dir = "{tmp_path}/state"
[mqtt]
enabled = false
[http]
enabled = true
{http}
[pipelines.digits]
model = "{DEMO_MODEL}"
source = {{ uri = "{DEMO_VIDEO}", loop = true, realtime = true }}
max_fps = 5
sinks = ["stdout"]
{pipeline_extra}
""")


def refused(agent_process, path: Path) -> str:
    """Run the agent with `path`; it must exit 2 at once, having started no pipeline. Its log."""
    agent = agent_process("run", "--config", str(path))
    assert agent.wait(60) == 2, agent.stderr
    # the line a pipeline's start logs (pipeline_factory); the model guard's "passed its check" may come first
    assert not re.search(r"pipeline digits: model .* on .*, delegate", agent.stderr), "refused before any pipeline started"
    return agent.stderr


def test_a_port_in_use_is_refused_with_the_reason(tmp_path, agent_process):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = refused(agent_process, config(tmp_path, f'listen = "127.0.0.1:{port}"'))
    assert f"http.listen 127.0.0.1:{port}: port {port} is already in use" in log


def test_an_address_that_is_not_this_machines_is_refused(tmp_path, agent_process):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never a local address; a token makes it allowed in principle
    (tmp_path / "token").write_text(TOKEN)
    log = refused(agent_process, config(tmp_path, f'listen = "192.0.2.1:{free_port()}"\ntoken_file = "token"'))
    assert "192.0.2.1 is not an address of this machine" in log


@pytest.mark.parametrize("content, problem", [
    (None, "cannot be read: No such file or directory"),
    ("", "is empty"),
    ("   \n\n", "is empty"),
    ("short", "at least 16 characters"),
    ("two words but long enough", "one word"),
])
def test_a_missing_empty_or_weak_token_file_is_refused(tmp_path, agent_process, content, problem):
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
    log = refused(agent_process, config(tmp_path, f'listen = "127.0.0.1:{free_port()}"\ntoken_file = "{token}"'))
    assert f"http.token_file {token}" in log and problem in log


@pytest.mark.parametrize("http, problem", [
    ('listen = "0.0.0.0:8080"', "http.listen: 0.0.0.0:8080 can be reached from other machines"),
    ('listen = "[::]:8080"', "can be reached from other machines"),
    ('listen = "board.local:8080"', "can be reached from other machines"),
    ('listen = "0.0.0.0:8080"\ntls_cert_file = "c.pem"\ntls_key_file = "k.pem"', "can be reached from other machines"),
    ('listen = "8080"', "expected HOST:PORT"),
    ('listen = "127.0.0.1:99999"', "expected HOST:PORT"),
    ('listen = "::1:8080"', "expected HOST:PORT"),
    ('listen = "127.0.0.1:0"', "expected HOST:PORT"),
    ('tls_cert_file = "c.pem"', "tls_cert_file and tls_key_file go together"),
    ('client_ca_file = "ca.pem"', "client certificates need TLS"),
    ("live_fps = 0", "http.live_fps"),
    ("max_clients = 0", "http.max_clients"),
])
def test_http_settings_that_cannot_work_fail_the_config_check(tmp_path, agent_process, http, problem):
    path = config(tmp_path, http)
    check = agent_process("check-config", str(path))
    assert check.wait(60) == 2 and problem in check.stderr + check.stdout, check.stderr + check.stdout
    log = refused(agent_process, path)
    assert problem in log


def test_beyond_loopback_is_allowed_with_a_token_or_client_certificates(tmp_path, agent_process):
    (tmp_path / "token").write_text(TOKEN)
    for http in ('listen = "0.0.0.0:8080"\ntoken_file = "token"',
                 'listen = "0.0.0.0:8080"\ntls_cert_file = "c.pem"\ntls_key_file = "k.pem"\nclient_ca_file = "ca.pem"'):
        check = agent_process("check-config", str(config(tmp_path, http)))
        check.wait(60)
        assert "http." not in check.stderr + check.stdout, check.stderr + check.stdout


# ----------------------------------------------------------------------------- TLS with client certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer: str, issuer_key, ca: bool = False, ip: str | None = None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, certificate, key=None) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                                serialization.NoEncryption()))
    return path


@pytest.fixture
def pki(tmp_path):
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test CA", ca_key, "test CA", ca_key, ca=True)
    other_ca = _certificate("other CA", other_key, "other CA", other_key, ca=True)
    server_key, client_key, stranger_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    return {
        "ca": _write(tmp_path / "ca.pem", ca),
        "server": _write(tmp_path / "server.pem", _certificate("board", server_key, "test CA", ca_key, ip="127.0.0.1"),
                         server_key),
        "client": _write(tmp_path / "client.pem", _certificate("phone", client_key, "test CA", ca_key), client_key),
        "stranger": _write(tmp_path / "stranger.pem", _certificate("x", stranger_key, "other CA", other_key), stranger_key),
    }


def test_tls_with_client_certificates_serves_only_certified_clients(tmp_path, agent_process, pki):
    port = free_port()
    agent = agent_process("run", "--config", str(config(tmp_path, f"""listen = "127.0.0.1:{port}"
tls_cert_file = "{pki['server']}"
tls_key_file = "{pki['server'].with_suffix('.key')}"
client_ca_file = "{pki['ca']}"
request_timeout_s = 2""")))

    def get(client: Path | None) -> int:
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        if client is not None:
            context.load_cert_chain(str(client), str(client.with_suffix(".key")))
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    try:
        assert wait_until(lambda: _answers(get, pki["client"]), 60), agent.stderr
        for client in (None, pki["stranger"]):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                get(client)
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            plain.request("GET", "/healthz")
            plain.getresponse().read()
        plain.close()
        assert get(pki["client"]) == 200, "the server still serves after the refusals"
    finally:
        agent.kill()


def _answers(get, client: Path) -> bool:
    try:
        return get(client) == 200
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return False
