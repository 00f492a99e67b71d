"""On a Raspberry Pi: under-voltage and throttling, and the SoC temperature.

The firmware's throttle flags (Raspberry Pi documentation, `vcgencmd get_throttled`): bit 0
under-voltage now, 1 ARM frequency capped now, 2 throttled now, 3 soft temperature limit now;
bits 16-19 the same "has occurred since boot". Read from the Pi kernel's
/sys/devices/platform/soc/soc:firmware/get_throttled (no privileges), else `vcgencmd
get_throttled` (needs the video group); the upstream kernel's rpi_volt hwmon
(Documentation/hwmon/raspberrypi-hwmon.rst) gives in0_lcrit_alarm for under-voltage.
Temperature: /sys/class/thermal/thermal_zone*/temp in millidegrees (Documentation/driver-api/
thermal/sysfs-api.rst).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

from edge_agent.doctor.context import DoctorContext
from edge_agent.doctor.result import Check, ok, skip, warn
from edge_agent.doctor.system import is_raspberry_pi

AREA = "pi-health"
FLAGS = {0: "under-voltage now", 1: "ARM frequency capped now", 2: "throttled now", 3: "soft temperature limit now",
         16: "under-voltage since boot", 17: "frequency capped since boot", 18: "throttled since boot",
         19: "soft temperature limit since boot"}
UNDER_VOLTAGE = (1 << 0) | (1 << 16)
HOT_C = 80.0  # the firmware starts throttling at 80-85 °C
THROTTLED_FILES = ("/sys/devices/platform/soc/soc:firmware/get_throttled",)


def parse_throttled(text: str) -> int | None:
    """The flags from "throttled=0x50005" (vcgencmd) or "50005" (sysfs, hex without 0x)."""
    value = text.strip().rpartition("=")[2]
    try:
        return int(value, 16)
    except ValueError:
        return None


def throttled_flags(ctx: DoctorContext) -> tuple[int | None, str]:
    for path in THROTTLED_FILES:
        text = ctx.read_text(path)
        if text is not None and parse_throttled(text) is not None:
            return parse_throttled(text), path
    if ctx.live and shutil.which("vcgencmd"):
        try:
            result = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=ctx.timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            return None, ""
        if result.returncode == 0 and parse_throttled(result.stdout) is not None:
            return parse_throttled(result.stdout), "vcgencmd get_throttled"
    for folder in glob.glob(str(ctx.path("/sys/class/hwmon/hwmon*"))):
        rel = "/sys/class/hwmon/" + os.path.basename(folder)
        if (ctx.read_text(rel + "/name") or "").strip() == "rpi_volt":
            alarm = (ctx.read_text(rel + "/in0_lcrit_alarm") or "").strip()
            if alarm in ("0", "1"):
                return (1 if alarm == "1" else 0), f"{rel}/in0_lcrit_alarm"
    return None, ""


def soc_temperature(ctx: DoctorContext) -> tuple[float | None, str]:
    for folder in sorted(glob.glob(str(ctx.path("/sys/class/thermal/thermal_zone*")))):
        rel = "/sys/class/thermal/" + os.path.basename(folder)
        text = (ctx.read_text(rel + "/temp") or "").strip()
        if text.lstrip("-").isdigit():
            return int(text) / 1000, (ctx.read_text(rel + "/type") or "").strip() or rel
    return None, ""


def check_pi_health(ctx: DoctorContext) -> list[Check]:
    if not is_raspberry_pi(ctx):
        return [skip(AREA, "pi", "not a Raspberry Pi: no under-voltage or throttling flags to read")]
    checks = []
    flags, source = throttled_flags(ctx)
    if flags is None:
        checks.append(skip(AREA, "throttled", "no throttle flags readable (no get_throttled in sysfs, vcgencmd or rpi_volt)"))
    elif flags == 0:
        checks.append(ok(AREA, "throttled", f"no under-voltage or throttling since boot ({source})", flags=0))
    else:
        names = [text for bit, text in FLAGS.items() if flags & (1 << bit)]
        fix = ("use the official power supply (5 V 3 A for a Pi 4, 5 V 5 A for a Pi 5) and a short, thick cable; "
               "a Coral on USB adds up to 900 mA: give it a powered hub") if flags & UNDER_VOLTAGE else (
               "improve cooling (heatsink or fan): throttling slows inference")
        checks.append(warn(AREA, "throttled", f"0x{flags:x}: {', '.join(names)} ({source})", fix, flags=flags))
    temperature, zone = soc_temperature(ctx)
    if temperature is None:
        checks.append(skip(AREA, "temperature", "no thermal zone to read"))
    elif temperature >= HOT_C:
        checks.append(warn(AREA, "temperature", f"SoC at {temperature:.1f} °C ({zone}): the firmware throttles from 80-85 °C",
                           "add a heatsink or fan, and give the case air", celsius=temperature))
    else:
        checks.append(ok(AREA, "temperature", f"SoC at {temperature:.1f} °C ({zone})", celsius=temperature))
    return checks
