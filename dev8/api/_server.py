"""The API server as an actor: the app served on its bind, restartable without touching services."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from typing import Any

import trio

from actors import ChildContext

from ..config import TcpBind, UnixBind, parse_bind
from ._http import App


async def serve_api(
    ctx: ChildContext,
    app: App,
    bind: str,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; report started with the addresses actually bound."""
    where = parse_bind(bind)
    if isinstance(where, UnixBind):
        listeners: list[trio.SocketListener] = [await _unix_listener(where.path)]
        binds = [f"unix:{where.path}"]
    else:
        assert isinstance(where, TcpBind)
        listeners = await trio.open_tcp_listeners(where.port, host=where.host)
        binds = [_url(listener) for listener in listeners]
    try:
        ctx.info["binds"] = binds
        await app.serve(listeners, task_status=_Started(task_status, {"binds": binds}))
    finally:
        if isinstance(where, UnixBind):
            with contextlib.suppress(OSError):
                os.unlink(where.path)


class _Started:
    """Report the binds, not ``None``, when the app is serving."""

    def __init__(self, task_status: trio.TaskStatus[Any], value: Any) -> None:
        self._task_status = task_status
        self._value = value

    def started(self, _value: Any = None) -> None:
        self._task_status.started(self._value)


def _url(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _unix_listener(path: str) -> trio.SocketListener:
    """Bind a Unix socket only its owner can use, replacing a stale one from an earlier life."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            await sock.bind(path)
        finally:
            os.umask(old_umask)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)
