"""Where the API listens, and the token to show it."""

from __future__ import annotations

import urllib.parse

import attrs


@attrs.frozen
class Endpoint:
    """Where the API listens: a base URL, or a Unix socket (``uds``) spoken to as ``http://``."""

    base_url: str
    uds: str | None = None

    def __str__(self) -> str:
        return f"unix:{self.uds}" if self.uds else self.base_url

    def ws_target(self) -> tuple[str, int, str]:
        """(host, port, Host header) of the websocket; the port is unused on a Unix socket."""
        url = urllib.parse.urlsplit(self.base_url)
        host = url.hostname or "localhost"
        port = url.port or (443 if url.scheme == "https" else 80)
        return host, port, url.netloc or host


@attrs.frozen
class Target:
    """The API to talk to and the token to show it (never printed)."""

    endpoint: Endpoint
    token: str | None = attrs.field(default=None, repr=False)
    #: Why a token the config names could not be used (added to an "unauthorized" line).
    token_note: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}
