"""What a /dev/videoN node is, from the three places that say it.

- sysfs, readable by anyone: /sys/class/video4linux/videoN/{name,index,dev} and the driver behind
  `device/driver` (drivers/media/v4l2-core/v4l2-dev.c). It names the node, not what it can do.
- udev's database, readable by anyone: /run/udev/data/c81:N holds ID_V4L_CAPABILITIES (":capture:",
  or "::" for a metadata node), written by udev's v4l_id when the node appeared. v4l_id counts
  single- and multi-planar capture as "capture" and ignores metadata and mem-to-mem bits.
- VIDIOC_QUERYCAP on the node itself (include/uapi/linux/videodev2.h): exact, but it needs read
  access (the video group), and a wedged driver can block in open(): the doctor runs it in its
  child process (probe.py) with a timeout.
"""

from __future__ import annotations

import fcntl
import os
import struct

CAP_VIDEO_CAPTURE = 0x00000001
CAP_VIDEO_OUTPUT = 0x00000002
CAP_VIDEO_CAPTURE_MPLANE = 0x00001000
CAP_VIDEO_OUTPUT_MPLANE = 0x00002000
CAP_VIDEO_M2M_MPLANE = 0x00004000
CAP_VIDEO_M2M = 0x00008000
CAP_META_CAPTURE = 0x00800000
CAP_STREAMING = 0x04000000
CAP_DEVICE_CAPS = 0x80000000

# struct v4l2_capability: driver[16], card[32], bus_info[32], version, capabilities, device_caps, reserved[3]
_CAPABILITY = struct.Struct("16s32s32sIII3I")
VIDIOC_QUERYCAP = (2 << 30) | (_CAPABILITY.size << 16) | (ord("V") << 8) | 0  # _IOR('V', 0, struct v4l2_capability)

# Drivers of the Raspberry Pi camera stack: their capture nodes carry raw sensor data that only
# libcamera turns into images (Picamera2); the others are the ISP and codecs, not cameras.
LIBCAMERA_CAPTURE_DRIVERS = ("unicam", "rp1-cfe")
PI_MEMORY_TO_MEMORY_DRIVERS = ("bcm2835-codec", "bcm2835-isp", "pispbe", "rpivid", "rpi-hevc-dec")

KINDS = ("capture", "metadata", "m2m", "output", "other")


def classify(capabilities: int) -> str:
    """capture (a camera), metadata (UVC's second node), m2m (a codec or ISP), output or other."""
    capture = capabilities & (CAP_VIDEO_CAPTURE | CAP_VIDEO_CAPTURE_MPLANE)
    output = capabilities & (CAP_VIDEO_OUTPUT | CAP_VIDEO_OUTPUT_MPLANE)
    if capabilities & (CAP_VIDEO_M2M | CAP_VIDEO_M2M_MPLANE) or (capture and output):
        return "m2m"
    if capture:
        return "capture"
    if capabilities & CAP_META_CAPTURE:
        return "metadata"
    return "output" if output else "other"


def query_capabilities(path: str) -> dict:
    """VIDIOC_QUERYCAP on `path`: driver, card, bus and the node's own capabilities (or an error)."""
    try:
        fd = os.open(path, os.O_RDONLY)  # as udev's v4l_id does; may block on a wedged driver
    except OSError as err:
        return {"error": f"open: {err.strerror}", "errno": err.errno}
    try:
        buffer = bytearray(_CAPABILITY.size)
        fcntl.ioctl(fd, VIDIOC_QUERYCAP, buffer)
    except OSError as err:
        return {"error": f"VIDIOC_QUERYCAP: {err.strerror} (not a V4L2 device?)", "errno": err.errno}
    finally:
        os.close(fd)
    driver, card, bus, _, capabilities, device_caps, *_ = _CAPABILITY.unpack(bytes(buffer))
    caps = device_caps if capabilities & CAP_DEVICE_CAPS else capabilities
    return {"driver": _text(driver), "card": _text(card), "bus_info": _text(bus),
            "capabilities": caps, "kind": classify(caps)}


def kind_from_udev(capabilities: str) -> str:
    """The kind udev's ID_V4L_CAPABILITIES implies: ":capture:" is a camera; "::" is not one."""
    names = {part for part in capabilities.split(":") if part}
    if "capture" in names and "video_output" in names:
        return "m2m"
    if "capture" in names:
        return "capture"
    return "output" if "video_output" in names else "not-capture"


def parse_udev_record(text: str) -> dict[str, str]:
    """The E: (environment) lines of a udev database record as a dict."""
    values = {}
    for line in text.splitlines():
        if line.startswith("E:") and "=" in line:
            key, _, value = line[2:].partition("=")
            values[key] = value
    return values


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
