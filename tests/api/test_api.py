"""The management API over a real socket: dev8's server on loopback, httpx and websockets."""

from __future__ import annotations

import gc
import re
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio_websocket
from support.api_harness import Api, events_in, start_api

from dev8.control import Control

# trio-websocket leaves the socket object of a connection its peer closed mid-stream (the slow
# subscriber test) to the garbage collector, which may run during a later test of this module.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.usefixtures("collect_garbage_after_module"),
]


@pytest.fixture
async def api(nursery: trio.Nursery) -> AsyncIterator[Api]:
    yield await start_api(nursery)
    nursery.cancel_scope.cancel()


async def test_health_is_the_seed_shape_and_turns_503_when_a_service_is_fatal(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        response = await client.get("/health")
        assert response.status_code == 200
        body = response.json()
        assert body["healthy"] is True
        assert body["services"] == {"web": "running", "flaky": "running"}
        assert set(body) == {
            "healthy",
            "lastCheck",
            "services",
            "uptime",
            "uptimeSeconds",
            "waitingForSecrets",
        }
        assert body["uptime"].endswith("s")
        assert isinstance(body["uptimeSeconds"], float)

        api.crash["flaky"].set()
        await trio.testing.wait_all_tasks_blocked()
        response = await client.get("/health")
        assert response.status_code == 503
        assert response.json()["services"]["flaky"] == "fatal"


async def test_status_shows_the_tree(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        body = (await client.get("/status")).json()
    tree = body["tree"]
    assert tree["name"] == "dev8"
    actors, services = tree["children"]
    assert (actors["name"], services["name"]) == ("process-actors", "services")
    assert actors["kind"] == services["kind"] == "supervisor"
    assert [c["name"] for c in actors["children"]] == ["web.actor", "flaky.actor"]
    assert [c["name"] for c in services["children"]] == ["web", "flaky"]
    assert (body["environmentId"], body["userId"]) == ("e1", "u1")
    assert body["bootId"] == api.control.boot_id
    assert body["secrets"] is None  # no provider: present, and null


async def test_restart_of_an_unknown_service_is_404_with_the_known_names(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        response = await client.post("/restart/nope")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_service"
    assert error["known"] == ["flaky", "web"]


async def test_restart_counts_and_streams_events(api: Api) -> None:
    async with trio_websocket.open_websocket_url(f"{api.ws_url}/events?service=web") as ws:
        async with httpx.AsyncClient(base_url=api.url) as client:
            response = await client.post("/restart/web")
        assert response.status_code == 200
        assert response.json()["restarts"] == 1
        kinds = []
        with trio.fail_after(5):
            while "child_started" not in kinds:
                for message in events_in(await ws.get_message()):
                    assert message["data"]["child"] == "web"
                    kinds.append(message["kind"])
    assert kinds == [
        "child_stopping",
        "child_exited",
        "child_stopped",
        "restart_scheduled",
        "child_started",
    ]


async def test_events_resume_from_a_sequence_number_without_gap_or_duplicate(api: Api) -> None:
    first = api.bus.last_seq
    api.crash["web"].set()
    await trio.testing.wait_all_tasks_blocked()
    async with trio_websocket.open_websocket_url(f"{api.ws_url}/events?since={first}") as ws:
        seqs = []
        with trio.fail_after(5):
            while len(seqs) < api.bus.last_seq - first:
                seqs.extend(e["seq"] for e in events_in(await ws.get_message()))
    assert seqs == list(range(first + 1, api.bus.last_seq + 1))


async def test_unknown_route_and_wrong_method_are_json_errors(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        missing = await client.get("/nope")
        wrong = await client.get("/restart/web")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


async def handshake(url: str, path: str, headers: dict[str, str]) -> httpx.Response:
    """A websocket upgrade request on a connection of its own (a refusal closes it)."""
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with httpx.AsyncClient(base_url=url) as client:
        return await client.get(path, headers={**upgrade, **headers})


async def test_a_token_guards_every_route_but_the_probes(nursery: trio.Nursery) -> None:
    api = await start_api(nursery, token="s3cret-token")
    right = {"Authorization": "Bearer s3cret-token"}
    async with httpx.AsyncClient(base_url=api.url) as client:
        for probe in ("/health", "/livez", "/readyz"):
            assert (await client.get(probe)).status_code == 200, probe
        for read in ("/status", "/connections", "/metrics", "/services/web/logs", "/openapi.json"):
            refused = await client.get(read)
            assert refused.status_code == 401, read
            assert refused.json()["error"]["code"] == "unauthorized"
            assert (await client.get(read, headers=right)).status_code == 200, read
        assert (await client.post("/restart/web")).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.post("/restart/web", headers=wrong)).status_code == 401
        assert (await client.post("/restart/web", headers=right)).status_code == 200
        # The scheme is case-insensitive (RFC 9110).
        lower = {"Authorization": "bearer s3cret-token"}
        assert (await client.post("/restart/web", headers=lower)).status_code == 200
    assert (await handshake(api.url, "/events", {})).status_code == 401
    assert (await handshake(api.url, "/events", right)).status_code == 101
    # Browsers cannot set headers on a websocket: the token may come in the query.
    assert (await handshake(api.url, "/events?token=s3cret-token", {})).status_code == 101
    assert (await handshake(api.url, "/events?token=nope", {})).status_code == 401
    nursery.cancel_scope.cancel()


async def test_changes_are_refused_without_a_token_beyond_loopback(nursery: trio.Nursery) -> None:
    api = await start_api(nursery, open_changes=False)
    async with httpx.AsyncClient(base_url=api.url) as client:
        response = await client.post("/restart/web")
    assert response.status_code == 403
    nursery.cancel_scope.cancel()


async def test_stop_and_start_a_service(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        stopped = await client.post("/services/web/stop")
        assert stopped.json()["state"] == "stopped"
        # Stopped on purpose: not unhealthy, and never a liveness failure; not ready, though.
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json()["services"]["web"] == "stopped"
        livez = await client.get("/livez")
        assert livez.status_code == 200
        assert livez.json() == {"status": "alive", "bootId": api.bus.boot_id, "reason": None}
        readyz = await client.get("/readyz")
        assert readyz.status_code == 503
        assert readyz.json() == {"status": "notReady", "notReady": ["web"]}
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["services"] == {"web": False, "flaky": True}
        started = await client.post("/services/web/start")
        assert started.json()["state"] == "running"
        assert (await client.get("/ready")).status_code == 200
        assert (await client.get("/readyz")).json() == {"status": "ready", "notReady": []}
        assert (await client.post("/services/nope/stop")).status_code == 404


async def test_a_service_whose_actor_is_gone_answers_503_at_once(api: Api) -> None:
    """Service actions and logs are messages to the service's process actor: with no actor at
    its address (between restarts, removed) the answer is a clear 503, never a hang."""
    actors = next(s for s in api.control.supervisors if s.name == "process-actors")
    await actors.remove_child("web.actor")
    async with httpx.AsyncClient(base_url=api.url) as client:
        with trio.fail_after(5):
            answers = [
                await client.post("/services/web/restart"),
                await client.post("/services/web/stop"),
                await client.post("/services/web/start"),
                await client.get("/services/web/logs"),
            ]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "actor_unavailable"
            assert "dev8/services/web" in answer.json()["error"]["message"]
        # The service itself was not touched.
        assert (await client.get("/health")).json()["services"]["web"] == "running"


async def test_malformed_bodies_are_400(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        as_json = {"Content-Type": "application/json"}
        broken = await client.post("/restart/web", content=b"{not json", headers=as_json)
        not_object = await client.post("/restart/web", content=b"[1, 2]", headers=as_json)
        fine = await client.post("/restart/web", content=b"{}", headers=as_json)
        # What a form or a text/plain fetch sends (no preflight) is refused.
        form = await client.post("/restart/web", data={"a": "b"})
        untyped = await client.post("/restart/web", content=b"{}")
    assert form.status_code == 415
    assert untyped.status_code == 415
    assert form.json()["error"]["code"] == "unsupported_media_type"
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "bad_request"
    assert not_object.status_code == 400
    assert fine.status_code == 200


async def test_logs_lines_are_bounded_and_validated(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        assert (await client.get("/services/web/logs?lines=0")).status_code == 400
        assert (await client.get("/services/web/logs?lines=abc")).status_code == 400
        assert (await client.get("/services/web/logs?since=-1")).status_code == 400
        response = await client.get("/services/web/logs?lines=5")
        assert response.status_code == 200
        assert response.json() == {"service": "web", "lines": []}
        assert (await client.get("/services/nope/logs")).status_code == 404


async def test_metrics_follow_prometheus_conventions(api: Api) -> None:
    await api.services.restart_child("web")
    async with httpx.AsyncClient(base_url=api.url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'dev8_service_up{service="web"} 1.0' in text
    assert 'dev8_service_restarts_total{reason="manual",service="web"} 1.0' in text
    assert "dev8_event_subscribers 0.0" in text
    assert "process_resident_memory_bytes" in text


async def test_openapi_document_lists_exactly_the_routes_the_app_serves(api: Api) -> None:
    from dev8.api._app import create_app as build
    from dev8.api._openapi import openapi_document

    async with httpx.AsyncClient(base_url=api.url) as client:
        served = (await client.get("/openapi.json")).json()
    assert served == openapi_document()
    control = Control(
        bus=api.bus, root=api.services, services=api.services, environment_id="e", user_id="u"
    )
    app = build(control)
    routes = {
        (
            re.sub(r"<(?:path:)?(\w+)>", r"{\1}", rule.rule),
            "get" if rule.websocket else method.lower(),
        )
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, item in served["paths"].items() for method in item}
    assert routes == documented


async def test_a_slow_subscriber_is_dropped_and_does_not_delay_others(api: Api) -> None:
    # A subscriber that never reads: its socket buffers fill, its bus buffer overflows, and it is
    # closed with 4001 while a reading subscriber sees every event.
    async with (
        trio_websocket.open_websocket_url(f"{api.ws_url}/events") as slow,
        trio_websocket.open_websocket_url(f"{api.ws_url}/events") as fast,
    ):
        await trio.testing.wait_all_tasks_blocked()
        first = api.bus.last_seq
        from actors import Event

        # Paced so the reading client keeps up; the silent one's socket and buffer fill up.
        seen: list[int] = []
        with trio.fail_after(60):
            for _ in range(500):
                for _ in range(100):
                    api.bus.publish(Event(source="test"))
                while len(seen) < api.bus.last_seq - first:
                    seen.extend(e["seq"] for e in events_in(await fast.get_message()))
                if api.bus.dropped_subscribers:
                    break
        assert api.bus.dropped_subscribers == 1
        assert seen == list(range(first + 1, api.bus.last_seq + 1))
        with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await drain(slow)
        assert closed.value.reason is not None
        assert closed.value.reason.code == 4001
    assert api.bus.dropped_subscribers >= 1
    gc.collect()  # let the leaked socket's warning fire here, under this test's filter


async def drain(ws: trio_websocket.WebSocketConnection) -> None:
    while True:
        await ws.get_message()


async def test_hundreds_of_subscribers_all_receive_a_burst(api: Api) -> None:
    subscribers, burst = 500, 20
    counts = [0] * subscribers
    ready = trio.Semaphore(0)

    async def subscribe(index: int) -> None:
        async with trio_websocket.open_websocket_url(f"{api.ws_url}/events?kind=event") as ws:
            ready.release()
            while counts[index] < burst:
                counts[index] += len(events_in(await ws.get_message()))

    from actors import Event

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(subscribers):
                nursery.start_soon(subscribe, index)
            for _ in range(subscribers):
                await ready.acquire()
            # The server subscribes before it completes the handshake.
            assert api.control.websocket_clients == subscribers
            for _ in range(burst):
                api.bus.publish(Event(source="test"))
    assert counts == [burst] * subscribers


async def test_the_young_generation_grows_with_the_subscribers_and_returns(api: Api) -> None:
    # A wake of many subscribers holds objects in flight; the collector's youngest generation
    # is sized above them while they are connected and back to what it was once they leave.
    from dev8.api._collector import YOUNG_PER_SUBSCRIBER

    before = gc.get_threshold()
    subscribers = 2 * before[0] // YOUNG_PER_SUBSCRIBER
    async with trio.open_nursery() as nursery:
        connected = trio.Semaphore(0)
        leave = trio.Event()

        async def subscribe() -> None:
            async with trio_websocket.open_websocket_url(f"{api.ws_url}/events"):
                connected.release()
                await leave.wait()

        for _ in range(subscribers):
            nursery.start_soon(subscribe)
        with trio.fail_after(30):
            for _ in range(subscribers):
                await connected.acquire()
        assert api.control.websocket_clients == subscribers
        assert gc.get_threshold() == (
            subscribers * YOUNG_PER_SUBSCRIBER,
            before[1],
            before[2],
        )
        leave.set()
    with trio.fail_after(10):
        await trio.testing.wait_all_tasks_blocked()  # the server is in this run: its handlers
    assert api.control.websocket_clients == 0  # ...have seen the clients leave
    assert gc.get_threshold() == before


async def test_polled_routes_answer_without_quart_and_as_quart_does(nursery: trio.Nursery) -> None:
    # The front answers plain GETs of the probes and /status itself; a request with a body header
    # goes through Quart's route for the same path: both answers are the same bytes and headers.
    api = await start_api(nursery, token="t0ken")
    auth = {"Authorization": "Bearer t0ken"}
    async with httpx.AsyncClient(base_url=api.url) as client:
        for path in ("/livez", "/readyz", "/health", "/status"):
            fast = await client.get(path, headers=auth)
            assert api.app._quart is None, f"{path} built the Quart app"
            slow = await client.get(path, headers={**auth, "Content-Length": "0"})
            assert api.app._quart is not None
            assert (fast.status_code, fast.headers["content-type"]) == (
                slow.status_code,
                slow.headers["content-type"],
            )
            # Times move on between the two: the same document, key for key.
            assert fast.json().keys() == slow.json().keys(), path
            api.app._quart = None
        # A refusal is Quart's to give: no token on /status is its 401 JSON error.
        refused = await client.get("/status")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
