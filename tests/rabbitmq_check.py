"""Manual compatibility check against RabbitMQ's MQTT plugin (issue 16, item 6): `make rabbitmq-check`.

Starts one throwaway RabbitMQ node (Debian's `rabbitmq-server`, 3.10) with the MQTT plugin on free
ports, everything it writes in a temporary folder (its own node name, mnesia and log folders, config,
enabled-plugins file, env file, Erlang cookie via HOME, its own epmd), so the system's default node
and /etc are never used. Against it, with the real command-line tools a user runs:

1. `edge-agent keys generate`, `edge-agent bundle create` (the demo int8 model as version 1, the demo
   float model as version 2, both signed);
2. `edge-agent run` with version 1 on the demo video, `trusted_keys` set, mqtt at the node's port;
3. predictions arrive at a wildcard subscriber with no seq gap, the retained state at an exact one;
4. `edge-agent fleet list --group G --key K` finds the board (discovery: RabbitMQ gives retained
   messages only to exact-topic subscriptions, never to `edge/+/state`);
5. `edge-agent push BUNDLE --group G --key K` activates version 2 (predictions then name its hash);
6. `edge-agent models rollback --device ID --key K` goes back to version 1 (predictions say so).

Prints the time of each step and PASS or FAIL (exit 0 or 1). A Python script rather than shell: the
subscriber, JSON checks and cleanup on every path (node, epmd, agent) are plainer here, and it reuses
tests/support.py (free ports, the real paho Collector, the agent child process).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import DEMO, DEMO_FLOAT_MODEL, DEMO_MODEL, DEMO_VIDEO, REPO, AgentProcess, Collector, free_port, wait_until  # noqa: E402

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # not /usr/sbin's: that one becomes user rabbitmq in /var/lib
EPMD = shutil.which("epmd") or "/usr/bin/epmd"
DEVICE = "rabbit-board"
GROUP = "rabbit-group"
CLI_TIMEOUT_S = 120


class Failed(Exception):
    """A step did not do what it should: the message says what was seen."""


class RabbitNode:
    """One RabbitMQ node with the MQTT plugin, on 127.0.0.1 and free ports, living in `workdir`."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = free_port()  # MQTT
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.ctl_port = free_port()  # the CLI tools' own distribution port, should anyone run rabbitmqctl
        self.nodename = f"edge-check-{os.getpid()}@localhost"
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def env(self) -> dict:
        base = self.workdir
        (base / "home").mkdir(exist_ok=True)
        (base / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq/rabbitmq-env.conf
        (base / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"  # as guest, which RabbitMQ allows from loopback only
            "log.console = false\n"
            "log.file.level = info\n")
        return {
            **os.environ,
            "HOME": str(base / "home"),  # the Erlang cookie goes here, not into root's home
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
        }

    def start(self, timeout_s: float = 120) -> None:
        self.log = open(self.workdir / "rabbitmq-server.out", "wb")
        # its own session: the shell wrapper, erl and their children are one group we can end by id
        self.process = subprocess.Popen([str(RABBITMQ_SERVER)], env=self.env(), cwd=self.workdir,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_until(lambda: self.process.poll() is not None or self._mqtt_accepts(), timeout_s, 0.25) \
                or self.process.poll() is not None:
            raise Failed(f"RabbitMQ did not accept MQTT on {self.address} within {timeout_s:.0f} s:\n{self.log_tail()}")

    def _mqtt_accepts(self) -> bool:
        """True once an MQTT CONNECT is answered with success (the listener opens before the plugin is ready)."""
        try:
            socket.create_connection((self.host, self.port), timeout=0.5).close()
        except OSError:
            return False
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}")
        try:
            return client.connect(self.host, self.port, keepalive=10) == 0 and self._connack(client)
        except OSError:
            return False
        finally:
            client.disconnect()

    @staticmethod
    def _connack(client: mqtt.Client) -> bool:
        connected = []
        client.on_connect = lambda c, u, f, rc, p: connected.append(not rc.is_failure)
        deadline = time.monotonic() + 3
        while not connected and time.monotonic() < deadline:
            client.loop(0.1)
        return bool(connected and connected[0])

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for path in [self.workdir / "rabbitmq-server.out", *sorted((self.workdir / "log").glob("*.log"))]:
            if path.exists():
                text += f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def stop(self) -> None:
        """SIGTERM to the wrapper (it stops the node gracefully), then our own epmd, which erl left running."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        subprocess.run([EPMD, "-port", str(self.epmd_port), "-kill"], capture_output=True, timeout=10,
                       env={**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"})


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=CLI_TIMEOUT_S)


def cli_ok(*args: str) -> subprocess.CompletedProcess:
    result = cli(*args)
    if result.returncode != 0:
        raise Failed(f"`edge-agent {' '.join(args)}` exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def agent_config(path: Path, node: RabbitNode, model: Path, trusted_key: Path) -> Path:
    path.write_text(f"""
device_id = "{DEVICE}"
groups = ["{GROUP}"]
state_dir = "{path.parent / 'state'}"
trusted_keys = ["{trusted_key}"]

[mqtt]
host = "{node.host}"
port = {node.port}

[pipelines.cam]
model = "{model}"
source = {{ uri = "{DEMO_VIDEO}", loop = true }}
max_fps = 20
num_threads = 1
""")
    return path


def predictions(collector: Collector) -> list[dict]:
    return collector.json(f"edge/{DEVICE}/cam/predictions")


def wait_serving(collector: Collector, sha256: str, what: str, timeout_s: float = 60) -> None:
    """Until predictions come from the model `sha256` (the swap happens between two frames)."""
    if not wait_until(lambda: any(p["model"]["sha256"] == sha256 for p in predictions(collector)[-5:]), timeout_s):
        seen = {p["model"]["sha256"][:16] for p in predictions(collector)[-20:]}
        raise Failed(f"{what}: no prediction from model {sha256[:16]} within {timeout_s:.0f} s (seen: {seen})")


class Steps:
    """Runs named steps, printing each one's time; the first failure stops the run."""

    def __init__(self):
        self.times: list[tuple[str, float]] = []

    def run(self, name: str, action):
        start = time.monotonic()
        print(f"--- {name}", flush=True)
        result = action()
        elapsed = time.monotonic() - start
        self.times.append((name, elapsed))
        print(f"    ok in {elapsed:.2f} s", flush=True)
        return result


def check(workdir: Path, steps: Steps) -> None:
    node = RabbitNode(workdir)
    print(f"RabbitMQ node {node.nodename}: MQTT {node.address}, AMQP {node.amqp_port}, dist {node.dist_port}, "
          f"epmd {node.epmd_port}, files in {workdir}")
    agent = collector = None
    try:
        steps.run("start the RabbitMQ node (until MQTT accepts a connection)", node.start)
        key = workdir / "ci.key"
        v1, v2 = workdir / "digits-1.eab", workdir / "digits-2.eab"

        def make_keys_and_bundles():
            cli_ok("keys", "generate", str(workdir / "ci"))
            labels = str(DEMO / "labels.txt")
            cli_ok("bundle", "create", str(DEMO_MODEL), "--key", str(key), "--labels", labels, "--name", "digits",
                   "--version", "1", "-o", str(v1))
            cli_ok("bundle", "create", str(DEMO_FLOAT_MODEL), "--key", str(key), "--labels", labels,
                   "--name", "digits", "--version", "2", "-o", str(v2))
        steps.run("keys generate, bundle create (int8 as v1, float as v2)", make_keys_and_bundles)
        int8_sha = hashlib.sha256(DEMO_MODEL.read_bytes()).hexdigest()
        float_sha = hashlib.sha256(DEMO_FLOAT_MODEL.read_bytes()).hexdigest()

        collector = Collector(node, ["edge/+/cam/predictions"])
        config = agent_config(workdir / "agent.toml", node, v1, workdir / "ci.pub")
        agent = AgentProcess(["run", "--config", str(config)], workdir)

        def first_predictions():
            if not wait_until(lambda: len(predictions(collector)) >= 20 or agent.process.poll() is not None, 90):
                raise Failed(f"no 20 predictions within 90 s; agent stderr:\n{agent.stderr[-3000:]}")
            if agent.process.poll() is not None:
                raise Failed(f"the agent exited {agent.process.returncode}:\n{agent.stderr[-3000:]}")
            seqs = [p["seq"] for p in predictions(collector)]
            if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
                raise Failed(f"seq has gaps or repeats: {seqs[:40]}")
            wait_serving(collector, int8_sha, "v1 at start")
        steps.run("edge-agent run: 20 predictions at a wildcard subscriber, no seq gap, from v1", first_predictions)

        def retained_state_exact_topic():
            exact = Collector(node, [f"edge/{DEVICE}/state"])
            try:
                if not wait_until(lambda: any(r for _, _, r in exact.messages), 10):
                    raise Failed("no retained state on the exact topic within 10 s")
            finally:
                exact.stop()
        steps.run(f"retained state delivered to an exact subscription (edge/{DEVICE}/state)", retained_state_exact_topic)

        def fleet_list():
            found = json.loads(cli_ok("fleet", "list", "--group", GROUP, "--key", str(key), "--broker", node.address,
                                      "--json").stdout)
            devices = {d["device"]: d for d in found["devices"]}
            if DEVICE not in devices or devices[DEVICE]["status"] != "online":
                raise Failed(f"fleet list did not find {DEVICE} online: {found}")
            print(f"    found {DEVICE}: sources {devices[DEVICE]['sources']}, answer_s {devices[DEVICE]['answer_s']}")
        steps.run(f"edge-agent fleet list --group {GROUP} (default --discover-s)", fleet_list)

        def push_group():
            table = json.loads(cli_ok("push", str(v2), "--group", GROUP, "--key", str(key), "--broker", node.address,
                                      "--json").stdout)
            if [(r["device"], r["result"]) for r in table] != [(DEVICE, "activated")]:
                raise Failed(f"push --group did not activate v2 on {DEVICE}: {table}")
            wait_serving(collector, float_sha, "after push")
        steps.run(f"edge-agent push digits-2.eab --group {GROUP}: activated, predictions from v2", push_group)

        def rollback():
            result = cli_ok("models", "rollback", "--device", DEVICE, "--key", str(key), "--broker", node.address)
            print("    " + result.stdout.strip().replace("\n", "\n    "))
            wait_serving(collector, int8_sha, "after rollback")
        steps.run(f"edge-agent models rollback --device {DEVICE}: predictions from v1 again", rollback)

        if agent.process.poll() is not None:
            raise Failed(f"the agent exited {agent.process.returncode}:\n{agent.stderr[-3000:]}")
    except Failed:
        print(node.log_tail(15), file=sys.stderr)
        raise
    finally:
        if agent is not None:
            agent.signal(signal.SIGTERM)
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
        if collector is not None:
            collector.stop()
        start = time.monotonic()
        node.stop()
        steps.times.append(("stop the node", time.monotonic() - start))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, config) afterwards")
    options = parser.parse_args()
    if not RABBITMQ_SERVER.exists():
        print(f"{RABBITMQ_SERVER} is missing: install Debian's rabbitmq-server (`make rabbitmq-check` does)")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="rabbitmq-check-"))
    steps = Steps()
    start = time.monotonic()
    verdict = "PASS"
    try:
        check(workdir, steps)
    except Exception as failure:  # anything unexpected is a failure too, reported the same way
        verdict = f"FAIL: {type(failure).__name__ if not isinstance(failure, Failed) else ''} {failure}".replace("FAIL:  ", "FAIL: ")
    total = time.monotonic() - start
    print("\nmeasured:")
    for name, elapsed in steps.times:
        print(f"  {elapsed:7.2f} s  {name}")
    print(f"  {total:7.2f} s  in all")
    if options.keep or verdict != "PASS":
        print(f"files kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(verdict)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
