"""Who may use the HTTP server: a token, TLS client certificates, or only this machine.

The configuration refuses a listen address beyond loopback without a token or client
certificates (config.connections.HttpConfig); this module reads the token file and builds the TLS
context at start, with errors that say what to fix. Tokens are compared in constant time
(hmac.compare_digest), from `Authorization: Bearer TOKEN` or `?token=TOKEN` (what a browser's
address bar and an <img> can carry).
"""

from __future__ import annotations

import hmac
import ssl
from pathlib import Path
from urllib.parse import parse_qs

from edge_agent.config import HttpConfig
from edge_agent.errors import InputError

MIN_TOKEN_CHARS = 16
MAX_QUERY_FIELDS = 20


class HttpSetupError(InputError, ValueError):
    """The [http] settings cannot be used (token file, certificates, listen address)."""


def read_token(path: str) -> bytes:
    """The token in `path` (surrounding whitespace removed); HttpSetupError when unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise HttpSetupError(f"http.token_file {path} cannot be read: {err.strerror}; create it with "
                             f"`openssl rand -hex 32 > {path}` (readable by the agent only)") from None
    except UnicodeDecodeError:
        raise HttpSetupError(f"http.token_file {path} is not UTF-8 text: write the token as text") from None
    if not text:
        raise HttpSetupError(f"http.token_file {path} is empty: put a long random token in it "
                             f"(`openssl rand -hex 32 > {path}`)")
    if len(text) < MIN_TOKEN_CHARS or any(c.isspace() for c in text):
        raise HttpSetupError(f"http.token_file {path}: the token must be one word of at least {MIN_TOKEN_CHARS} "
                             f"characters (`openssl rand -hex 32 > {path}`)")
    return text.encode()


def tls_context(config: HttpConfig) -> ssl.SSLContext | None:
    """The server's TLS context (client certificates required with client_ca_file); None without TLS."""
    if not config.tls_cert_file:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError) as err:
        raise HttpSetupError(f"http.tls_cert_file / tls_key_file cannot be used: {err}") from None
    if config.client_ca_file:
        try:
            context.load_verify_locations(cafile=config.client_ca_file)
        except (OSError, ssl.SSLError) as err:
            raise HttpSetupError(f"http.client_ca_file {config.client_ca_file} cannot be used: {err}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class Access:
    """Decides whether one request may be served."""

    def __init__(self, token: bytes | None):
        self._token = token

    @property
    def needs_token(self) -> bool:
        return self._token is not None

    def allows(self, authorization: str | None, query: str) -> bool:
        """True when no token is configured, or the request carries it (header or query)."""
        if self._token is None:
            return True
        offered: list[bytes] = []
        if authorization:
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                offered.append(credentials.strip().encode("utf-8", "replace"))
        try:
            fields = parse_qs(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:  # more fields than any of our URLs has
            fields = {}
        for value in fields.get("token", [])[:1]:
            offered.append(value.encode("utf-8", "replace"))
        # every offered credential is compared, so the time taken does not tell which one was tried
        return any([hmac.compare_digest(candidate, self._token) for candidate in offered])
