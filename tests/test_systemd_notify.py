"""sd_notify against real AF_UNIX datagram sockets standing in for systemd's, and the agent as a child process."""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import time
import uuid

import pytest

from crafted_models import FIXED_COST_ITERATIONS, slow_on_contrast_model
from support import DEMO_MODEL, DEMO_VIDEO, REPO, wait_until, write_config
from edge_agent.service.systemd import Notifier, Watchdog


class NotifyReceiver:
    """What systemd does with $NOTIFY_SOCKET: a bound SOCK_DGRAM socket that also learns the sender's pid."""

    def __init__(self, address: str | bytes):
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(address)
        # systemd checks the sender's pid (NotifyAccess=main); SO_PASSCRED lets the test check it too.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, timeout_s: float = 2.0) -> tuple[list[str], int] | None:
        """One datagram as its lines, and the sender's pid; None when nothing came within the timeout."""
        self.socket.settimeout(timeout_s)
        try:
            data, ancillary, _, _ = self.socket.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
        except TimeoutError:
            return None
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
        return data.decode().split("\n"), pid

    def drain(self, duration_s: float) -> list[tuple[float, list[str], int]]:
        """Every datagram arriving within `duration_s`, with its arrival time."""
        received = []
        deadline = time.monotonic() + duration_s
        while (left := deadline - time.monotonic()) > 0:
            item = self.receive(left)
            if item is not None:
                received.append((time.monotonic(), *item))
        return received

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def path_socket(tmp_path):
    path = tmp_path / "notify"
    receiver = NotifyReceiver(str(path))
    yield str(path), receiver
    receiver.close()


@pytest.fixture
def abstract_socket():
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    receiver = NotifyReceiver(b"\0" + name.encode())
    yield "@" + name, receiver
    receiver.close()


def test_no_notify_socket_is_a_silent_no_op(caplog):
    caplog.set_level(logging.DEBUG, "edge_agent")
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})
    watchdog = Watchdog(notifier)
    assert not notifier.enabled and not notifier.watchdog_enabled and notifier.watchdog_interval_s == 0
    assert notifier.ready("up") is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.reloading() is False
    assert watchdog.tick({"main": time.monotonic()}, "running") is False
    assert notifier._socket is None, "no socket may be created outside systemd"
    assert caplog.records == []


def test_ready_status_watchdog_stopping_reach_a_path_socket(path_socket):
    address, receiver = path_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    assert notifier.enabled and not notifier.watchdog_enabled

    assert notifier.ready("1 pipeline running\nsecond line")
    assert receiver.receive() == (["READY=1", "STATUS=1 pipeline running second line"], os.getpid())
    assert notifier.ready("again") is False, "READY=1 is sent once"
    assert notifier.status("main 9.8 fps")
    assert receiver.receive()[0] == ["STATUS=main 9.8 fps"]
    assert notifier.watchdog()
    assert receiver.receive()[0] == ["WATCHDOG=1"]
    assert notifier.stopping("stopping: SIGTERM")
    assert receiver.receive()[0] == ["STOPPING=1", "STATUS=stopping: SIGTERM"]
    assert receiver.receive(0.2) is None
    notifier.close()


def test_reloading_carries_monotonic_usec_and_rearms_ready(path_socket):
    address, receiver = path_socket
    notifier = Notifier(address)
    notifier.ready()
    receiver.receive()
    before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading("reloading config")
    after_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines, _ = receiver.receive()
    assert lines[0] == "RELOADING=1" and lines[2] == "STATUS=reloading config"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and before_usec <= int(value) <= after_usec
    assert notifier.ready("reloaded"), "after RELOADING=1 the next READY=1 ends the reload"
    assert receiver.receive()[0] == ["READY=1", "STATUS=reloaded"]
    notifier.close()


def test_abstract_socket(abstract_socket):
    address, receiver = abstract_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"})
    assert notifier.watchdog_timeout_s == 30.0 and notifier.watchdog_interval_s == 15.0
    assert notifier.watchdog()
    assert receiver.receive() == (["WATCHDOG=1"], os.getpid())
    notifier.close()


