"""The board and its OS: model, architecture (of the kernel and of this Python), Python, glibc."""

from __future__ import annotations

import os
import platform
import struct
import sys
import sysconfig

from edge_agent.doctor.context import DoctorContext
from edge_agent.doctor.result import Check, fail, info, ok, warn

AREA = "system"
MIN_PYTHON = (3, 11)
TFLITE_RUNTIME_GLIBC = (2, 34)  # tflite-runtime 2.14's wheels are manylinux_2_34
ELF_MACHINES = {3: "i386", 40: "armv7l", 62: "x86_64", 183: "aarch64", 243: "riscv64"}
WHEEL_MACHINE = {("aarch64", 64): "aarch64", ("armv7l", 32): "armv7l", ("aarch64", 32): "armv7l",
                 ("armv8l", 32): "armv7l", ("x86_64", 64): "x86_64"}


def board_model(ctx: DoctorContext) -> str:
    """The device tree's model ("Raspberry Pi 4 Model B Rev 1.4"), else /proc/cpuinfo's Model, else ""."""
    model = ctx.read_text("/proc/device-tree/model") or ctx.read_text("/sys/firmware/devicetree/base/model")
    if model:
        return model.strip("\0\n ")
    for line in (ctx.read_text("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model":
            return value.strip()
    return ""


def is_raspberry_pi(ctx: DoctorContext) -> bool:
    return board_model(ctx).startswith("Raspberry Pi")


def pi_generation(ctx: DoctorContext) -> int:
    """5 for "Raspberry Pi 5 Model B", 4 for a Pi 4 or CM4, 0 when not a Pi (or not known)."""
    model = board_model(ctx)
    for generation in (5, 4, 3, 2):
        if model.startswith((f"Raspberry Pi {generation}", f"Raspberry Pi Compute Module {generation}")):
            return generation
    return 0


def os_release(ctx: DoctorContext) -> dict[str, str]:
    values = {}
    for line in (ctx.read_text("/etc/os-release") or ctx.read_text("/usr/lib/os-release") or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    return values


def interpreter_architecture(executable: str = sys.executable) -> tuple[str, int]:
    """(machine, bits) of this Python itself, from its ELF header (not from `uname -m`: a Pi 4/5
    running 32-bit Raspberry Pi OS boots a 64-bit kernel, so uname says aarch64 while every
    program, this Python included, is 32-bit armv7l)."""
    try:
        with open(os.path.realpath(executable), "rb") as handle:
            header = handle.read(20)
    except OSError:
        header = b""
    if len(header) >= 20 and header[:4] == b"\x7fELF":
        bits = 64 if header[4] == 2 else 32
        order = "<" if header[5] == 1 else ">"
        machine = struct.unpack(order + "H", header[18:20])[0]
        return ELF_MACHINES.get(machine, f"elf-machine-{machine}"), bits
    return platform.machine(), struct.calcsize("P") * 8


def wheel_machine(machine: str, bits: int) -> str:
    """The --machine a wheelhouse for this Python needs (aarch64, armv7l, x86_64)."""
    return WHEEL_MACHINE.get((machine, bits), machine)


def glibc_version() -> tuple[int, ...]:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    except (ValueError, OSError):
        text = ""
    try:
        return tuple(int(x) for x in text.split()[-1].split(".")) if text.startswith("glibc") else ()
    except ValueError:
        return ()


def check_system(ctx: DoctorContext) -> list[Check]:
    checks = []
    model = board_model(ctx)
    release = os_release(ctx)
    pi_os = ctx.path("/etc/rpi-issue").exists() or release.get("ID") == "raspbian"
    os_name = release.get("PRETTY_NAME", "unknown OS") + (" (Raspberry Pi OS)" if pi_os and "Raspbian" not in release.get("PRETTY_NAME", "") else "")
    checks.append(info(AREA, "board", f"{model or 'not a device-tree board (a PC or a VM)'}; {os_name}",
                       model=model, os=release.get("PRETTY_NAME", ""), codename=release.get("VERSION_CODENAME", ""),
                       raspberry_pi_os=pi_os))

    kernel = platform.machine()
    image_python = ctx.path("/usr/bin/python3")
    if not ctx.live and image_python.exists():  # an image's userland: its own python3 tells
        machine, bits = interpreter_architecture(str(image_python))
        kernel = f"{kernel} (this machine's)"
    else:
        machine, bits = interpreter_architecture()
    target = wheel_machine(machine, bits)
    details = {"kernel_machine": kernel, "python_machine": machine, "python_bits": bits,
               "sysconfig_platform": sysconfig.get_platform(), "wheel_machine": target}
    if kernel == "armv6l":
        checks.append(fail(AREA, "architecture",
                           "ARMv6 CPU (Raspberry Pi Zero / Zero W / Pi 1): no LiteRT or tflite-runtime wheel runs on it",
                           "use a Pi Zero 2 W, Pi 3, 4 or 5 (ARMv8); the armv7l wheels need an ARMv7 CPU or newer",
                           **details))
    elif kernel in ("aarch64", "arm64") and bits == 32:
        checks.append(info(AREA, "architecture",
                           f"64-bit kernel ({kernel}) with a 32-bit userland: this Python is {machine}, so boards "
                           f"like this need the armv7l bundle (deploy/wheelhouse.sh --machine armv7l), not the aarch64 one",
                           **details))
    else:
        checks.append(info(AREA, "architecture", f"{machine} ({bits}-bit Python, kernel {kernel}): wheelhouse "
                                                 f"--machine {target}", **details))

    version = sys.version_info[:3]
    text = ".".join(map(str, version))
    if version[:2] < MIN_PYTHON:
        checks.append(fail(AREA, "python", f"Python {text} at {sys.executable} is older than 3.11",
                           "install Python >= 3.11 (Debian 12 / Raspberry Pi OS bookworm ship 3.11)", version=text))
    else:
        checks.append(ok(AREA, "python", f"Python {text} ({sys.executable})", version=text, executable=sys.executable))

    glibc = glibc_version()
    glibc_text = ".".join(map(str, glibc)) or "unknown"
    if glibc and glibc < TFLITE_RUNTIME_GLIBC:
        checks.append(warn(AREA, "glibc", f"glibc {glibc_text}: tflite-runtime 2.14's wheels need 2.34 or newer",
                           "use LiteRT (64-bit), or upgrade to Debian 12 / Raspberry Pi OS bookworm (glibc 2.36)",
                           version=glibc_text))
    else:
        checks.append(ok(AREA, "glibc", f"glibc {glibc_text} (this Python's)", version=glibc_text))
    return checks
