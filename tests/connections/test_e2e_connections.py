"""End to end: the real `dev8 run`'s connection tracker follows a reload that moves a service
to another port (the reload sends the tracker ``SetPorts``; /connections reads what it publishes),
and counts the event-stream clients the API serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import yaml
from support.dev8_harness import (
    Json,
    fail_after,
    open_dev8,
    printed,
    python_service,
    write_config,
)
from support.net import free_port

#: Listens on $PORT and holds every connection it accepts.
SERVER = """\
import os, socket
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(os.environ["PORT"])))
sock.listen()
print("listening", os.environ["PORT"], flush=True)
held = []
while True:
    held.append(sock.accept()[0])
"""


def web_on(port: int, marker: str) -> dict[str, Json]:
    return {"web": python_service(SERVER, marker, env={"PORT": str(port)}, ports=[port])}


def write(path: Path, services: dict[str, Json], api_port: int) -> Path:
    """The harness's config, with the tracker sampling every 0.2 s."""
    write_config(path, services, port=api_port)
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["connections"] = {"interval": 0.2}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


async def connect(port: int) -> tuple[trio.SocketStream, str]:
    """A client of the service (this test's process: not dev8, so it counts); its peer name."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    host, client_port = stream.socket.getsockname()[:2]
    return stream, f"{host}:{client_port}"


async def test_a_reload_that_moves_a_service_to_another_port_moves_its_connections(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    old_port, new_port = free_port(), free_port()
    config = write(tmp_path / "dev8.yaml", web_on(old_port, marker), api_port)
    async with open_dev8(config, port=api_port, marker=marker) as dev8:
        await dev8.wait_log(printed("web", f"listening {old_port}"), what="web on the old port")
        async with dev8.events() as events:
            old_client, old_peer = await connect(old_port)
            async with old_client:
                await events.wait_for("connection_opened", service="web", peer=old_peer)
                web = (await dev8.http.get("/connections")).json()["services"]["web"]
                assert (web["ports"], web["peers"]) == ([old_port], [old_peer])

                write(config, web_on(new_port, marker), api_port)
                assert (await dev8.http.post("/reload")).status_code == 202
                # The old connection ends (its port is no longer watched, its server is gone),
                # announced before the reload is done.
                closed = await events.wait_for("connection_closed", service="web", peer=old_peer)
                assert closed["data"]["port"] == old_port
                await events.wait_for("reload_finished", changed=["web"])
            await dev8.wait_log(printed("web", f"listening {new_port}"), what="web moved")
            web = (await dev8.http.get("/connections")).json()["services"]["web"]
            assert (web["ports"], web["count"], web["peers"]) == ([new_port], 0, [])

            new_client, new_peer = await connect(new_port)
            async with new_client:
                opened = await events.wait_for("connection_opened", service="web", peer=new_peer)
                assert opened["data"]["port"] == new_port
                body = (await dev8.http.get("/connections")).json()
                web = body["services"]["web"]
                assert (web["ports"], web["count"], web["peers"]) == ([new_port], 1, [new_peer])
                assert body["lastActivity"] is not None
            await events.wait_for("connection_closed", service="web", peer=new_peer)
        web = (await dev8.http.get("/connections")).json()["services"]["web"]
        assert (web["ports"], web["count"]) == ([new_port], 0)


async def test_connections_and_metrics_count_the_event_stream_clients_the_api_serves(
    tmp_path: Path, api_port: int, marker: str
) -> None:
    """The API counts its event-stream clients where the tracker reads them: one count, given to
    both when dev8 composes the tree. /connections and /metrics show each client while it is
    connected, and none once it left."""
    config = write(tmp_path / "dev8.yaml", web_on(free_port(), marker), api_port)
    async with open_dev8(config, port=api_port, marker=marker) as dev8:

        async def counted() -> tuple[int, str]:
            connections = (await dev8.http.get("/connections")).json()["websocketClients"]
            metrics = (await dev8.http.get("/metrics")).text
            line = next(x for x in metrics.splitlines() if x.startswith("dev8_websocket_clients "))
            return connections, line

        async def wait_for_count(count: int) -> None:
            with fail_after(10, f"{count} websocket clients counted", dev8.tail):
                expected = (count, f"dev8_websocket_clients {count}.0")
                while await counted() != expected:  # noqa: ASYNC110 - dev8 counts, in its process
                    await trio.sleep(0.05)

        assert (await counted())[0] == 0
        async with dev8.events(), dev8.events():
            await wait_for_count(2)
        await wait_for_count(0)
