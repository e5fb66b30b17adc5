"""A client of a running dev8's management API, for the operator commands of the CLI.

It finds the API (option, environment, config file, default), carries the token, and turns
every failure into one :class:`ApiError` whose ``str()`` is the single line the CLI prints.
One-shot calls are synchronous (httpx); the event stream runs on trio (trio-websocket) and
reconnects with ``?since=`` so that a drop loses and repeats nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import attrs
import httpx
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from .config import DEFAULT_CONFIG_PATH, Bind, Config, ConfigError, TcpBind, load_config

API_ENV = "DEV8_API"
TOKEN_ENV = "DEV8_API_TOKEN"
CONFIG_ENV = "DEV8_CONFIG"
DEFAULT_API = "http://127.0.0.1:9000"
#: Waits between reconnection attempts of the event stream; one attempt per entry.
RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Websocket close codes the server uses (see dev8.api).
CLOSE_POLICY = 1008
CLOSE_LAGGED = 4001
#: A resync message carries the whole /status snapshot: allow it to be large.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024


class ApiError(Exception):
    """The API could not be reached or refused; ``str()`` is one line for the operator."""


class UsageError(ApiError):
    """The CLI was told where or how to reach the API in a way that cannot work."""


class Unreachable(ApiError):
    """Nothing answered at the address (``reason``: "connection refused", "timed out"...)."""

    def __init__(self, endpoint: Endpoint, reason: str) -> None:
        super().__init__(f"cannot reach the API at {endpoint}: {reason}")
        self.reason = reason


# ----------------------------------------------------------------------------- where the API is


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


def parse_endpoint(text: str) -> Endpoint:
    """``unix:/PATH``, ``http://HOST:PORT`` or ``HOST:PORT``."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise UsageError(f"bad API address {text!r}: the socket path must be absolute")
        return Endpoint("http://localhost", uds=path)
    url = text if "://" in text else f"http://{text}"
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
        parts = parts._replace(netloc="")
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise UsageError(
            f"bad API address {text!r}: expected http://HOST:PORT, HOST:PORT or unix:/PATH"
        )
    return Endpoint(f"http://{parts.netloc}")


def endpoint_from_bind(bind: Bind) -> Endpoint:
    """The address to dial for a server bound to ``bind`` (a wildcard becomes loopback)."""
    if not isinstance(bind, TcpBind):
        return Endpoint("http://localhost", uds=bind.path)
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - dialled, not bound
    host = wildcard.get(bind.host, bind.host)
    netloc = f"[{host}]:{bind.port}" if ":" in host else f"{host}:{bind.port}"
    return Endpoint(f"http://{netloc}")


@attrs.frozen
class Target:
    """The API to talk to and the token to show it (never printed)."""

    endpoint: Endpoint
    token: str | None = attrs.field(default=None, repr=False)
    #: Why a token the config names could not be used (added to an "unauthorized" line).
    token_note: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as error:
        raise UsageError(f"cannot read the token file {path}: {_strerror(error).lower()}") from None


