"""The service user's groups against the device nodes the config needs (passwd(5), group(5) under
the root: what the service will have, not what the person running the doctor has)."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from edge_agent.doctor.context import DoctorContext
from edge_agent.doctor.edgetpu import apex_nodes, group_name, usb_corals, wanted_buses
from edge_agent.doctor.result import Check, ok, problem, warn
from edge_agent.sources.spec import source_kind

AREA = "service-user"


def account(ctx: DoctorContext, name: str) -> tuple[int, int] | None:
    """(uid, primary gid) of `name` in the root's /etc/passwd."""
    for line in (ctx.read_text("/etc/passwd") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[0] == name:
            return int(parts[2]), int(parts[3])
    return None


def groups_of(ctx: DoctorContext, name: str, primary_gid: int) -> set[str]:
    groups = {group_name(ctx, primary_gid)}
    for line in (ctx.read_text("/etc/group") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and name in parts[3].split(","):
            groups.add(parts[0])
    return groups


def needed_groups(ctx: DoctorContext) -> dict[str, str]:
    """{group: why} the config needs, from the groups Debian gives these devices."""
    needed = {}
    if any(source_kind(p.source) in ("camera", "v4l2", "picamera2") for p in ctx.pipelines):
        needed["video"] = "cameras (/dev/video*, and /dev/media*, /dev/dma_heap for libcamera)"
    if ctx.needs_serial() and ctx.config.serial.port.startswith("/dev/"):
        needed["dialout"] = f"the serial port {ctx.config.serial.port}"
    buses = wanted_buses(ctx)
    if "usb" in buses:
        needed["plugdev"] = "the Coral USB Accelerator (libedgetpu's udev rule)"
    if "pci" in buses and apex_nodes(ctx):
        needed["apex"] = "the PCIe Coral (/dev/apex_*, gasket-dkms's udev rule)"
    return needed


def device_nodes(ctx: DoctorContext) -> list[tuple[Path, str]]:
    """(node, what for) of the device files the config will open."""
    nodes = []
    for pipeline in ctx.pipelines:
        kind = source_kind(pipeline.source)
        if kind in ("camera", "v4l2"):
            device = f"/dev/video{pipeline.source.uri.strip()}" if kind == "camera" else pipeline.source.uri.strip()
            nodes.append((ctx.path(device), f"pipeline {pipeline.name}'s camera"))
    if ctx.needs_serial() and ctx.config.serial.port.startswith("/dev/"):
        nodes.append((ctx.path(ctx.config.serial.port), "the serial sink"))
    buses = wanted_buses(ctx)
    if "usb" in buses:
        nodes += [(coral.node, "the Coral") for coral in usb_corals(ctx)]
    if "pci" in buses:
        nodes += [(node, "the PCIe Coral") for node in apex_nodes(ctx)]
    return nodes


def can_open(ctx: DoctorContext, node: Path, uid: int, groups: set[str]) -> bool | None:
    """Read and write access for uid/groups by the node's owner, group and mode (None: no such node)."""
    try:
        st = node.stat()
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if uid == 0:
        return True
    if st.st_uid == uid:
        return mode & 0o600 == 0o600
    if group_name(ctx, st.st_gid) in groups:
        return mode & 0o060 == 0o060
    return mode & 0o006 == 0o006


def _node_group(ctx: DoctorContext, node: Path) -> str:
    try:
        return group_name(ctx, node.stat().st_gid)
    except OSError:
        return ""


def check_service_user(ctx: DoctorContext) -> list[Check]:
    needed = needed_groups(ctx)
    user = ctx.service_user
    found = account(ctx, user)
    if found is None:
        checks = [warn(AREA, "user", f"no user {user} in {ctx.path('/etc/passwd')}: the service is not installed here",
                       "sudo bash deploy/install.sh creates it (in the groups video, dialout, plugdev)")]
        if ctx.live and os.getuid() != 0:
            me = pwd.getpwuid(os.getuid())
            checks += _groups_checks(ctx, me.pw_name, os.getuid(), groups_of(ctx, me.pw_name, me.pw_gid), needed,
                                     "you (running `edge-agent run` by hand)")
        return checks
    uid, gid = found
    return _groups_checks(ctx, user, uid, groups_of(ctx, user, gid), needed, f"user {user}")


def _groups_checks(ctx: DoctorContext, name: str, uid: int, groups: set[str], needed: dict[str, str], who: str) -> list[Check]:
    checks = []
    missing = {g: why for g, why in needed.items() if g not in groups}
    if missing:
        for group, why in missing.items():
            checks.append(problem(AREA, f"group-{group}", True, f"{who} is not in group {group}, needed for {why}",
                                  f"sudo usermod -aG {group} {name}, then sudo systemctl restart edge-agent"))
    else:
        listed = ", ".join(sorted(needed)) or "none needed by the config"
        checks.append(ok(AREA, "groups", f"{who} is in {', '.join(sorted(groups))} ({listed})", groups=sorted(groups)))
    for node, purpose in device_nodes(ctx):
        access = can_open(ctx, node, uid, groups)
        if access is False and _node_group(ctx, node) not in missing:  # a missing group is said once, above
            try:
                st = node.stat()
                owner = f"group {group_name(ctx, st.st_gid)}, mode {stat.S_IMODE(st.st_mode):o}"
            except OSError:
                owner = "?"
            checks.append(problem(AREA, f"access-{node.name}", True, f"{who} cannot open {node} ({purpose}; {owner})",
                                  f"add {name} to that group (sudo usermod -aG GROUP {name}) or fix the udev rule"))
    return checks
