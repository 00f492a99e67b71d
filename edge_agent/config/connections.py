"""The agent's links to the outside world, one table each: the MQTT broker (`[mqtt]`, its
`[mqtt.tls]`, failover `servers`) and what travels over it (`[spool]` store-and-forward, `[models]`
model delivery, `[homeassistant]` discovery), the serial sink (`[serial]`) and the local HTTP
server (`[http]`), with the address forms they share (HOST:PORT, loopback).
"""

import ipaddress
from dataclasses import dataclass
from typing import Any

from edge_agent.config.setting import REQUIRED, Setting, setting
from edge_agent.config.topics import topic_safe

SERIAL_FORMATS = ("json", "csv")
SPOOL_POLICIES = ("drop_oldest", "drop_new")


def parse_listen(listen: str) -> tuple[str, int] | None:
    """(host, port) of "HOST:PORT" or "[IPv6]:PORT"; None when it is not of that form."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address needs brackets: [::1]:8080
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, "localhost"); names are
    not resolved here (no I/O in the config), so any other name counts as reachable from outside."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen_problem(listen: str) -> str | None:
    if parse_listen(listen) is None:
        return (f"expected HOST:PORT (\"127.0.0.1:8080\", \"0.0.0.0:8080\", \"[::1]:8080\") with a port from 1 to "
                f"65535, got {listen!r}")
    return None


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str = setting("", "CA certificate of the broker; empty: the system's CAs", path=True)
    cert_file: str = setting("", "client certificate (goes with key_file)", path=True)
    key_file: str = setting("", "client certificate's private key", path=True)
    insecure: bool = setting(False, "true skips the broker's host-name check (testing only)")

    def cross_check(self) -> list[tuple[str, str]]:
        if bool(self.cert_file) != bool(self.key_file):
            return [("", "cert_file and key_file go together (client certificate and its key)")]
        return []


SERVER_EXAMPLES = '"broker-2.lan:1883", "10.0.0.7:8883", "[fd00::7]:1883"'


def parse_server(text: Any) -> tuple[str, int] | None:
    """(host, port) of one `mqtt.servers` entry, "HOST:PORT" or "[IPv6]:PORT"; None when malformed."""
    if not isinstance(text, str):
        return None
    address = parse_listen(text)
    if address is None or not address[0] or any(c.isspace() for c in address[0]):
        return None
    return address


class ServersKey:
    """`mqtt.servers = ["host:port", ...]`: the brokers tried in order (failover). Each bad entry is an
    error naming its index; giving host or port as well is refused, so a board never connects to a
    broker its config only seemed to name."""

    type_text = "list of strings"
    allowed_text = '"HOST:PORT" or "[IPv6]:PORT" entries'
    tables: dict[str, type] = {}
    siblings: dict[str, tuple[type, Setting]] = {}

    def read(self, table: Any, name: str) -> tuple[tuple[str, int], ...]:
        table.consume(name)
        if name not in table.data:
            return ()
        value = table.data[name]
        if not isinstance(value, list) or not value:
            table.error(name, f"expected a non-empty list of \"host:port\" strings ({SERVER_EXAMPLES}), got {value!r}")
            return ()
        given = [key for key in ("host", "port") if key in table.data]
        if given:
            table.error(name, f"give either servers or {' and '.join(given)}, not both (host and port name one "
                              f"broker; servers lists every broker to fail over to): remove {' and '.join(given)}")
        servers: list[tuple[str, int]] = []
        for index, entry in enumerate(value):
            address = parse_server(entry)
            if address is None:
                table.error(f"{name}[{index}]", f"expected \"host:port\" ({SERVER_EXAMPLES}) with a port from 1 to "
                                                f"65535, got {entry!r}")
            elif address in servers:
                table.error(f"{name}[{index}]", f"{entry!r} repeats servers[{servers.index(address)}]: list each broker once")
            else:
                servers.append(address)
        return tuple(servers)


def format_server(address: tuple[str, int]) -> str:
    """ "host:port" (IPv6 addresses in brackets), as `mqtt.servers` spells it and the state reports it."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = setting(True, "false: no MQTT at all (pipelines' mqtt sink is skipped)")
    host: str = setting("localhost", "broker host name or address")
    port: int = setting(1883, "broker port", minimum=1, maximum=65535)
    servers: tuple[tuple[str, int], ...] = setting(
        (), "brokers tried in order, moving on to the next when one cannot be reached or is lost (failover; "
            "see the README's \"Several brokers\"); instead of host and port", custom=ServersKey(),
        default_text="[] (host:port)")
    username: str = setting("", "user name; empty: anonymous")
    password_file: str = setting("", "a file holding the password (never logged)", path=True)
    password_env: str = setting("", "the name of an environment variable holding the password")
    password_credential: str = setting(
        "", "a systemd credential name holding the password (LoadCredential=NAME:...)",
        check=lambda v: "a credential name as in LoadCredential=NAME:..., not a path" if "/" in v else None,
        allowed="a name, not a path")
    tls: TlsConfig | None = setting(None, "the table's presence turns TLS on", default_text="no TLS")
    keepalive_s: int = setting(30, "MQTT keepalive; the broker drops a silent client after 1.5 times this",
                               minimum=5, maximum=65535)
    qos: int = setting(1, "QoS of predictions (1: spooled and delivered at least once)", minimum=0, maximum=2)
    topic_prefix: str = setting("edge", "first part of every topic ('/' allowed)",
                                check=lambda v: None if topic_safe(v.replace("/", "")) else "must not contain '+', '#' or spaces",
                                allowed="no '+', '#' or spaces")
    client_id: str = setting("", "MQTT client id", default_text='"edge-agent-{device_id}"')
    state_interval_s: float = setting(5.0, "how often the retained state message is published", minimum=0.1, cap=3600.0)

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every broker to try, in order: `servers`, or the one `host`/`port` names."""
        return self.servers or ((self.host, self.port),)

    def cross_check(self) -> list[tuple[str, str]]:
        if sum(bool(v) for v in (self.password_file, self.password_env, self.password_credential)) > 1:
            return [("", "use only one of password_file, password_env, password_credential")]
        return []


@dataclass(frozen=True)
class SpoolConfig:
    """Store-and-forward for QoS 1 predictions (under state_dir/spool)."""

    enabled: bool = setting(True, "keep QoS 1 predictions on disk until the broker acknowledges them")
    max_mb: float = setting(100.0, "size of the spool at most", minimum=0.01, cap=100_000.0)
    policy: str = setting("drop_oldest", "when full: delete the oldest unsent messages, or refuse new ones",
                          choices=SPOOL_POLICIES)


@dataclass(frozen=True)
class SerialConfig:
    port: str = setting(REQUIRED, "a device path or a pyserial URL (socket://, rfc2217://, loop://)")
    baud: int = setting(115200, "bits per second", minimum=50, cap=12_000_000)
    format: str = setting("json", "json: the MQTT payload, one line; csv: label,score", choices=SERIAL_FORMATS)
    write_timeout_s: float = setting(1.0, "a write that takes longer is dropped and counted", minimum=0.0, cap=3600.0)


@dataclass(frozen=True)
class ModelsConfig:
    """Model updates pushed over MQTT (`edge-agent push`) and the model store under state_dir/models."""

    enabled: bool = setting(True, "accept pushes and rollbacks (false: they are answered `rejected`)")
    keep: int = setting(3, "model versions kept per pipeline (the active one and the rollback target always stay)",
                        minimum=1, cap=100)
    max_mb: float = setting(50.0, "largest bundle accepted", minimum=0.001, cap=2048.0)
    transfer_timeout_s: float = setting(120.0, "a transfer with no message for this long is abandoned",
                                        minimum=0.1, cap=86400.0)
    selftest_timeout_s: float = setting(60.0, "the self-test child (of a push, or of a model not checked before) is "
                                        "killed after this long", minimum=1.0, cap=3600.0)
    probation_s: float = setting(60.0, "a new model that fails within this window is rolled back; 0 = no probation",
                                 minimum=0.0, cap=86400.0)
    # who may change the board, and how much an unauthenticated client can make it do (see "Model delivery")
    max_clock_skew_s: float = setting(300.0, "a signed request issued further than this from the board's clock is "
                                             "refused; 0 = no clock check (replays are then stopped only by the "
                                             "4096 request ids remembered)", minimum=0.0, cap=31_536_000.0)
    max_begins_per_minute: int = setting(12, "push begins taken per minute; more are refused (a slot squatter or "
                                             "a flood)", minimum=1, cap=10_000)
    max_discovery_answers_per_minute: int = setting(12, "fleet discovery requests (`fleet list`, `push --group`) "
                                                        "answered per minute; more get no answer (a flood)",
                                                    minimum=1, cap=10_000)
    device_key: str = setting("", "the board's device key (keys generate-device) for encrypted bundles: a file, or "
                                  "credential:NAME for a systemd credential; empty = encrypted bundles are refused",
                              path=lambda v: not v.startswith("credential:"))


def _discovery_prefix_problem(prefix: str) -> str | None:
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        return "expected a topic prefix such as \"homeassistant\" (no empty levels, no leading or trailing '/')"
    if any(c in prefix for c in "+# \t\n\0"):
        return f"{prefix!r} must not contain MQTT wildcards ('+', '#') or spaces: it is where discovery messages are published"
    return None


@dataclass(frozen=True)
class HomeAssistantConfig:
    """Home Assistant MQTT discovery: the agent and its pipelines appear as one device with entities."""

    enabled: bool = setting(False, "publish discovery messages (retained) so entities appear in Home Assistant")
    discovery_prefix: str = setting("homeassistant", "Home Assistant's discovery prefix (its MQTT settings)",
                                    check=_discovery_prefix_problem, allowed="a topic prefix without '+', '#' or spaces")
    support_url: str = setting("", "the origin's support URL Home Assistant shows (where your users get help); "
                                   "empty: none", check=lambda v: None if not v or v.startswith(("http://", "https://"))
                               else f"expected an http:// or https:// URL, got {v!r}", allowed="an http(s) URL")


@dataclass(frozen=True)
class HttpConfig:
    """The local HTTP server: status page, live views, snapshots, /api/state, /healthz, /metrics."""

    enabled: bool = setting(False, "serve the status page and the endpoints below (see the README's \"HTTP server\")")
    listen: str = setting("127.0.0.1:8080", "HOST:PORT; beyond loopback (0.0.0.0, a LAN address) it needs token_file "
                                            "or TLS with client certificates", check=_listen_problem, allowed="HOST:PORT")
    token_file: str = setting("", "a file holding the access token (Authorization: Bearer TOKEN, or ?token=TOKEN); "
                                  "empty: no token", path=True)
    tls_cert_file: str = setting("", "serve HTTPS with this certificate (goes with tls_key_file)", path=True)
    tls_key_file: str = setting("", "the certificate's private key", path=True)
    client_ca_file: str = setting("", "with TLS: require client certificates signed by this CA", path=True)
    live_fps: float = setting(5.0, "live views: frames per second at most", minimum=0.1, cap=60.0)
    live_height: int = setting(360, "live views: height in pixels; 0 = the frame's own", minimum=0, cap=4320)
    max_clients: int = setting(16, "connections served at once; more are answered 503 and closed", minimum=1, cap=1024)
    request_timeout_s: float = setting(10.0, "a client that sends its request this slowly, or stops reading, is "
                                             "disconnected", minimum=0.1, cap=3600.0)

    def cross_check(self) -> list[tuple[str, str]]:
        problems = []
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            problems.append(("", "tls_cert_file and tls_key_file go together (the certificate and its key)"))
        if self.client_ca_file and not self.tls_cert_file:
            problems.append(("client_ca_file", "client certificates need TLS: set tls_cert_file and tls_key_file too"))
        address = parse_listen(self.listen)
        if self.enabled and address is not None and not is_loopback(address[0]) \
                and not self.token_file and not self.client_ca_file:
            problems.append(("listen", f"{self.listen} can be reached from other machines, and the server shows the "
                                       "camera: set token_file (a long random token) or TLS with client certificates "
                                       "(tls_cert_file, tls_key_file, client_ca_file), or listen on 127.0.0.1"))
        return problems
