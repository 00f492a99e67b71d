"""The HTTP server's request handler: one bounded request per connection, matched against the routes.

  /                               the status page (views.status_page), refreshing itself
  /pipelines/NAME/live            MJPEG (multipart/x-mixed-replace) with overlays, at most live_fps
  /pipelines/NAME/snapshot.jpg    one annotated JPEG of the next frame the pipeline processes
  /api/state                      the state topic's JSON
  /api/events                     each pipeline's recent events (what the page lists)
  /healthz                        200 while every pipeline's loops beat, 503 otherwise
  /metrics                        Prometheus exposition (views.metrics)

Bounded here, per request: request line and head at most MAX_REQUEST_LINE / MAX_HEAD_BYTES (414 /
431, closed), GET and HEAD only (405), one request per connection (HTTP/1.0), a live view that
stops being read is dropped after request_timeout_s. URLs are matched exactly against the routes
above; nothing is ever read from the file system, so no path can lead outside them. The
connections themselves (how many, TLS, shutting them at stop) are views.http_server's.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import parse_qs, quote, unquote, urlsplit

from edge_agent.errors import InputError
from edge_agent.views.access import MAX_QUERY_FIELDS, Access
from edge_agent.views.snapshots import REQUEST_FRAME_TIMEOUT_S, snapshot_jpeg
from edge_agent.views.status_page import render_page
from edge_agent.views.tap import PipelineTap

logger = logging.getLogger(__name__)

MAX_REQUEST_LINE = 8192
MAX_HEAD_BYTES = 16384  # request line and headers together
POLL_S = 0.5  # live loops look at the stop flag this often
BOUNDARY = "edgeagentframe"
LIVE_SEND_BUFFER_BYTES = 128 * 1024
LIVE_REPEAT_S = 2.0  # without new frames, a live view sends its last one again this often
SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),  # tokens travel in URLs: never to another site
    ("Content-Security-Policy", "default-src 'none'; img-src 'self'; connect-src 'self'; "
                                "style-src 'unsafe-inline'; script-src 'unsafe-inline'; frame-ancestors 'none'"),
)


class Site(Protocol):
    """What the server shows (the agent implements it: service.views)."""

    def taps(self) -> Mapping[str, PipelineTap]: ...
    def state(self) -> dict: ...
    def health(self) -> tuple[bool, dict]: ...
    def metrics_exposition(self) -> tuple[bytes, str]: ...  # exposition and its content type


class HandlerServer(Protocol):
    """What a request handler reads of the server it runs in (views.http_server's bounded server)."""

    site: Site
    access: Access
    request_timeout_s: float
    live_interval_s: float
    live_height: int
    stopping: threading.Event


class _HeadTooLarge(InputError, http.client.HTTPException):
    """A client sent a request head over MAX_HEAD_BYTES: answered 431, the connection closed."""


class _BoundedReader:
    """The connection's input, of which the request's head may use at most `limit` bytes."""

    def __init__(self, inner: Any, limit: int):
        self._inner = inner
        self._left = limit

    def readline(self, size: int = -1) -> bytes:
        allowed = self._left + 1 if size < 0 else min(size, self._left + 1)
        line = self._inner.readline(allowed)
        self._left -= len(line)
        if self._left < 0:
            raise _HeadTooLarge(f"request head larger than {MAX_HEAD_BYTES} bytes")
        return line

    def read(self, size: int = -1) -> bytes:
        return b""  # no route takes a body

    def close(self) -> None:
        self._inner.close()


class RequestHandler(BaseHTTPRequestHandler):
    server: HandlerServer
    server_version = "edge-agent"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: nothing left over to smuggle
    default_request_version = "HTTP/1.0"  # so that even an answer to garbage has a status line

    def setup(self) -> None:
        self.timeout = self.server.request_timeout_s
        super().setup()
        self.rfile = _BoundedReader(self.rfile, MAX_HEAD_BYTES)

    def handle_one_request(self) -> None:
        self.close_connection = True
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.requestline, self.request_version, self.command = "", "", ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, f"request line longer than {MAX_REQUEST_LINE} bytes")
                return
            if not self.raw_requestline or not self.parse_request():
                return  # nothing sent, or an error was answered
            if self.command not in ("GET", "HEAD"):
                self._reply(405, "only GET and HEAD are served here\n", "text/plain; charset=utf-8",
                            (("Allow", "GET, HEAD"),))
                return
            self._route()
            self.wfile.flush()
        except _HeadTooLarge as err:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, str(err))
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError) as err:
            logger.debug("HTTP client %s: %s", self.client_address[0], err)

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("HTTP %s %s", self.address_string(), format % args)

    # -- routes ---------------------------------------------------------------------------
    def _route(self) -> None:
        url = urlsplit(self.path)
        if not self.server.access.allows(self.headers.get("Authorization"), url.query):
            self._unauthorised()
            return
        try:
            segments = [unquote(segment, errors="strict") for segment in url.path.split("/")[1:]]
        except UnicodeDecodeError:
            self._reply(400, "the URL's %-escapes are not UTF-8\n", "text/plain; charset=utf-8")
            return
        token_query = _token_query(url.query) if self.server.access.needs_token else ""
        site = self.server.site
        match segments:
            case [""]:
                taps = site.taps()
                self._reply(200, render_page(site.state(), {n: list(t.recent_events) for n, t in taps.items()},
                                             token_query), "text/html; charset=utf-8")
            case ["api", "state"]:
                self._json(200, site.state())
            case ["api", "events"]:
                self._json(200, {name: list(tap.recent_events) for name, tap in site.taps().items()})
            case ["healthz"]:
                ok, details = site.health()
                self._json(200 if ok else 503, details)
            case ["metrics"]:
                body, content_type = site.metrics_exposition()
                self._reply(200, body, content_type)
            case ["pipelines", name, "live" | "snapshot.jpg" as what]:
                tap = site.taps().get(name)
                if tap is None:
                    self._unknown_pipeline(name)
                elif what == "live":
                    self._live(tap)
                else:
                    self._snapshot(tap)
            case _:
                self._reply(404, f"not found; the pages here are /, /pipelines/NAME/live, "
                                 f"/pipelines/NAME/snapshot.jpg, /api/state, /api/events, /healthz, /metrics\n",
                            "text/plain; charset=utf-8")

    def _unauthorised(self) -> None:
        body = b"unauthorised: send the token as 'Authorization: Bearer TOKEN' or ?token=TOKEN\n"
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Bearer realm="edge-agent"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _unknown_pipeline(self, name: str) -> None:
        names = ", ".join(sorted(self.server.site.taps())) or "none"
        self._reply(404, f"no pipeline {name[:100]!r} here; the pipelines are: {names}\n", "text/plain; charset=utf-8")

    def _reply(self, status: int, body: str | bytes, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, status: int, value: Any) -> None:
        self._reply(status, json.dumps(value, separators=(",", ":")), "application/json")

    def _snapshot(self, tap: PipelineTap) -> None:
        frame = tap.next_frame(REQUEST_FRAME_TIMEOUT_S)
        if frame is None:
            state = self.server.site.state().get("pipelines", {}).get(tap.name, {})
            source = state.get("source", {}).get("state", state.get("status", "unknown"))
            self._reply(503, f"pipeline {tap.name} has no frame yet (source: {source})\n", "text/plain; charset=utf-8")
            return
        self._reply(200, tap.jpeg(frame, "snapshot", lambda f: snapshot_jpeg(tap, f)), "image/jpeg")

    def _live(self, tap: PipelineTap) -> None:
        """MJPEG until the client leaves, stops reading (request_timeout_s) or the server stops."""
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.end_headers()
        if self.command == "HEAD":
            return
        # a small send buffer: a viewer that stops reading fills it within a few frames, and the next
        # write then times out (request_timeout_s) instead of frames piling up in the kernel for minutes
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LIVE_SEND_BUFFER_BYTES)
        server, height = self.server, self.server.live_height
        render: Callable[[Any], bytes] = lambda f: snapshot_jpeg(tap, f, height=height)  # noqa: E731
        seq, next_due, last_sent = 0, 0.0, time.monotonic()
        with tap.watching():
            while not server.stopping.is_set():
                frame = tap.wait_newer(seq, POLL_S)
                if frame is None:
                    # no new frame (a lost camera, an ended file): the last one again now and then, so that
                    # a client that stopped reading is still found out (and its connection freed)
                    frame = tap.latest() if time.monotonic() - last_sent >= LIVE_REPEAT_S else None
                    if frame is None:
                        continue
                seq, last_sent = frame.seq, time.monotonic()
                jpeg = tap.jpeg(frame, ("live", height), render)
                self.wfile.write(b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                 % (BOUNDARY.encode(), len(jpeg), jpeg))
                next_due = max(next_due + server.live_interval_s, time.monotonic())
                server.stopping.wait(max(0.0, next_due - time.monotonic()))


def _token_query(query: str) -> str:
    """`?token=…` to repeat in the page's own URLs (the browser's way to carry the token)."""
    try:
        tokens = parse_qs(query, max_num_fields=MAX_QUERY_FIELDS).get("token", [])
    except ValueError:
        return ""
    return f"?token={quote(tokens[0], safe='')}" if tokens else ""
