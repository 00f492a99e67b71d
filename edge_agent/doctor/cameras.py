"""Cameras: the V4L2 nodes and what each one is, libcamera's cameras (through Picamera2), and
whether each configured source opens, with the timeouts the agent uses."""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from edge_agent.doctor.context import DoctorContext
from edge_agent.doctor.probe import STARTUP_ALLOWANCE_S, run_probe
from edge_agent.doctor.result import Check, fail, info, ok, problem, skip
from edge_agent.doctor.v4l2 import LIBCAMERA_CAPTURE_DRIVERS, PI_MEMORY_TO_MEMORY_DRIVERS, kind_from_udev, parse_udev_record
from edge_agent.sources.spec import source_kind

AREA = "cameras"
KIND_TEXT = {"capture": "a capture node (a camera)", "metadata": "a metadata node (not a camera: UVC's second node)",
             "m2m": "a codec/ISP node (not a camera)", "output": "an output node (not a camera)",
             "not-capture": "not a capture node (metadata or codec)", "other": "not a camera", "": "kind unknown"}


@dataclass(frozen=True)
class VideoNode:
    name: str       # video0
    node: Path      # /dev/video0 under the root
    label: str      # sysfs name: the card ("HD Pro Webcam C920", "unicam-image")
    index: int      # sysfs index: 0 for a UVC camera's capture node, 1 for its metadata node
    driver: str     # uvcvideo, unicam, rp1-cfe, bcm2835-codec ...
    kind: str       # capture, metadata, m2m, output, other, not-capture, "" (unknown)
    source: str     # where `kind` comes from: querycap, udev, driver, ""
    error: str = ""  # why QUERYCAP could not be asked


def video_nodes(ctx: DoctorContext, query: bool = True) -> list[VideoNode]:
    """Every /sys/class/video4linux/video* node, its kind from QUERYCAP (in the probe child, bounded),
    else udev's database, else the driver's name."""
    nodes = []
    for folder in sorted(glob.glob(str(ctx.path("/sys/class/video4linux/video*"))), key=_number):
        name = os.path.basename(folder)
        rel = f"/sys/class/video4linux/{name}"
        label = (ctx.read_text(rel + "/name") or "").strip()
        index = int((ctx.read_text(rel + "/index") or "0").strip() or 0)
        driver_link = Path(folder) / "device" / "driver"
        driver = os.path.basename(os.readlink(driver_link)) if driver_link.is_symlink() else ""
        kind, source = "", ""
        dev = (ctx.read_text(rel + "/dev") or "").strip()  # "81:0"
        record = parse_udev_record(ctx.read_text(f"/run/udev/data/c{dev}") or "") if dev else {}
        if "ID_V4L_CAPABILITIES" in record:
            kind, source = kind_from_udev(record["ID_V4L_CAPABILITIES"]), "udev"
        if driver in PI_MEMORY_TO_MEMORY_DRIVERS:
            kind, source = "m2m", "driver"
        nodes.append(VideoNode(name, ctx.path(f"/dev/{name}"), label, index, driver, kind, source))
    if query and nodes:
        nodes = _with_querycap(ctx, nodes)
    return nodes


def _with_querycap(ctx: DoctorContext, nodes: list[VideoNode]) -> list[VideoNode]:
    present = [n for n in nodes if n.node.exists()]
    if not present:
        return nodes
    result = run_probe({"probe": "querycap", "paths": [str(n.node) for n in present]}, ctx.timeout_s + STARTUP_ALLOWANCE_S)
    if result.status != "ok":
        reason = f"VIDIOC_QUERYCAP did not answer: {result.error or result.status}" + (
            " (a driver that blocks in open(): unplug and replug the camera)" if result.status == "timeout" else "")
        return [dataclasses.replace(n, error=reason) if n in present else n for n in nodes]
    answers = result.data.get("nodes", {})
    updated = []
    for node in nodes:
        answer = answers.get(str(node.node))
        if answer and "kind" in answer:
            node = dataclasses.replace(node, kind=answer["kind"], source="querycap", driver=answer["driver"] or node.driver,
                                       label=answer["card"] or node.label)
        elif answer:
            node = dataclasses.replace(node, error=answer.get("error", ""))
        updated.append(node)
    return updated


def _number(path: str) -> int:
    digits = "".join(c for c in os.path.basename(path) if c.isdigit())
    return int(digits or 0)


