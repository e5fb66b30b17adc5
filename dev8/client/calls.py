"""One-shot calls, synchronous (httpx): each returns decoded JSON or raises `ApiError`."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

from dev8.client.endpoint import Target
from dev8.client.errors import decode, unreachable


class ApiClient:
    """Synchronous calls; each returns the decoded JSON or raises ``ApiError``."""

    def __init__(self, target: Target, *, timeout: float = 30.0) -> None:
        self.target = target
        transport = httpx.HTTPTransport(uds=target.endpoint.uds) if target.endpoint.uds else None
        self._http = httpx.Client(
            base_url=target.endpoint.base_url,
            transport=transport,
            headers=target.headers(),
            timeout=timeout,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, int | str] | None = None,
        service: str | None = None,
    ) -> Any:
        try:
            response = self._http.request(method, path, params=params)
        except httpx.TransportError as error:
            raise unreachable(self.target.endpoint, error) from None
        return decode(self.target, response, service)

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = self._call("GET", "/status")
        return body

    def connections(self) -> dict[str, Any]:
        body: dict[str, Any] = self._call("GET", "/connections")
        return body

    def logs(self, name: str, *, lines: int = 100, since: int = 0) -> list[dict[str, Any]]:
        path = f"/services/{_quote(name)}/logs"
        body = self._call("GET", path, params={"lines": lines, "since": since}, service=name)
        entries: list[dict[str, Any]] = body["lines"]
        return entries

    def act(self, action: str, name: str) -> dict[str, Any]:
        """``restart``, ``stop`` or ``start`` one service."""
        body: dict[str, Any] = self._call(
            "POST", f"/services/{_quote(name)}/{action}", service=name
        )
        return body

    def reload(self) -> dict[str, Any]:
        body: dict[str, Any] = self._call("POST", "/reload")
        return body

    def refresh_secrets(self) -> dict[str, Any]:
        body: dict[str, Any] = self._call("POST", "/secrets/refresh")
        return body

    def chaos_crash(self, path: str) -> dict[str, Any]:
        """Fault injection: make the actor at ``path`` fail (needs ``chaos.enabled``)."""
        where = urllib.parse.quote(path.strip("/"), safe="/")
        body: dict[str, Any] = self._call("POST", f"/chaos/actors/{where}/crash")
        return body

    def chaos_signal(self, name: str, signal_name: str) -> dict[str, Any]:
        """Fault injection: signal a service's process group (needs ``chaos.enabled``)."""
        body: dict[str, Any] = self._call(
            "POST",
            f"/chaos/services/{_quote(name)}/signal",
            params={"signal": signal_name},
            service=name,
        )
        return body


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")
