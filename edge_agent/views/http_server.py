"""The local HTTP server: status page, live views, snapshots, /api/state, /healthz, /metrics.

Why the standard library's ThreadingHTTPServer: a board needs a few endpoints, a handful of
clients and no dependency; a thread per connection fits the agent (threads, not asyncio) and an
MJPEG stream is a loop that writes. Measured: the server adds ~1 MB of RSS idle (README,
"HTTP server"). It is bounded here: at most `max_clients` connections (more are answered 503 and
closed), a client that sends its request too slowly or stops reading is dropped after
request_timeout_s, a TLS handshake happens on the connection's own thread, and stop() ends every
connection (live views included). What each request may ask, and the routes, are the request
handler's (views.http_handler).
"""

from __future__ import annotations

import errno
import logging
import socket
import socketserver
import ssl
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

from edge_agent.config import HttpConfig, parse_listen
from edge_agent.views.access import Access, HttpSetupError
from edge_agent.views.http_handler import RequestHandler, Site

logger = logging.getLogger(__name__)

SERVE_POLL_S = 0.5  # the accepting thread looks at a shutdown request this often (stop() waits up to this long)


class ViewServer:
    """Binds at construction (so a bad address fails the start, with the reason), serves on start()."""

    def __init__(self, config: HttpConfig, site: Site, access: Access, tls: ssl.SSLContext | None = None):
        self.config = config
        address = parse_listen(config.listen)
        if address is None:  # the config already refused it; kept for callers that build HttpConfig by hand
            raise HttpSetupError(f"http.listen {config.listen!r}: expected HOST:PORT")
        self.host, self.port = address
        self._server = _Server(self, config, site, access, tls)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(SERVE_POLL_S,), name="http-server",
                                        daemon=True)

    @property
    def url(self) -> str:
        scheme = "https" if self._server.tls is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else (self.host or "0.0.0.0")
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        logger.info("HTTP server on %s (status page, live views, /metrics)", self.url)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop accepting, end every connection (live views included), wait for their threads."""
        self._server.stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._server.end_connections(timeout_s)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # joined by end_connections, with a bound

    def __init__(self, owner: ViewServer, config: HttpConfig, site: Site, access: Access,
                 tls: ssl.SSLContext | None):
        self.site = site
        self.access = access
        self.tls = tls
        self.live_interval_s = 1.0 / config.live_fps
        self.live_height = config.live_height
        self.request_timeout_s = config.request_timeout_s
        self.stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(config.max_clients)
        self._connections: dict[threading.Thread, socket.socket] = {}
        self._connections_lock = threading.Lock()
        self.refused = 0
        # socketserver's default backlog is 5: with max_clients above it, connections arriving while the
        # accepting thread is busy overflow it and the kernel lets later ones in first (a dropped handshake
        # is retried a second later), so a client past max_clients could be served ahead of earlier ones
        self.request_queue_size = max(64, 2 * config.max_clients)
        family, sockaddr = _bind_address(owner.host, owner.port, config.listen)
        self.address_family = family
        try:
            super().__init__(sockaddr, RequestHandler, bind_and_activate=True)
        except OSError as err:
            raise HttpSetupError(_bind_problem(config.listen, owner.host, owner.port, err)) from None

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would look the host name up (DNS) for nothing
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), port

    # -- bounded connections -------------------------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        if self.stopping.is_set() or not self._slots.acquire(blocking=False):
            self.refused += 1
            self._refuse(request)
            return
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name="http-client", daemon=True)
        with self._connections_lock:
            self._connections[thread] = request
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(threading.current_thread(), None)
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        try:
            if self.tls is None:
                request.settimeout(0.5)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
                                b"Connection: close\r\n\r\ntoo many connections; try again later\n")
        except OSError:
            pass
        finally:
            self.shutdown_request(request)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.request_timeout_s)
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:  # the handshake happens here, on the connection's thread, not on the accepting one
            secure = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            logger.debug("TLS handshake with %s failed: %s", client_address[0], err)
            return
        with self._connections_lock:
            self._connections[threading.current_thread()] = secure
        try:
            super().finish_request(secure, client_address)
        finally:
            try:
                secure.close()
            except OSError:
                pass

    def end_connections(self, timeout_s: float) -> None:
        """Shut every open connection (a live view blocked on a stalled client included) and join its thread."""
        with self._connections_lock:
            connections = dict(self._connections)
        for sock in connections.values():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout_s
        for thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("HTTP connection from %s ended with an error", client_address[0], exc_info=True)


def _bind_address(host: str, port: int, listen: str) -> tuple[int, Any]:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise HttpSetupError(f"http.listen {listen}: {host!r} is not an address of this machine "
                             f"({err.strerror}); use an IP address such as 127.0.0.1") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _bind_problem(listen: str, host: str, port: int, err: OSError) -> str:
    if err.errno == errno.EADDRINUSE:
        return (f"http.listen {listen}: port {port} is already in use by another program (another edge-agent? "
                f"`ss -ltnp 'sport = :{port}'` shows which): choose another port or stop that program")
    if err.errno == errno.EADDRNOTAVAIL:
        return (f"http.listen {listen}: {host} is not an address of this machine: use one of its addresses, "
                "127.0.0.1 (this machine only) or 0.0.0.0 (every interface, with token_file)")
    if err.errno == errno.EACCES:
        return (f"http.listen {listen}: port {port} needs privileges (ports below 1024 need root or "
                "CAP_NET_BIND_SERVICE): use a port above 1023, e.g. 8080")
    return f"http.listen {listen}: cannot listen there: {err.strerror}"
