"""The OpenAPI document of the management API; a test checks it against the app's routes."""

from __future__ import annotations

from typing import Any

import dev8
from dev8 import documents
from dev8.documents import Schemas

#: The documents the paths refer to (by ``$ref``), by name: their schemas are generated into
#: ``components`` each time the document is built. Filled at import, constant afterwards.
_REFERENCED: dict[str, type[Any]] = {}


def _ref(cls: type[Any]) -> dict[str, Any]:
    _REFERENCED[cls.__name__] = cls
    return {"$ref": f"#/components/schemas/{cls.__name__}"}


_OPENAPI_DOCUMENT = {
    "type": "object",
    "required": ["openapi", "info", "paths", "components"],
    "properties": {
        "openapi": {"type": "string"},
        "info": {
            "type": "object",
            "required": ["title", "version"],
            "properties": {"title": {"type": "string"}, "version": {"type": "string"}},
        },
        "paths": {
            "type": "object",
            "description": "OpenAPI 3.0 path items",
            "additionalProperties": {"type": "object"},
        },
        "components": {
            "type": "object",
            "description": "OpenAPI 3.0 components",
            "additionalProperties": {"type": "object"},
        },
    },
}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_content(description: str) -> dict[str, Any]:
    return json_content(_ref(documents.ErrorDocument), description)


def document_content(cls: type[Any], description: str) -> dict[str, Any]:
    return json_content(_ref(cls), description)


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_SERVICE = {**_NAME, "name": "service"}
#: Any route may answer this (a DNS-rebinding defence on loopback).
_HOST_ERRORS = {
    "403": error_content("the Host header names a host this API does not answer to"),
}
#: Answers any state-changing route may give before its handler runs.
_AUTH_ERRORS = {
    "400": error_content("the body is not a JSON object, or a parameter is malformed"),
    "401": error_content("missing or wrong bearer token"),
    "403": error_content(
        "a cross-origin browser request, a Host this API does not answer to, or changes need "
        "a token when the API listens beyond loopback"
    ),
    "413": error_content("the body is larger than the API accepts"),
    "415": error_content("a body that is not application/json"),
}
#: Once a token is configured every read needs it too, but the health probes.
_READ_ERRORS = {"401": error_content("missing or wrong bearer token"), **_HOST_ERRORS}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


#: The service's process actor is between restarts, its mailbox is full, or it did not answer.
_ACTOR_UNAVAILABLE = error_content(
    "the service's process actor is between restarts or busy (actor_unavailable): try again"
)


def _action(summary: str, parameter: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [parameter],
            "security": _SECURED,
            "responses": {
                "200": document_content(
                    documents.ActionDocument, "the service's state after the action"
                ),
                "404": error_content("no such service; `known` lists the names"),
                "409": json_content(
                    {
                        "oneOf": [
                            _ref(documents.ErrorDocument),
                            _ref(documents.WaitingErrorDocument),
                        ]
                    },
                    "the service is in the wrong state (`state`), or the services still wait "
                    "for their required secrets (waiting_for_secrets)",
                ),
                "503": _ACTOR_UNAVAILABLE,
                **_AUTH_ERRORS,
            },
        }
    }


def _read(summary: str, cls: type[Any], description: str, **more: Any) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "security": _SECURED,
            "responses": {"200": document_content(cls, description), **_READ_ERRORS},
            **more,
        }
    }


