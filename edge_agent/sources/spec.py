"""How a source string is recognised: camera index, device, URL, pipeline, folder, image or file."""

from __future__ import annotations

import re
from pathlib import Path

from edge_agent.config import PICAMERA_PATTERN, SourceSpec, uri_kind
from edge_agent.errors import EdgeAgentError

LIVE_KINDS = frozenset({"camera", "v4l2", "stream", "gstreamer", "picamera2"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})
# FFmpeg splits user:password@host at the LAST "@" of the authority, so a raw "@" in a password
# works for the camera; redact up to that same "@" or part of the password would reach the logs.
_USERINFO_PASSWORD = re.compile(r"(://[^:/?#@]*:)[^/?#]*@")
# Secrets by name: query parameters of HTTP cameras and streaming services (…/video.cgi?pwd=secret,
# …?token=…, …?access_token=…) and properties of GStreamer elements (rtspsrc user-pw=…, proxy-pw=…).
_SECRET_NAMES = (r"password|passwd|pass|pwd|passphrase|token|access_token|refresh_token|id_token|auth|"
                 r"authorization|auth_token|api_key|apikey|key|secret|client_secret|sig|signature|"
                 r"user-pw|user_pw|proxy-pw|proxy_pw|credentials?")
_QUERY_PASSWORD = re.compile(rf"([?&;](?:{_SECRET_NAMES})=)[^&;#\s]*", re.IGNORECASE)
# GStreamer: NAME=value, NAME="quoted value" or NAME='quoted', up to the next space or '!'
_PROPERTY_SECRET = re.compile(rf"(?<![\w./?&;-])((?:{_SECRET_NAMES})\s*=\s*)(\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s!]+)",
                              re.IGNORECASE)


class SourceError(EdgeAgentError, RuntimeError):
    """A source could not be opened or stopped delivering frames."""


def source_kind(spec: SourceSpec) -> str:
    """The spec's kind, recognised from its URI when the kind is "auto"."""
    return spec.kind if spec.kind != "auto" else detect_kind(spec.uri)


def is_live(spec: SourceSpec) -> bool:
    """Live sources (cameras, streams) drop old frames and reconnect; files end."""
    return source_kind(spec) in LIVE_KINDS


def detect_kind(uri: str) -> str:
    """Recognise a source string: camera index, /dev/video*, URL, pipeline, folder, image, video file."""
    text = uri.strip()
    kind = uri_kind(text)  # camera index, picamera2, stream URL, GStreamer pipeline, /dev/ device
    if kind is not None:
        return kind
    path = Path(text)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    return "file"


def picamera_index(uri: str) -> int:
    match = PICAMERA_PATTERN.match(uri.strip())
    return int(match.group(2)) if match and match.group(2) else 0


def redact_url(uri: str) -> str:
    """The source with every secret removed, for logs and the state topic: passwords in the authority
    (rtsp://user:secret@cam → rtsp://user:***@cam), secret query parameters (?token=…, &pwd=…) and
    secret GStreamer properties (user-pw=…, proxy-pw=…)."""
    uri = _USERINFO_PASSWORD.sub(r"\1***@", uri)
    uri = _QUERY_PASSWORD.sub(r"\1***", uri)
    return _PROPERTY_SECRET.sub(r"\1***", uri)