@pytest.mark.parametrize(
    "watchdog_pid, enabled",
    [(None, True), ("self", True), ("1", False), ("not-a-pid", False)],
    ids=["pid-missing-means-us", "pid-matches", "pid-of-another-process", "pid-garbage"],
)
def test_watchdog_pid_must_match(path_socket, watchdog_pid, enabled):
    address, receiver = path_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"}
    if watchdog_pid is not None:
        env["WATCHDOG_PID"] = str(os.getpid()) if watchdog_pid == "self" else watchdog_pid
    notifier = Notifier.from_environment(env)
    assert notifier.watchdog_enabled is enabled
    assert notifier.watchdog_interval_s == (1.0 if enabled else 0.0)
    assert Watchdog(notifier).tick({"main": time.monotonic()}) is enabled
    assert (receiver.receive(0.3) is not None) is enabled
    notifier.close()


def test_bad_watchdog_usec_disables_the_watchdog_only(path_socket, caplog):
    address, _ = path_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30s"})
    assert notifier.enabled and not notifier.watchdog_enabled
    assert "WATCHDOG_USEC='30s' is not a number" in caplog.text


def test_pings_at_half_the_interval_while_heartbeats_are_fresh(path_socket):
    address, receiver = path_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})  # ping every 0.2 s
    watchdog = Watchdog(notifier)
    pings = []
    started = time.monotonic()
    while time.monotonic() - started < 1.0:  # the agent's main loop ticks every 0.2 s; tick faster here
        now = time.monotonic()
        if watchdog.tick({"front": now, "back": now - 0.1}):
            pings.append(now)
        time.sleep(0.02)
    assert 4 <= len(pings) <= 6, f"expected a ping every 0.2 s for 1 s, got {len(pings)}"
    datagrams = [lines for _, lines, _ in receiver.drain(0.1)]
    assert datagrams == [["WATCHDOG=1"]] * len(pings) and watchdog.pings == len(pings)
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert min(gaps) >= 0.15, gaps
    notifier.close()


def test_a_stale_heartbeat_stops_the_pings_and_a_fresh_one_resumes_them(path_socket, caplog):
    address, receiver = path_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    watchdog = Watchdog(notifier)
    assert watchdog.max_age_s == pytest.approx(0.2)
    assert watchdog.tick({"front": time.monotonic(), "back": time.monotonic()})
    assert receiver.receive()[0] == ["WATCHDOG=1"]

    hung_since = time.monotonic() - 5.0  # "back" stopped beating 5 s ago: a hung invoke()
    for _ in range(10):
        assert watchdog.tick({"front": time.monotonic(), "back": hung_since}) is False
        time.sleep(0.05)
    assert receiver.receive(0.3) is None, "no ping may go out while a heartbeat is stale"
    assert watchdog.stale == ["back"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "the stall is logged once, not once per tick"
    assert "no heartbeat from back 5 s" in errors[0].getMessage()

    assert watchdog.tick({"front": time.monotonic(), "back": time.monotonic()})
    assert receiver.receive()[0] == ["WATCHDOG=1"]
    assert watchdog.stale == []
    assert "pings resume" in caplog.text
    notifier.close()


def test_no_heartbeats_still_pings(path_socket):
    """With nothing that must be alive, the main loop calling tick() is the sign of life."""
    address, receiver = path_socket
    watchdog = Watchdog(Notifier(address, watchdog_usec=1_000_000))
    assert watchdog.tick({})
    assert receiver.receive()[0] == ["WATCHDOG=1"]
    watchdog.notifier.close()


def test_status_rides_with_the_ping_and_is_sent_only_when_it_changes(path_socket):
    address, receiver = path_socket
    watchdog = Watchdog(Notifier(address, watchdog_usec=60_000_000))  # one ping per 30 s
    assert watchdog.tick({"main": time.monotonic()}, "main 10.0 fps")
    assert receiver.receive()[0] == ["WATCHDOG=1", "STATUS=main 10.0 fps"]
    for _ in range(5):  # same status, ping not due: nothing to send
        assert watchdog.tick({"main": time.monotonic()}, "main 10.0 fps") is False
    assert receiver.receive(0.3) is None
    # a changed status within STATUS_MIN_INTERVAL_S waits; no datagram per tick
    watchdog.tick({"main": time.monotonic()}, "main 9.0 fps")
    assert receiver.receive(0.3) is None
    watchdog._last_status_mono -= 10  # as if the interval had passed
    watchdog.tick({"main": time.monotonic()}, "main 9.0 fps")
    assert receiver.receive()[0] == ["STATUS=main 9.0 fps"]
    watchdog.notifier.close()


def test_status_without_a_watchdog(path_socket):
    address, receiver = path_socket
    watchdog = Watchdog(Notifier(address))
    assert watchdog.tick({"main": 0.0}, "starting") is False, "no watchdog: nothing to ping, heartbeats ignored"
    assert receiver.receive()[0] == ["STATUS=starting"]
    watchdog.notifier.close()


def test_an_unreachable_socket_is_logged_once_and_never_raises(tmp_path, caplog):
    caplog.set_level(logging.INFO, "edge_agent")
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "1000000"})
    for _ in range(3):
        assert notifier.watchdog() is False
        assert notifier.ready() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot notify systemd at" in warnings[0].getMessage()
    # systemd comes back (the socket exists again): READY=1 was not marked sent, so it goes now
    receiver = NotifyReceiver(str(tmp_path / "gone"))
    try:
        assert notifier.ready("up")
        assert receiver.receive()[0] == ["READY=1", "STATUS=up"]
        assert "works again" in caplog.text
    finally:
        receiver.close()
        notifier.close()