def _probe(
    summary: str, cls: type[Any], ok: str, failing: str, *, secured: bool = False
) -> dict[str, Any]:
    security = {"security": _SECURED} if secured else {}
    return {
        "get": {
            "summary": summary,
            **security,
            "responses": {
                "200": document_content(cls, ok),
                "503": document_content(cls, failing),
                **(_READ_ERRORS if secured else _HOST_ERRORS),
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    """The whole document; every body and every event is a schema of ``dev8.documents``."""
    paths = _paths()
    schemas = Schemas()
    for cls in (*_REFERENCED.values(), documents.LaggedCloseDocument):
        schemas.document(cls)
    from dev8.event_catalog import event_schemas  # noqa: PLC0415 - not needed at start

    schemas.components["Event"] = event_schemas(schemas)
    return {
        "openapi": "3.0.3",
        "info": {"title": "dev8 management API", "version": dev8.__version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": dict(sorted(schemas.components.items())),
        },
        "paths": paths,
    }


def _paths() -> dict[str, Any]:
    return {
        "/": {
            "get": {
                "summary": "The live dashboard (a static page: it asks for the token)",
                "responses": {
                    "200": {
                        "description": "an HTML page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    **_HOST_ERRORS,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": _SECURED,
                "responses": {
                    "200": json_content(_OPENAPI_DOCUMENT, "the OpenAPI document"),
                    **_READ_ERRORS,
                },
            }
        },
        "/health": _probe(
            "Workspace health in the seed's shape",
            documents.HealthDocument,
            "every service is running and ready",
            "some service is not running or not ready",
        ),
        "/livez": _probe(
            "Liveness: dev8 and its tree are alive (a service's state never matters); no token "
            "needed",
            documents.LivenessDocument,
            "alive",
            "wedged: restart the container",
        ),
        "/readyz": _probe(
            "Readiness: the critical services (all when none is marked) are ready; no token needed",
            documents.ReadinessDocument,
            "ready to take users",
            "`notReady` names what is not ready",
        ),
        "/ready": _probe(
            "Readiness of every service",
            documents.ReadyDocument,
            "all services ready",
            "some service is not ready",
            secured=True,
        ),
        "/status": _read(
            "The whole supervision tree", documents.StatusDocument, "the status snapshot"
        ),
        "/connections": _read(
            "Active connections per service and the last activity",
            documents.ConnectionsDocument,
            "connection counts and peers",
        ),
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": _SECURED,
                "responses": {
                    "200": {
                        "description": "the Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_READ_ERRORS,
                },
            }
        },
        "/services/{name}/logs": {
            "get": {
                "summary": "Recent captured output of a service",
                "security": _SECURED,
                "parameters": [
                    _NAME,
                    {
                        "name": "lines",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "responses": {
                    "200": document_content(documents.LogsDocument, "the last lines, oldest first"),
                    "400": error_content("lines or since malformed; `parameter` names it"),
                    "404": error_content("no such service; `known` lists the names"),
                    "503": _ACTOR_UNAVAILABLE,
                    **_READ_ERRORS,
                },
            }
        },
        "/restart/{service}": _action("Restart a service now", _SERVICE),
        "/services/{name}/restart": _action("Restart a service now", _NAME),
        "/services/{name}/stop": _action("Stop a service (it stays stopped)", _NAME),
        "/services/{name}/start": _action("Start a stopped or fatal service", _NAME),
        "/reload": {
            "post": {
                "summary": "Re-read the config: start added, stop removed, restart changed",
                "description": (
                    "Answered at once with the plan, before it is applied; the pass publishes "
                    "`reload_started`, then `reload_finished` or `reload_failed` (events). "
                    "Reloads that arrive while a pass runs are coalesced into the next pass."
                ),
                "security": _SECURED,
                "responses": {
                    "202": document_content(
                        documents.ReloadDocument, "accepted: what the new config will change"
                    ),
                    "409": error_content("dev8 was not started from a config file"),
                    "422": error_content("the new config is invalid; nothing changed"),
                    "503": error_content("the reloader did not take the reload in time"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/secrets/refresh": {
            "post": {
                "summary": "Re-read the secrets now",
                "security": _SECURED,
                "responses": {
                    "200": document_content(
                        documents.SecretsRefreshDocument, "what was fetched and rewritten"
                    ),
                    "409": json_content(
                        {
                            "oneOf": [
                                _ref(documents.ErrorDocument),
                                _ref(documents.SecretsRefreshErrorDocument),
                            ]
                        },
                        "no secret provider is configured (not_available), a required secret "
                        "does not exist (secret_missing) or a file could not be written "
                        "(secrets_not_written)",
                    ),
                    "503": document_content(
                        documents.SecretsRefreshErrorDocument,
                        "the store failed (secrets_unavailable: throttled, timeout, credential, "
                        "an HTTP status), no pass finished in time (secrets_timeout), or the "
                        "rotator did not answer (actor_unavailable: crashed mid-pass, restarting)",
                    ),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/events": {
            "get": {
                "summary": "Websocket: the event stream",
                "description": (
                    "Each message is one event (#/components/schemas/Event) or a JSON array of "
                    "events, oldest first. A subscriber that falls behind is closed with code "
                    "4001 and a JSON reason (#/components/schemas/LaggedCloseDocument); resume "
                    "with since=resumeFrom. A resume point that is gone, or from another boot "
                    "of dev8 (bootId), is answered first by a resync event whose data is the "
                    "/status document."
                ),
                "parameters": [
                    {"name": n, "in": "query", "required": False, "schema": schema}
                    for n, schema in (
                        ("since", {"type": "integer", "minimum": 0}),
                        ("bootId", {"type": "string"}),
                        ("kind", {"type": "string"}),
                        ("service", {"type": "string"}),
                    )
                ],
                "security": _SECURED,
                "x-messages": {"$ref": "#/components/schemas/Event"},
                "responses": {
                    "101": {"description": "switching to the websocket protocol"},
                    "400": error_content("since is malformed, or not a websocket handshake"),
                    "401": error_content("missing or wrong bearer token"),
                    "403": error_content("the Origin or the Host is not allowed"),
                },
            }
        },
    }
