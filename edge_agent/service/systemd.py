"""systemd's notify protocol (sd_notify) and a watchdog that only pings while the work is alive.

No libsystemd: the protocol is one AF_UNIX datagram of `KEY=value` lines sent to the socket named
by $NOTIFY_SOCKET. Outside systemd (no $NOTIFY_SOCKET) every call is a silent no-op, so the agent
calls these unconditionally. A notification that cannot be sent is logged once and never raised:
systemd being away must not take the daemon down.

Usage from the agent's main loop (every ~0.2 s):

    notifier = Notifier.from_environment()
    watchdog = Watchdog(notifier)
    ...
    if first inference done: notifier.ready("2 pipelines running")   # idempotent
    watchdog.tick({"front_door capture": ..., "front_door inference": ...}, "front_door 9.8 fps")
    ...
    notifier.stopping("stopping")
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping

logger = logging.getLogger(__name__)

# A blocked notify socket (systemd frozen, a test receiver that never reads) must not stall the
# agent's main loop; systemd reads its socket in microseconds, so one second is generous.
SEND_TIMEOUT_S = 1.0
# STATUS= is for `systemctl status`; more often than this only fills systemd's queue.
STATUS_MIN_INTERVAL_S = 2.0


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET; a no-op when systemd did not ask for them."""

    def __init__(self, address: str = "", watchdog_usec: int = 0):
        self.address = address  # as in $NOTIFY_SOCKET: "/run/systemd/notify" or "@abstract"
        self.watchdog_usec = watchdog_usec  # 0: no watchdog
        self._socket: socket.socket | None = None
        self._send_failing = False
        self._ready_sent = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> "Notifier":
        """Read $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID as systemd sets them for the service."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address and not (address.startswith("/") or address.startswith("@")):
            # systemd ≥ 254 may also pass "vsock:CID:PORT" (for VMs); a board never needs it.
            logger.warning("NOTIFY_SOCKET=%s is not a path or an abstract socket (@name); "
                           "not notifying systemd", address)
            address = ""
        return cls(address, _watchdog_usec(env, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    @property
    def watchdog_enabled(self) -> bool:
        return self.enabled and self.watchdog_usec > 0

    @property
    def watchdog_timeout_s(self) -> float:
        """systemd's WatchdogSec= in seconds (0 when there is no watchdog)."""
        return self.watchdog_usec / 1e6 if self.watchdog_enabled else 0.0

    @property
    def watchdog_interval_s(self) -> float:
        """How often to send WATCHDOG=1: half the timeout, as sd_watchdog_enabled(3) recommends."""
        return self.watchdog_timeout_s / 2

    def notify(self, *fields: str) -> bool:
        """Send one datagram of `KEY=value` fields; True when it was sent (False also when disabled)."""
        if not self.address:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.settimeout(SEND_TIMEOUT_S)
            self._socket.sendto(message, _socket_address(self.address))
        except OSError as err:
            if not self._send_failing:
                self._send_failing = True
                logger.warning("cannot notify systemd at %s: %s (the service manager may restart the agent "
                               "if it waits for READY or watchdog pings)", self.address, err.strerror or err)
            return False
        if self._send_failing:
            self._send_failing = False
            logger.info("notifying systemd at %s works again", self.address)
        return True

    def ready(self, status: str = "") -> bool:
        """READY=1 (start-up finished); sent once, until reloading() starts a new round."""
        if self._ready_sent:
            return False
        sent = self.notify("READY=1", *_status_field(status))
        self._ready_sent = sent or not self.enabled
        return sent

    def status(self, text: str) -> bool:
        """STATUS=text, shown by `systemctl status`."""
        return self.notify(*_status_field(text))

    def watchdog(self) -> bool:
        """WATCHDOG=1: keep-alive ping for WatchdogSec=."""
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str = "") -> bool:
        """RELOADING=1 with MONOTONIC_USEC (which Type=notify-reload needs); call ready() when done."""
        self._ready_sent = False
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", *_status_field(status))

    def stopping(self, status: str = "") -> bool:
        """STOPPING=1: shutdown has begun (systemd then waits up to TimeoutStopSec=)."""
        return self.notify("STOPPING=1", *_status_field(status))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class Watchdog:
    """Decides, on each tick, whether the agent is alive enough to ping systemd's watchdog.

    `heartbeats` maps a name (a pipeline's loop: "front_door capture", "front_door inference")
    to the monotonic time that loop last went round. Pings go out every `notifier.watchdog_interval_s` only while every heartbeat is
    younger than `max_age_s` (default: the whole WatchdogSec=). A hung stage stops the pings
    and systemd kills and restarts the agent within WatchdogSec= after the last one. An empty
    mapping still pings: the main loop itself is calling, and nothing else must be alive.
    """

    def __init__(self, notifier: Notifier, max_age_s: float | None = None):
        self.notifier = notifier
        self.max_age_s = notifier.watchdog_timeout_s if max_age_s is None else max_age_s
        self.stale: list[str] = []  # names whose heartbeat was too old at the last tick
        self.pings = 0
        self._last_ping_mono = float("-inf")
        self._last_status = ""
        self._last_status_mono = float("-inf")

    def tick(self, heartbeats: Mapping[str, float], status: str = "") -> bool:
        """Ping when due and every heartbeat is fresh; send `status` when it changed. True when pinged."""
        now = time.monotonic()
        fields = []
        if self.notifier.watchdog_enabled:
            self._check(heartbeats, now)
            if not self.stale and now - self._last_ping_mono >= self.notifier.watchdog_interval_s:
                fields.append("WATCHDOG=1")
        if status and status != self._last_status and now - self._last_status_mono >= STATUS_MIN_INTERVAL_S:
            fields += _status_field(status)
        if not fields or not self.notifier.notify(*fields):
            return False
        if any(f.startswith("STATUS=") for f in fields):
            self._last_status, self._last_status_mono = status, now
        if fields[0] == "WATCHDOG=1":
            self._last_ping_mono = now
            self.pings += 1
            return True
        return False

    def _check(self, heartbeats: Mapping[str, float], now: float) -> None:
        stale = sorted(name for name, beat in heartbeats.items() if now - beat > self.max_age_s)
        newly = [name for name in stale if name not in self.stale]
        if newly:
            ages = ", ".join(f"{name} {now - heartbeats[name]:.0f} s" for name in newly)
            logger.error("no heartbeat from %s (limit %.0f s): stopping watchdog pings, so systemd "
                         "restarts the agent", ages, self.max_age_s)
        elif self.stale and not stale:
            logger.warning("every heartbeat is fresh again: watchdog pings resume")
        self.stale = stale


def _watchdog_usec(env: Mapping[str, str], pid: int) -> int:
    """WATCHDOG_USEC when it is meant for `pid`: WATCHDOG_PID, when set, must be our pid."""
    text = env.get("WATCHDOG_USEC", "")
    if not text:
        return 0
    try:
        usec = int(text)
    except ValueError:
        logger.warning("WATCHDOG_USEC=%r is not a number of microseconds; watchdog disabled", text)
        return 0
    watchdog_pid = env.get("WATCHDOG_PID", "")
    # A missing WATCHDOG_PID means "this process", as sd_watchdog_enabled(3) documents; a set one
    # that differs was inherited from a parent service and is not ours to answer.
    if watchdog_pid and watchdog_pid != str(pid):
        logger.debug("WATCHDOG_PID=%s is not this process (%d); watchdog disabled", watchdog_pid, pid)
        return 0
    return max(usec, 0)


def _socket_address(address: str) -> str | bytes:
    # "@name" is Linux's abstract namespace: a leading NUL byte instead of the "@".
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    return address


def _status_field(text: str) -> list[str]:
    # One line: a newline would start a new KEY=value field in the datagram.
    return [f"STATUS={' '.join(text.split())}"] if text else []