def test_a_relative_notify_socket_is_refused_with_a_warning(caplog):
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "not a path or an abstract socket" in caplog.text


def test_agent_sends_ready_after_the_first_prediction_then_keeps_pinging(path_socket, agent_process):
    address, receiver = path_socket
    # WATCHDOG_PID is left out: the child's pid is unknown before it starts, and systemd's
    # documentation lets a missing WATCHDOG_PID mean "the process that reads it".
    agent = agent_process(
        "run", "--model", str(DEMO_MODEL.relative_to(REPO)), "--source", str(DEMO_VIDEO.relative_to(REPO)),
        "--no-mqtt", "--loop", "--max-fps", "20",
        env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"},
    )
    pid = agent.process.pid
    assert wait_until(lambda: '"seq":' in agent.stdout or agent.process.poll() is not None, 60), agent.stderr
    assert agent.process.poll() is None, agent.stderr
    first_prediction_mono = time.monotonic()

    ready = None
    while ready is None and time.monotonic() - first_prediction_mono < 3.0:
        item = receiver.receive(0.5)
        if item and "READY=1" in item[0]:
            ready = item
    assert ready is not None, f"no READY=1 within 3 s of the first prediction\n{agent.stderr}"
    assert ready[1] == pid, "READY=1 must come from the main process (NotifyAccess=main)"

    received = receiver.drain(3.0)
    pings = [(t, sender) for t, lines, sender in received if "WATCHDOG=1" in lines]
    assert len(pings) >= 4, f"WatchdogSec=1 wants a ping every 0.5 s; got {len(pings)} in 3 s"
    assert {sender for _, sender in pings} == {pid}
    assert max(b - a for (a, _), (b, _) in zip(pings, pings[1:])) < 1.0

    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.stderr
    tail = receiver.drain(0.3)
    assert any("STOPPING=1" in lines for _, lines, _ in tail), tail


