"""The API server as an actor: Hypercorn (trio worker) serving the app on sockets bound once.

dev8 binds the API's sockets before it starts the tree (``bind_api``), so that a port in use is
one clear error at start-up rather than an actor failing its starts; every run of the actor
(it may be restarted without touching services) serves duplicates of those sockets, so the
port is never released meanwhile.

Limits, against one peer holding every connection: a short accept queue (``BACKLOG``); an
idle connection (no request yet, or between requests) is closed after ``KEEP_ALIVE``; a
request head is at most ``MAX_HEAD``; a body must arrive within the app's ``BODY_TIMEOUT``;
and data the peer does not acknowledge (it stopped reading) aborts the connection after
``WRITE_TIMEOUT`` (``TCP_USER_TIMEOUT``, inherited by every accepted socket, also covers a
zero receive window), which also frees an event-stream subscriber stuck in a send.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from functools import partial
from typing import Any

import attrs
import trio

from actors import ChildContext
from dev8.config import TcpBind, UnixBind, parse_bind

KEEP_ALIVE = 5.0
MAX_HEAD = 16 * 1024
WRITE_TIMEOUT = 10.0
#: The kernel's accept queue per listening socket. Short on purpose: it is first in, first out,
#: so a request waits behind every connection queued before it (about 1 ms of CPU each in
#: Hypercorn here). With 4,096, a flood of connections kept it full and /health on the API's
#: port waited 1 to 14 s during the flood (benchmarks/results/api-latency.md); with 256 the
#: kernel refuses the flood's excess instead (its SYNs are dropped and retried, which slows the
#: flood down), most requests wait milliseconds and the unlucky ones one SYN retry (about 1 s).
BACKLOG = 256
#: Hypercorn's own log: warnings and errors only (a line per bind at start-up otherwise).
_server_log = logging.getLogger("dev8.api.server")
_server_log.setLevel(logging.WARNING)


class ApiBindError(Exception):
    """The API could not listen where the config says; ``str()`` is one line."""

    def __init__(self, bind: str, error: OSError) -> None:
        reason = os.strerror(error.errno) if error.errno else str(error)
        super().__init__(f"the API cannot listen on {bind}: {reason.lower()}")
        self.bind = bind
        self.errno = error.errno


@attrs.define
class BoundApi:
    """The API's listening sockets, bound once for the life of dev8."""

    bind: str
    sockets: list[socket.socket]
    binds: list[str]
    unix_path: str | None = None
    #: The probe listener (``api.probe_bind``), when configured.
    probe: BoundApi | None = None

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()
        for sock in self.sockets:
            sock.close()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)


async def bind_api(bind: str, probe_bind: str | None = None) -> BoundApi:
    """Bind and listen; ``ApiBindError`` when the address is in use or not ours."""
    if probe_bind is not None:
        probe = await bind_api(probe_bind)
        try:
            bound = await bind_api(bind)
        except BaseException:
            probe.close()
            raise
        bound.probe = probe
        return bound
    where = parse_bind(bind)
    try:
        if isinstance(where, UnixBind):
            return BoundApi(bind, [_unix_socket(where.path)], [f"unix:{where.path}"], where.path)
        assert isinstance(where, TcpBind)
        sockets = await _tcp_sockets(where.host, where.port)
    except OSError as error:
        raise ApiBindError(bind, error) from None
    return BoundApi(bind, sockets, [_url(sock) for sock in sockets])


def hypercorn_config(bound: BoundApi) -> Any:
    from hypercorn.config import Config  # noqa: PLC0415 - with the API actor, not at import

    config = Config()
    # Each run serves duplicates: Hypercorn closes what it serves when it stops.
    config.bind = [f"fd://{sock.dup().detach()}" for sock in bound.sockets]
    config.accesslog = None
    config.errorlog = _server_log
    config.include_server_header = False
    config.keep_alive_timeout = KEEP_ALIVE
    config.h11_max_incomplete_size = MAX_HEAD
    config.backlog = BACKLOG
    config.graceful_timeout = 1.0
    # Clients of the event stream only send pings and a close.
    config.websocket_max_message_size = 64 * 1024
    return config


async def serve_api(
    ctx: ChildContext,
    app: Any,
    bind: str | BoundApi,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; report started with the addresses actually bound."""
    from hypercorn.trio import serve  # noqa: PLC0415

    bound = bind if isinstance(bind, BoundApi) else await bind_api(bind)
    try:
        ctx.info["binds"] = bound.binds
        info: dict[str, Any] = {"binds": bound.binds}
        if bound.probe is not None:
            ctx.info["probeBinds"] = info["probeBinds"] = bound.probe.binds

        class _Started:
            def started(self, _value: Any = None) -> None:
                task_status.started(info)

        async with trio.open_nursery() as nursery:
            if bound.probe is not None:
                # Its own accept loop: a backlog of connections to the API queues not before it.
                await nursery.start(
                    partial(
                        serve,
                        app.probes,
                        hypercorn_config(bound.probe),
                        shutdown_trigger=trio.sleep_forever,
                    )
                )
            await serve(
                app,
                hypercorn_config(bound),
                shutdown_trigger=trio.sleep_forever,
                task_status=_Started(),
            )
    finally:
        if not isinstance(bind, BoundApi):
            bound.close()


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _tcp_sockets(host: str, port: int) -> list[socket.socket]:
    """Like ``trio.open_tcp_listeners``: every address ``host`` resolves to."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The write deadline: accepted sockets inherit it (milliseconds).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(WRITE_TIMEOUT * 1000))
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(errno.EADDRNOTAVAIL, f"{host} resolves to no address")
    return sockets


def _unix_socket(path: str) -> socket.socket:
    """A Unix socket only its owner can use, replacing a stale one from an earlier life."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
