"""Every failure of a call as one `ApiError` whose `str()` is the line the CLI prints."""

from __future__ import annotations

import os
from typing import Any

import httpx
import trio

from dev8.client.endpoint import Endpoint, Target


class ApiError(Exception):
    """The API could not be reached or refused; ``str()`` is one line for the operator."""


class UsageError(ApiError):
    """The CLI was told where or how to reach the API in a way that cannot work."""


class Unreachable(ApiError):
    """Nothing answered at the address (``reason``: "connection refused", "timed out"...)."""

    def __init__(self, endpoint: Endpoint, reason: str) -> None:
        super().__init__(f"cannot reach the API at {endpoint}: {reason}")
        self.reason = reason


def strerror(error: OSError) -> str:
    return os.strerror(error.errno) if error.errno else (error.strerror or str(error))


def _os_error(error: BaseException | None) -> OSError | None:
    """The first OSError with an errno in a chain (trio groups one per address tried)."""
    if error is None:
        return None
    if isinstance(error, OSError) and error.errno:
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            if found := _os_error(inner):
                return found
    return _os_error(error.__cause__ or error.__context__)


def failure_reason(error: BaseException) -> str:
    """``connection refused``, ``no such file or directory``, ``timed out``..."""
    if isinstance(error, httpx.TimeoutException | trio.TooSlowError | TimeoutError):
        return "timed out"
    found = _os_error(error)
    if found is not None:
        return strerror(found).lower()
    text = str(error).strip()
    if text.startswith("[Errno"):
        text = text.split("]", 1)[-1].strip()
    return text.lower() or type(error).__name__


def unreachable(endpoint: Endpoint, error: BaseException) -> Unreachable:
    return Unreachable(endpoint, failure_reason(error))


def refused(target: Target, status: int, body: Any, *, service: str | None = None) -> ApiError:
    """The one line for an error answer ``{"error": {"code", "message", "known"?}}``."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ApiError(f"unexpected answer from the API at {target.endpoint}: HTTP {status}")
    code = str(error.get("code", "error"))
    message = str(error.get("message", code))
    if code == "unknown_service" and isinstance(error.get("known"), list):
        names = ", ".join(str(n) for n in error["known"]) or "none"
        return ApiError(f"unknown service {service!r} (known: {names})")
    if status == 401:
        hint = (
            f" ({target.token_note})"
            if target.token_note
            else " (give it with --token-file or DEV8_API_TOKEN)"
            if not target.token
            else ""
        )
        return ApiError(f"unauthorized: {message}{hint}")
    if status == 403:
        return ApiError(f"forbidden: {message}")
    return ApiError(f"{message} (HTTP {status} {code})")


def decode(target: Target, response: httpx.Response, service: str | None) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        raise refused(target, response.status_code, body, service=service)
    if body is None:
        raise ApiError(
            f"unexpected answer from the API at {target.endpoint}: not JSON "
            f"(HTTP {response.status_code})"
        )
    return body