def locate(
    *,
    api: str | None = None,
    config: str | None = None,
    token_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """Find the API and its token.

    Address: ``api``, else ``$DEV8_API``, else the config file's ``api.bind`` (``config``, else
    ``$DEV8_CONFIG``, else /etc/dev8/supervisor.yaml when readable), else 127.0.0.1:9000.
    Token: ``token_file``, else ``$DEV8_API_TOKEN``, else the config's ``api.token_file``.
    """
    environ = os.environ if environ is None else environ
    config_path = config or environ.get(CONFIG_ENV) or None
    if config_path is None and os.access(DEFAULT_CONFIG_PATH, os.R_OK):
        config_path = DEFAULT_CONFIG_PATH
    loaded: list[Config] = []

    def the_config() -> Config | None:
        if config_path is None:
            return None
        if not loaded:
            # The CLI's own variables are not config overrides (see dev8.config).
            own = {API_ENV, TOKEN_ENV}
            env = {k: v for k, v in environ.items() if k not in own}
            try:
                loaded.append(load_config(config_path, env))
            except ConfigError as error:
                raise UsageError(str(error)) from None
        return loaded[0]

    address = api or environ.get(API_ENV)
    if address:
        endpoint = parse_endpoint(address)
    else:
        found = the_config()
        endpoint = endpoint_from_bind(found.api.bind) if found else parse_endpoint(DEFAULT_API)

    if token_file:
        return Target(endpoint, _read_token(token_file) or None)
    if environ.get(TOKEN_ENV, "").strip():
        return Target(endpoint, environ[TOKEN_ENV].strip())
    found = the_config()
    if found is None or found.api.token_file is None:
        return Target(endpoint)
    try:
        return Target(endpoint, _read_token(found.api.token_file) or None)
    except UsageError as error:
        # Reads need no token: only say so if a change is refused.
        return Target(endpoint, None, token_note=str(error))


# ----------------------------------------------------------------------------- errors


def _strerror(error: OSError) -> str:
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


def _reason(error: BaseException) -> str:
    """``connection refused``, ``no such file or directory``, ``timed out``..."""
    if isinstance(error, httpx.TimeoutException | trio.TooSlowError | TimeoutError):
        return "timed out"
    found = _os_error(error)
    if found is not None:
        return _strerror(found).lower()
    text = str(error).strip()
    if text.startswith("[Errno"):
        text = text.split("]", 1)[-1].strip()
    return text.lower() or type(error).__name__


def unreachable(endpoint: Endpoint, error: BaseException) -> Unreachable:
    return Unreachable(endpoint, _reason(error))


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


def _decode(target: Target, response: httpx.Response, service: str | None) -> Any:
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


# ----------------------------------------------------------------------------- one-shot calls


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
        return _decode(self.target, response, service)

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


# ----------------------------------------------------------------------------- the event stream


@attrs.define
class _Cursor:
    """Where the stream stands: the last sequence number delivered and which dev8 sent it."""

    seq: int
    #: The ``bootId`` of the dev8 that numbered ``seq`` (sent back on reconnection).
    boot_id: str | None


@attrs.frozen
class _Ended:
    """How one connection ended: whether it got through the handshake, and why it stopped."""

    connected: bool
    reason: str
    at_once: bool = False  # reconnect without waiting (we were told we lagged)


def events_resource(
    since: int,
    kinds: Iterable[str] = (),
    services: Iterable[str] = (),
    *,
    boot_id: str | None = None,
) -> str:
    query: dict[str, str] = {"since": str(since)}
    if boot_id:  # from another boot of dev8, the server answers with a resync
        query["bootId"] = boot_id
    if kinds := ",".join(kinds):
        query["kind"] = kinds
    if services := ",".join(services):
        query["service"] = services
    return "/events?" + urllib.parse.urlencode(query)


async def follow_events(
    target: Target,
    emit: Callable[[dict[str, Any]], None],
    *,
    since: int | None = None,
    kinds: Sequence[str] = (),
    services: Sequence[str] = (),
    retry_delays: Sequence[float] = RETRY_DELAYS,
    connect_timeout: float = 10.0,
) -> NoReturn:
    """Call ``emit`` with every event, for ever; raise ``ApiError`` when the stream is lost.

    Without ``since`` it starts at the present (the /status ``lastEvent``). After a drop it
    waits ``retry_delays[i]`` before attempt ``i`` and resumes from the last event delivered;
    a dev8 that restarted in between (a new ``bootId``: its seq numbers start again) is
    announced by a ``resync`` message carrying its fresh /status, as the server does when
    events are gone.
    """
    transport = httpx.AsyncHTTPTransport(uds=target.endpoint.uds) if target.endpoint.uds else None
    async with httpx.AsyncClient(
        base_url=target.endpoint.base_url,
        transport=transport,
        timeout=connect_timeout,
        headers=target.headers(),  # /status needs the token too
    ) as http:

        async def read_status() -> dict[str, Any]:
            try:
                response = await http.get("/status")
            except httpx.TransportError as error:
                raise unreachable(target.endpoint, error) from None
            body: dict[str, Any] = _decode(target, response, None)
            return body

        status = await read_status()
        cursor = _Cursor(status["lastEvent"] if since is None else since, status.get("bootId"))
        failures = 0
        while True:
            ended = await _session(
                target, cursor, kinds=kinds, services=services, emit=emit, timeout=connect_timeout
            )
            if ended.connected:
                failures = 0
            while not ended.at_once:
                if failures >= len(retry_delays):
                    raise ApiError(
                        f"lost the event stream at {target.endpoint}: {ended.reason} "
                        f"(gave up after {failures} retries)"
                    )
                await trio.sleep(retry_delays[failures])
                failures += 1
                try:
                    status = await read_status()
                except Unreachable as error:
                    ended = _Ended(False, error.reason)
                    continue
                if status.get("bootId") != cursor.boot_id:
                    cursor.boot_id = status.get("bootId")
                    cursor.seq = status["lastEvent"]
                    emit(
                        {
                            "seq": cursor.seq,
                            "bootId": cursor.boot_id,
                            "time": datetime.now(tz=UTC).isoformat(),
                            "kind": "resync",
                            "source": "dev8",
                            "data": status,
                        }
                    )
                break


async def _session(
    target: Target,
    cursor: _Cursor,
    *,
    kinds: Sequence[str],
    services: Sequence[str],
    emit: Callable[[dict[str, Any]], None],
    timeout: float,
) -> _Ended:
    """One websocket connection, from handshake to close."""
    resource = events_resource(cursor.seq, kinds, services, boot_id=cursor.boot_id)
    connected = False
    try:
        async with _open_websocket(target, resource, timeout) as ws:
            connected = True
            while True:
                _deliver(target, cursor, await ws.get_message(), emit)
    except ConnectionClosed as closed:
        code, why = (closed.reason.code, closed.reason.reason) if closed.reason else (1006, None)
        if code == CLOSE_LAGGED:
            return _Ended(connected, "fell behind", at_once=True)
        if code == CLOSE_POLICY:
            raise _refused_stream(target, why or "refused") from None
        return _Ended(connected, f"closed by the server (code {code})")
    except ConnectionRejected as rejected:
        if rejected.status_code in (401, 403):
            raise _refused_stream(target, "missing or wrong bearer token") from None
        if rejected.status_code == 404:
            raise ApiError(f"the API at {target.endpoint} has no event stream") from None
        return _Ended(False, f"refused (HTTP {rejected.status_code})")
    except (OSError, trio.TooSlowError, HandshakeError, trio.BrokenResourceError) as error:
        return _Ended(connected, _reason(error))


def _refused_stream(target: Target, why: str) -> ApiError:
    if "token" in why:
        note = f" ({target.token_note})" if target.token_note else ""
        return ApiError(f"unauthorized: the event stream refused: {why}{note}")
    return ApiError(f"the event stream refused: {why}")


def _deliver(
    target: Target, cursor: _Cursor, message: str | bytes, emit: Callable[[dict[str, Any]], None]
) -> None:
    """One message: an event, or a JSON array of events (a subscriber that was behind)."""
    try:
        parsed = json.loads(message)
        events = parsed if isinstance(parsed, list) else [parsed]
        seqs = [int(event["seq"]) for event in events]
    except (ValueError, KeyError, TypeError):
        raise ApiError(f"unexpected message on the event stream at {target.endpoint}") from None
    for event, seq in zip(events, seqs, strict=True):
        # A resync restarts the numbering (maybe a new boot); otherwise seq never goes back.
        cursor.seq = seq if event.get("kind") == "resync" else max(cursor.seq, seq)
        if isinstance(event.get("bootId"), str):
            cursor.boot_id = event["bootId"]
        emit(event)


@contextlib.asynccontextmanager
async def _open_websocket(
    target: Target, resource: str, connect_timeout: float
) -> AsyncIterator[WebSocketConnection]:
    """A client websocket over TCP or a Unix socket; errors come out unwrapped."""
    host, port, host_header = target.endpoint.ws_target()
    headers = [(k.lower().encode(), v.encode()) for k, v in target.headers().items()]
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(connect_timeout):
                if target.endpoint.uds:
                    stream: trio.SocketStream = await trio.open_unix_socket(target.endpoint.uds)
                else:
                    stream = await trio.open_tcp_stream(host, port)
                try:
                    ws = await wrap_client_stream(
                        nursery,
                        stream,
                        host_header,
                        resource,
                        extra_headers=headers,
                        max_message_size=MAX_MESSAGE_SIZE,
                    )
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
                    raise
            try:
                yield ws
            finally:
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(2.0):
                        await ws.aclose()
                    # After a close from the server, trio-websocket leaves the socket open.
                    await stream.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        sole = _sole(group)
        if sole is group:
            raise
        raise sole from None


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one meaningful error of a nursery's group; Cancelled and others stay grouped."""
    leaves = list(_leaves(group))
    if any(isinstance(leaf, trio.Cancelled) for leaf in leaves):
        return group
    # The reader task's rejection comes with the handshake waiter's cancellation: keep it.
    for kind in (ConnectionRejected, ConnectionClosed, OSError, HandshakeError, ApiError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return group


def _leaves(error: BaseException) -> Iterable[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


__all__ = [
    "API_ENV",
    "CONFIG_ENV",
    "DEFAULT_API",
    "RETRY_DELAYS",
    "TOKEN_ENV",
    "ApiClient",
    "ApiError",
    "Endpoint",
    "Target",
    "Unreachable",
    "UsageError",
    "endpoint_from_bind",
    "events_resource",
    "follow_events",
    "locate",
    "parse_endpoint",
    "refused",
    "unreachable",
]
