"""One contract: every body and event the API sends matches /openapi.json, which types them fully.

The schemas come from ``dev8.documents``; these tests hold real answers of a real server to them,
and hold the schemas themselves to the conventions (camelCase keys, every key required, RFC 3339
UTC times, no untyped objects).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import jsonschema
import pytest
import trio
from support.api_harness import Api, start_api

from actors import Envelope
from dev8 import documents
from dev8.api._openapi import openapi_document
from dev8.event_catalog import event_classes

CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")


def json_schema(schema: Any) -> Any:
    """OpenAPI 3.0's ``nullable`` as JSON Schema (``type: [..., "null"]``)."""
    if isinstance(schema, list):
        return [json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: json_schema(value) for key, value in schema.items() if key != "nullable"}
    if schema.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def rfc3339_utc(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parsed = datetime.fromisoformat(value)
    return parsed.utcoffset() == timedelta(0) and "T" in value


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


def validate(document: dict[str, Any], instance: Any, ref: dict[str, Any]) -> None:
    root = {**json_schema({"components": document["components"]}), **json_schema(ref)}
    validator = jsonschema.Draft202012Validator(root, format_checker=FORMATS)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, (
        "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])
        + "\n"
        + json.dumps(instance)[:2000]
    )


def response_schema(document: dict[str, Any], path: str, method: str, status: int) -> Any:
    response = document["paths"][path][method]["responses"][str(status)]
    return response["content"]["application/json"]["schema"]


def walk_schemas(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from walk_schemas(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk_schemas(value, f"{where}/{index}")


# ----------------------------------------------------------------------- the schemas themselves


def test_every_document_schema_is_closed_camel_case_and_requires_every_key(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    assert {"StatusDocument", "HealthDocument", "ErrorDocument", "Event"} <= set(schemas)
    objects = 0
    for where, node in walk_schemas(schemas):
        if node.get("type") != "object" or where.startswith("/OpenApi"):
            continue
        objects += 1
        assert "properties" in node or isinstance(node.get("additionalProperties"), dict), (
            f"untyped object at {where}"
        )
        if "properties" in node:
            assert node.get("additionalProperties") is False, where
            assert node["required"] == list(node["properties"]), f"{where}: a key may be missing"
            bad = [name for name in node["properties"] if not CAMEL.match(name)]
            assert not bad, f"{where}: not camelCase: {bad}"
    assert objects > 40


def test_every_time_is_a_date_time_and_every_json_answer_has_a_typed_schema(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    times = {
        where
        for where, node in walk_schemas(schemas)
        if node.get("format") == "date-time"
        or (isinstance(node.get("allOf"), list) and node.get("format") == "date-time")
    }
    for expected in ("lastCheck", "started", "since", "lastActivity", "time", "lastFetch"):
        assert any(where.endswith(f"/{expected}") for where in times), expected
    # No time left as an epoch number: the tree's `since` was one.
    assert schemas["TreeNode"]["properties"]["since"]["format"] == "date-time"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                content = response.get("content", {})
                if "application/json" in content:
                    schema = content["application/json"]["schema"]
                    assert schema != {"type": "object"}, f"{method} {path} {status} is untyped"


def test_every_change_documents_the_guard_answers(document: dict[str, Any]) -> None:
    probes = {"/health", "/livez", "/readyz", "/"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = set(operation["responses"])
            assert "403" in responses, path  # the Host allow-list applies to every route
            if method == "post":
                assert {"400", "401", "403", "413", "415"} <= responses, path
            if path not in probes:  # once a token is set, every other route needs it
                assert operation["security"] == [{"bearer": []}], path
                assert "401" in responses, path
    assert {"404"} <= set(document["paths"]["/services/{name}/restart"]["post"]["responses"])
    assert {"409"} <= set(document["paths"]["/reload"]["post"]["responses"])
    events = document["paths"]["/events"]["get"]
    assert events["x-messages"] == {"$ref": "#/components/schemas/Event"}
    assert {"400", "401", "403"} <= set(events["responses"])


def test_every_kind_of_event_has_a_typed_schema(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    kinds = set()
    for option in schemas["Event"]["oneOf"]:
        event = schemas[option["$ref"].rsplit("/", 1)[1]]
        assert event["required"] == ["seq", "bootId", "time", "kind", "source", "data"]
        (kind,) = event["properties"]["kind"]["enum"]
        kinds.add(kind)
    expected = {cls.kind for cls in event_classes()} | {"resync"}
    assert kinds == expected
    assert {"child_started", "child_exited", "probe_failed", "secret_rotated"} <= kinds
    exited = schemas["ChildExitedData"]["properties"]
    assert exited["details"] == {"$ref": "#/components/schemas/ExitDetails"}
    lagged = schemas["LaggedCloseDocument"]
    assert lagged["required"] == ["resumeFrom", "bootId"]


# ----------------------------------------------------------------- real answers against them


@pytest.fixture
async def api(nursery: trio.Nursery) -> AsyncIterator[Api]:
    yield await start_api(nursery)
    nursery.cancel_scope.cancel()


async def test_real_answers_match_their_schemas(api: Api, document: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        await client.post("/services/web/restart")
        api.crash["flaky"].set()
        await trio.testing.wait_all_tasks_blocked()
        reads = {
            "/health": 503,  # flaky is fatal now
            "/ready": 503,
            "/status": 200,
            "/connections": 200,
            "/services/{name}/logs": 200,
        }
        for path, status in reads.items():
            response = await client.get(path.replace("{name}", "web"))
            assert response.status_code == status, path
            validate(document, response.json(), response_schema(document, path, "get", status))
        status_body = (await client.get("/status")).json()
        flaky = status_body["services"]["flaky"]
        assert flaky["lastExit"]["details"] == {
            "signal": None,
            "exitCode": None,
            "lastOutput": None,
        }
        assert flaky["probes"] is None
        assert flaky["pid"] is None
        assert isinstance(status_body["uptimeSeconds"], float)
        assert all(isinstance(n["since"], str) for n in status_body["tree"]["children"])

        restarted = await client.post("/services/web/restart")
        validate(
            document,
            restarted.json(),
            response_schema(document, "/services/{name}/restart", "post", 200),
        )
        for path, status in (("/services/nope/restart", 404), ("/restart/nope", 404)):
            response = await client.post(path)
            assert response.status_code == status
            validate(document, response.json(), {"$ref": "#/components/schemas/ErrorDocument"})
        bad = await client.get("/services/web/logs?lines=0")
        assert bad.status_code == 400
        validate(document, bad.json(), {"$ref": "#/components/schemas/ErrorDocument"})


async def test_events_and_resync_match_their_schemas(api: Api, document: dict[str, Any]) -> None:
    seen: list[Envelope] = []
    api.bus.add_listener(seen.append)
    await api.services.restart_child("web")
    api.crash["flaky"].set()
    await trio.testing.wait_all_tasks_blocked()
    kinds = {envelope.event.kind for envelope in seen}
    assert {"child_exited", "child_started", "restart_scheduled", "child_gave_up"} <= kinds
    event = {"$ref": "#/components/schemas/Event"}
    for envelope in seen:
        wire = documents.event_document(envelope, api.control.boot_id)
        validate(document, wire, event)
        assert wire["bootId"] == api.control.boot_id
    started = next(e for e in seen if e.event.kind == "child_started")
    assert documents.event_data(started.event)["info"] == {
        "pid": None,
        "user": None,
        "exitCode": None,
        "strategy": None,
        "service": None,
        "binds": None,
    }
    resync = documents.resync_document(
        seq=api.bus.last_seq,
        boot_id=api.control.boot_id,
        time=seen[-1].time,
        status=api.control.status_document(),
    )
    validate(document, json.loads(json.dumps(resync)), event)


def test_an_event_is_encoded_once_in_camel_case_and_logs_keep_snake_case() -> None:
    from actors import ChildExited, EventBus

    bus = EventBus()
    envelope: Envelope = bus.publish(
        ChildExited(
            source="dev8/services/web",
            child="web",
            reason="error",
            abnormal=True,
            details={"exit_code": 3, "signal": None},
        )
    )
    encode = documents.EventEncoder("boot-1")
    text = encode(envelope)
    assert encode(envelope) is text  # built once for every subscriber
    wire = json.loads(text)
    assert wire["bootId"] == "boot-1"
    assert wire["data"]["details"] == {"signal": None, "exitCode": 3, "lastOutput": None}
    assert wire["data"]["error"] is None  # present, null
    # The log line (and anything else reading the event itself) keeps the Python names.
    assert envelope.event.data()["details"] == {"exit_code": 3, "signal": None}
