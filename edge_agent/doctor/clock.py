"""Is the clock right? Every payload's `ts` is this clock; a Pi has no battery-backed clock and
boots with the time it shut down at until NTP (systemd-timesyncd) corrects it.

The kernel's own answer, with no privileges: adjtimex(2) with modes = 0 only reads. It returns
TIME_ERROR (5) and sets STA_UNSYNC while no time daemon has synchronised the clock; timedatectl's
"NTPSynchronized" is the same bit seen through systemd.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess
import time

from edge_agent.doctor.context import DoctorContext
from edge_agent.doctor.result import Check, ok, problem, skip, warn

AREA = "clock"
TIME_ERROR = 5
STA_UNSYNC = 0x0040
EARLIEST_PLAUSIBLE = time.mktime((2025, 1, 1, 0, 0, 0, 0, 0, -1))  # older than this release: not synchronised


class Timex(ctypes.Structure):
    """struct timex (include/uapi/linux/timex.h) up to `status`, then room for the rest."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_rest", ctypes.c_byte * 256)]


def kernel_clock_state() -> tuple[bool, int] | None:
    """(synchronised, maxerror in µs) from adjtimex, or None where it cannot be asked."""
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        timex = Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR and not timex.status & STA_UNSYNC, int(timex.maxerror)


def timedatectl_synchronised(timeout_s: float) -> bool | None:
    if shutil.which("timedatectl") is None:
        return None
    try:
        result = subprocess.run(["timedatectl", "show", "--property=NTPSynchronized", "--value"],
                                capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = result.stdout.strip()
    return {"yes": True, "no": False}.get(value)


def check_clock(ctx: DoctorContext) -> list[Check]:
    needed = ctx.needs_mqtt()
    kernel = kernel_clock_state()
    systemd = timedatectl_synchronised(ctx.timeout_s)
    now = time.time()
    details = {"kernel_synchronised": kernel[0] if kernel else None, "maxerror_us": kernel[1] if kernel else None,
               "timedatectl": systemd, "now": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    fix = ("enable NTP: sudo timedatectl set-ntp true (systemd-timesyncd), and check the board reaches an NTP server "
           "(UDP 123); `timedatectl timesync-status` shows it")
    if now < EARLIEST_PLAUSIBLE:
        return [problem(AREA, "clock", needed, f"the clock says {details['now']}: it has not been set since boot", fix, **details)]
    synchronised = kernel[0] if kernel else systemd
    if synchronised is None:
        return [skip(AREA, "clock", f"cannot ask whether the clock is synchronised here (now {details['now']})", **details)]
    if not synchronised:
        # plausible but not confirmed by NTP: payloads still flow, their ts may drift (a warning, not a failure)
        return [warn(AREA, "clock", f"the clock ({details['now']}) is not synchronised by NTP: every payload's ts "
                                    "depends on it", fix, **details)]
    error = f", within {kernel[1] / 1000:.0f} ms" if kernel and kernel[1] < 16_000_000 else ""
    return [ok(AREA, "clock", f"the clock is NTP-synchronised ({details['now']}{error})", **details)]
