"""The API on its own over real loopback sockets: a small tree, Control, the Quart-Trio app on
Hypercorn; for the API's own tests."""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio

from actors import ChildContext, ChildSpec, EventBus, Intensity, Registry, Supervisor
from dev8.api import create_app, serve_api
from dev8.control import Control
from dev8.services.process import ProcessActor
from support.net import free_port


@attrs.define
class Api:
    url: str
    ws_url: str
    bus: EventBus
    services: Supervisor
    crash: dict[str, trio.Event]
    control: Control
    app: Any = None


async def worker(
    ctx: ChildContext, *, task_status: trio.TaskStatus[Any], crash: dict[str, trio.Event]
) -> None:
    event = crash[ctx.name] = trio.Event()
    task_status.started()
    await event.wait()
    raise RuntimeError("asked to crash")


async def start_api(
    nursery: trio.Nursery,
    *,
    token: str | None = None,
    open_changes: bool = True,
    history: int = 1000,
    subscriber_buffer: int = 256,
    **options: Any,
) -> Api:
    bus = EventBus(history=history, subscriber_buffer=subscriber_buffer)
    crash: dict[str, trio.Event] = {}

    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        await worker(ctx, task_status=task_status, crash=crash)

    services = Supervisor(
        "services",
        [
            ChildSpec(name="web", start=start),
            ChildSpec(name="flaky", start=start, intensity=Intensity(max_restarts=0, window=60)),
        ],
        bus=bus,
    )
    # Each service's address: its process actor, as dev8.tree builds them.
    registry = Registry()
    actors = Supervisor(
        "process-actors",
        [
            ChildSpec(
                name=f"{name}.actor",
                start=ProcessActor(
                    registry, name=name, path=f"dev8/services/{name}", services=services, bus=bus
                ).run,
            )
            for name in ("web", "flaky")
        ],
        bus=bus,
    )
    root = Supervisor("dev8", [actors.child_spec(), services.child_spec()], bus=bus)
    await nursery.start(root.run)
    control = Control(
        bus=bus,
        root=root,
        services=services,
        environment_id="e1",
        user_id="u1",
        registry=registry,
        supervisors=[root, actors, services],
    )
    app = create_app(control, token=token, open_changes=open_changes, **options)
    port = free_port()
    ctx = ChildContext(name="api", path="dev8/api", attempt=0, publish=bus.publish)
    await nursery.start(serve_api, ctx, app, f"127.0.0.1:{port}")
    return Api(
        f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", bus, services, crash, control, app
    )


def events_in(message: str | bytes) -> list[dict[str, Any]]:
    """A message of the event stream: one event, or several (a JSON array) when behind."""
    body = json.loads(message)
    return body if isinstance(body, list) else [body]