@pytest.mark.slow
def test_a_wedged_capture_stops_the_pings_and_a_lost_camera_does_not(tmp_path, path_socket, mjpeg_server, agent_process):
    """Three-thread mode (a model of a few ms per invoke): the inference loop beats while it waits
    for frames, so only capture's own heartbeat can tell a read() that never returns."""
    address, receiver = path_socket
    model = tmp_path / "fixed_cost.tflite"
    model.write_bytes(slow_on_contrast_model(0, FIXED_COST_ITERATIONS))
    # read_timeout_s far beyond the watchdog: a stalled stream is a wedged read, as a stuck GStreamer would be
    config = write_config(tmp_path / "agent.toml", f"""
device_id = "wedge"
state_dir = "{tmp_path}/state"
shutdown_timeout_s = 1
[mqtt]
enabled = false
[pipelines.cam]
model = "{model}"
task = "classification"
source = {{ uri = "{mjpeg_server.url}", read_timeout_s = 600 }}
max_fps = 10
sinks = ["stdout"]
""")
    agent = agent_process("run", "--config", str(config), env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
    predictions = lambda: agent.stdout.count('"seq":')  # noqa: E731
    assert wait_until(lambda: predictions() >= 3, 60), agent.stderr
    assert "stages on three threads" in agent.stderr, agent.stderr

    def pings(seconds: float) -> int:
        return sum("WATCHDOG=1" in lines for _, lines, _ in receiver.drain(seconds))

    assert pings(3.0) >= 2, agent.stderr

    mjpeg_server.stop()  # the camera goes away: open fails, reconnects back off; that is alive
    assert wait_until(lambda: "stopped delivering frames" in agent.stderr, 20), agent.stderr
    assert pings(4.0) >= 3, f"a lost camera must not stop the watchdog pings\n{agent.stderr}"

    mjpeg_server.start()
    seen = predictions()
    assert wait_until(lambda: predictions() >= seen + 3, 20), agent.stderr
    mjpeg_server.stall()  # connected, nothing more arrives: read() blocks
    receiver.drain(3.0)  # the pings may go on until capture's heartbeat is older than WatchdogSec=2
    assert pings(4.0) == 0, f"a wedged capture must stop the watchdog pings\n{agent.stderr}"
    assert "no heartbeat from cam capture" in agent.stderr, agent.stderr
    agent.kill()


def test_a_reload_that_loads_a_slow_model_keeps_the_pings_and_the_state_going(
        tmp_path, path_socket, session_broker, collect, agent_process):
    """Loading and warming a model takes seconds; the main loop (pings, state) must not wait for it."""
    address, receiver = path_socket
    slow = tmp_path / "slow_to_warm.tflite"
    slow.write_bytes(slow_on_contrast_model(0, 3_000_000))  # ~0.5 s per invoke: warm-up alone takes seconds
    base = f"""
device_id = "slowreload"
state_dir = "{tmp_path}/state"
[mqtt]
host = "{session_broker.host}"
port = {session_broker.port}
state_interval_s = 0.5
[pipelines.cam]
model = "{DEMO_MODEL}"
source = {{ uri = "{DEMO_VIDEO}", loop = true }}
max_fps = 20
"""
    config = write_config(tmp_path / "agent.toml", base)
    collector = collect(session_broker, ["edge/slowreload/state"])
    agent = agent_process("run", "--config", str(config), env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "3000000"})
    assert wait_until(lambda: len(collector.payloads("/state")) >= 2, 60), agent.stderr
    write_config(config, base + f"""
[pipelines.slow]
model = "{slow}"
task = "classification"
source = "{DEMO_VIDEO}"
max_frames = 1
sinks = []
""")
    agent.signal(signal.SIGHUP)
    started = time.monotonic()
    pings, states_before = [], len(collector.payloads("/state"))
    while "reload done" not in agent.stderr and time.monotonic() - started < 120:
        pings += [t for t, lines, _ in receiver.drain(0.5) if "WATCHDOG=1" in lines]
    reload_s = time.monotonic() - started
    states_during = len(collector.payloads("/state")) - states_before
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.stderr
    assert "reload done: 1 added" in agent.stderr, agent.stderr
    assert reload_s >= 3.0, f"the reload took {reload_s:.1f} s: too fast to tell"
    gaps = [b - a for a, b in zip([started, *pings], pings)]
    assert pings and max(gaps) < 2.9, f"pings {[round(g, 1) for g in gaps]} during a {reload_s:.1f} s reload"
    assert states_during >= reload_s / 0.5 / 3, f"{states_during} state messages during a {reload_s:.1f} s reload"
