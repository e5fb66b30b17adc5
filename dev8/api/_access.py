"""Who may use the API: the bearer token, the Host allow-list and the cross-site checks.

A token guards every route but the probes once it is set. Without one (loopback, a Unix socket,
or ``api.insecure_no_auth``) the API is reachable by any web page the user opens, through the
browser: a Host allow-list defeats DNS rebinding, mutating routes refuse cross-origin browser
requests (``Origin``, ``Sec-Fetch-Site``) and bodies that are not JSON, and the event stream's
handshake checks ``Origin`` against an allow-list (the API's own origin by default).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import attrs

from dev8.api._responses import error_response

if TYPE_CHECKING:
    from quart import Response

#: Answer without a token: they reveal nothing private and the kubelet carries none.
PROBE_PATHS = frozenset({"/livez", "/readyz", "/health"})
#: The dashboard's page is static (its data comes from authenticated calls); it asks for the token.
PUBLIC_PATHS = PROBE_PATHS | {"/"}
_SAME_SITE_OK = frozenset({"same-origin", "none"})


class Headers(Protocol):
    """What is read of a request's headers (werkzeug's ``Headers``, a dict in tests)."""

    def get(self, key: str, /) -> str | None: ...


def host_name(host: str) -> str:
    """``"[::1]:9000"`` -> ``"::1"``, ``"Example.org:80"`` -> ``"example.org"``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


@attrs.frozen
class AccessPolicy:
    token: str | None = None
    #: Without a token: whether state changes are allowed (loopback, Unix socket, insecure).
    open_changes: bool = True
    #: Host names (no port) requests may address; None: any.
    allowed_hosts: frozenset[str] | None = None
    #: Browser origins allowed besides the API's own (``scheme://host[:port]``).
    allowed_origins: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        *,
        token: str | None,
        open_changes: bool,
        allowed_hosts: Iterable[str] | None,
        allowed_origins: Iterable[str] = (),
    ) -> AccessPolicy:
        hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        return cls(token, open_changes, hosts, origins)

    def bearer_ok(self, header: str | None) -> bool:
        """``Authorization: Bearer TOKEN``, the scheme in any case (RFC 9110)."""
        if self.token is None:
            return True
        scheme, _, value = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self.token.encode())

    def host_ok(self, headers: Headers) -> bool:
        return self.allowed_hosts is None or (
            host_name(headers.get("Host") or "") in self.allowed_hosts
        )

    def check_host(self, headers: Headers) -> Response | None:
        if self.host_ok(headers):
            return None
        name = host_name(headers.get("Host") or "")
        return error_response(
            403, "forbidden_host", f"this API does not answer to the Host {name!r}"
        )

    def origin_ok(self, headers: Headers, scheme: str) -> bool:
        """No Origin (not a browser), the API's own, or one configured."""
        origin = headers.get("Origin")
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        own = f"{scheme}://{(headers.get('Host') or '').strip().lower()}"
        return origin == own or origin in self.allowed_origins

    def check_change(self, headers: Headers, scheme: str, has_body: bool) -> Response | None:
        """A state change (its token was checked with every route's): the browser checks."""
        if self.token is None and not self.open_changes:
            return error_response(
                403, "forbidden", "changes need a token when the API listens beyond loopback"
            )
        site = headers.get("Sec-Fetch-Site")
        if (site is not None and site.lower() not in _SAME_SITE_OK) or not self.origin_ok(
            headers, scheme
        ):
            return error_response(
                403, "cross_site", "state changes are refused to pages of other origins"
            )
        content_type = headers.get("Content-Type")
        if has_body or content_type is not None:
            media = (content_type or "").partition(";")[0].strip().lower()
            if media != "application/json":
                return error_response(
                    415, "unsupported_media_type", "a request body must be application/json"
                )
        return None


UNAUTHORIZED_MESSAGE = "missing or wrong bearer token"


def unauthorized() -> Response:
    response = error_response(401, "unauthorized", UNAUTHORIZED_MESSAGE)
    response.headers["WWW-Authenticate"] = 'Bearer realm="dev8"'
    return response