def check_cameras(ctx: DoctorContext) -> list[Check]:
    nodes = video_nodes(ctx)
    checks = []
    for node in nodes:
        what = KIND_TEXT.get(node.kind, node.kind)
        text = f"/dev/{node.name}: {node.label or '?'} ({node.driver or 'driver unknown'}), {what}"
        if node.source:
            text += f" [from {node.source}]"
        if node.error and node.source != "querycap":
            text += f"; {node.error}"
        if node.driver in LIBCAMERA_CAPTURE_DRIVERS:
            text += "; a CSI camera on the libcamera stack: use source = \"picamera2\""
        checks.append(info(AREA, node.name, text, node=str(node.node), label=node.label, driver=node.driver,
                           kind=node.kind, kind_from=node.source, error=node.error))
    if not nodes:
        checks.append(info(AREA, "v4l2", "no /dev/video* nodes"))
    checks += _picamera_check(ctx)
    checks += [_source_check(ctx, pipeline, nodes) for pipeline in ctx.pipelines]
    return checks


def _picamera_check(ctx: DoctorContext) -> list[Check]:
    wanted = [p for p in ctx.pipelines if source_kind(p.source) == "picamera2"]
    if importlib.util.find_spec("picamera2") is None:
        if wanted:
            return []  # the source check below names the fix
        return [skip(AREA, "libcamera", "Picamera2 is not installed: CSI cameras not listed")]
    result = run_probe({"probe": "picamera"}, ctx.timeout_s + STARTUP_ALLOWANCE_S)
    if result.status != "ok":
        return [problem(AREA, "libcamera", bool(wanted), f"Picamera2 could not list cameras: {result.error or result.status}",
                        "check `rpicam-hello --list-cameras`; the user needs the video group")]
    cameras = result.data.get("cameras", [])
    if not cameras:
        return [problem(AREA, "libcamera", bool(wanted), "libcamera sees no camera",
                        "check the ribbon cable (contacts facing the right way) and `rpicam-hello --list-cameras`")]
    listed = "; ".join(f"{i}: {c.get('Model', '?')} at {c.get('Id', '?')}" for i, c in enumerate(cameras))
    return [ok(AREA, "libcamera", f"libcamera cameras: {listed}", cameras=cameras)]


def _source_check(ctx: DoctorContext, pipeline, nodes: list[VideoNode]) -> Check:
    spec = pipeline.source
    kind = source_kind(spec)
    name = f"source-{pipeline.name}"
    if kind in ("camera", "v4l2"):
        device = f"/dev/video{spec.uri.strip()}" if kind == "camera" else spec.uri.strip()
        node = next((n for n in nodes if f"/dev/{n.name}" == device), None)
        if node is None:
            return fail(AREA, name, f"pipeline {pipeline.name}: {device} does not exist",
                        "plug the camera in and check `v4l2-ctl --list-devices`; a Pi CSI camera needs source = \"picamera2\"")
        if node.kind and node.kind != "capture":
            capture = [f"/dev/{n.name}" for n in nodes if n.kind == "capture" and n.driver == node.driver]
            return fail(AREA, name, f"pipeline {pipeline.name}: {device} is {KIND_TEXT.get(node.kind, node.kind)}",
                        f"use {' or '.join(capture)} instead" if capture else "use the camera's capture node")
        if node.driver in LIBCAMERA_CAPTURE_DRIVERS:
            return fail(AREA, name, f"pipeline {pipeline.name}: {device} is a CSI camera's raw node ({node.driver})",
                        'use source = "picamera2" (OpenCV cannot read the libcamera stack)')
    if kind == "picamera2" and importlib.util.find_spec("picamera2") is None:
        return fail(AREA, name, f"pipeline {pipeline.name}: source = \"{spec.uri}\" but Picamera2 is not installed",
                    "sudo apt install python3-picamera2, then re-run deploy/install.sh (it gives the venv system site-packages)")
    if not ctx.live:
        return skip(AREA, name, f"pipeline {pipeline.name}: opening {kind} sources is tried on the board itself (--root is set)")
    timeout = spec.open_timeout_s + spec.read_timeout_s + STARTUP_ALLOWANCE_S
    request = {"probe": "source", "spec": {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}}
    result = run_probe(request, timeout)
    shown = _shown(spec.uri)
    if result.status == "ok":
        shape = result.data.get("shape", [])
        size = f"{shape[1]}x{shape[0]}" if len(shape) >= 2 else "?"
        return ok(AREA, name, f"pipeline {pipeline.name}: {kind} {shown} opens and delivers frames ({size}, first frame "
                              f"in {result.data.get('seconds', 0):.2f} s)")
    if result.status == "timeout":
        return fail(AREA, name, f"pipeline {pipeline.name}: {kind} {shown} did not open or deliver a frame within "
                                f"{timeout:g} s (open_timeout_s {spec.open_timeout_s:g} + read_timeout_s {spec.read_timeout_s:g})",
                    "check that the camera or stream answers (and is not held by another program, e.g. the running service)")
    return fail(AREA, name, f"pipeline {pipeline.name}: {kind} {shown} does not open: {result.error}",
                "see the source's message; the agent itself retries a lost camera every 2 s")


def _shown(uri: str) -> str:
    from edge_agent.sources import redact_url

    return redact_url(uri)
