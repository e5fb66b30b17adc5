"""The API server as an actor: hypercorn serving the app, restartable without touching services."""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart_trio import QuartTrio

from actors import ChildContext


async def serve_api(
    ctx: ChildContext,
    app: QuartTrio,
    bind: str,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; report started with the addresses actually bound."""
    config = HypercornConfig()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    # Hypercorn holds even a closed idle connection (and its fd) this long: keep it short.
    config.keep_alive_timeout = 5.0

    class _Reporter:
        def started(self, value: Any = None) -> None:
            ctx.info["binds"] = value
            task_status.started({"binds": value})

    never = trio.Event()
    await serve(app, config, shutdown_trigger=never.wait, task_status=_Reporter())
