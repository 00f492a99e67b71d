"""The HTTP server in this process, before and after it starts accepting: what the kernel does with
connections that arrive while the accepting thread is busy."""

from __future__ import annotations

import socket

from support import free_port

from edge_agent.config.connections import HttpConfig
from edge_agent.views.access import Access
from edge_agent.views.http_server import ViewServer

MAX_CLIENTS = 8


class _EmptySite:
    def taps(self):
        return {}

    def state(self):
        return {}

    def health(self):
        return True, {}

    def metrics_exposition(self):
        return b"", "text/plain"


def _read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_connections_queued_while_the_server_is_busy_keep_their_order():
    # bound and listening, not yet accepting: what a busy accepting thread looks like to the kernel
    config = HttpConfig(enabled=True, listen=f"127.0.0.1:{free_port()}", max_clients=MAX_CLIENTS,
                        request_timeout_s=5.0)
    server = ViewServer(config, _EmptySite(), Access(None))
    idle = []
    try:
        for number in range(MAX_CLIENTS):  # a backlog smaller than max_clients drops the handshake here
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=3))
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        server.start()
        answer = _read_until_closed(extra)
        assert answer.startswith(b"HTTP/1.0 503") and b"too many connections" in answer, answer[:200]
        assert server._server.refused == 1
    finally:
        for sock in idle:
            sock.close()
        server.stop()
