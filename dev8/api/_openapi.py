"""The OpenAPI document of the management API; a test checks it against the app's routes."""

from __future__ import annotations

from typing import Any

import dev8

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "known": {"type": "array", "items": {"type": "string"}},
                "state": {"type": "string"},
            },
        }
    },
}

_STATE = {
    "type": "string",
    "enum": ["starting", "running", "backoff", "stopping", "stopped", "exited", "fatal"],
}

_HEALTH = {
    "type": "object",
    "required": ["healthy", "lastCheck", "services", "uptime"],
    "properties": {
        "healthy": {"type": "boolean"},
        "lastCheck": {"type": "string", "format": "date-time"},
        "services": {"type": "object", "additionalProperties": _STATE},
        "uptime": {"type": "string", "pattern": "^([0-9]+h)?([0-9]+m)?[0-9]+s$"},
    },
}

_READY = {
    "type": "object",
    "required": ["ready", "services"],
    "properties": {
        "ready": {"type": "boolean"},
        "services": {"type": "object", "additionalProperties": {"type": "boolean"}},
    },
}

_LIVEZ = {
    "type": "object",
    "required": ["status", "bootId"],
    "properties": {
        "status": {"type": "string", "enum": ["alive", "wedged"]},
        "bootId": {"type": "string"},
        "reason": {"type": "string"},
    },
}

_READYZ = {
    "type": "object",
    "required": ["status", "notReady"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "notReady"]},
        "notReady": {"type": "array", "items": {"type": "string"}},
    },
}

_ACTION = {
    "type": "object",
    "required": ["service", "state", "restarts"],
    "properties": {
        "service": {"type": "string"},
        "state": _STATE,
        "restarts": {"type": "integer", "minimum": 0},
    },
}

_OBJECT = {"type": "object"}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_content(description: str) -> dict[str, Any]:
    return json_content(_ERROR, description)


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_SERVICE = {**_NAME, "name": "service"}
_AUTH_ERRORS = {
    "401": error_content("missing or wrong bearer token"),
    "403": error_content("changes need a token when the API listens beyond loopback"),
    "400": error_content("the body is not valid JSON or not an object"),
}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


def _action(summary: str, parameter: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [parameter],
            "security": _SECURED,
            "responses": {
                "200": json_content(_ACTION, "the service's state after the action"),
                "404": error_content("no such service; `known` lists the names"),
                **_AUTH_ERRORS,
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "dev8 management API", "version": dev8.__version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/": {
                "get": {
                    "summary": "The live dashboard",
                    "responses": {
                        "200": {
                            "description": "an HTML page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": json_content(_OBJECT, "the OpenAPI document")},
                }
            },
            "/health": {
                "get": {
                    "summary": "Workspace health in the platform's shape",
                    "responses": {
                        "200": json_content(_HEALTH, "every service is running and ready"),
                        "503": json_content(_HEALTH, "some service is not running or not ready"),
                    },
                }
            },
            "/livez": {
                "get": {
                    "summary": "Liveness: dev8 and its tree are alive (a service's state never "
                    "matters); no token needed",
                    "responses": {
                        "200": json_content(_LIVEZ, "alive"),
                        "503": json_content(_LIVEZ, "wedged: restart the container"),
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: the critical services (all when none is marked) are "
                    "ready; no token needed",
                    "responses": {
                        "200": json_content(_READYZ, "ready to take users"),
                        "503": json_content(_READYZ, "`notReady` names what is not ready"),
                    },
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness of every service",
                    "responses": {
                        "200": json_content(_READY, "all services ready"),
                        "503": json_content(_READY, "some service is not ready"),
                    },
                }
            },
            "/status": {
                "get": {
                    "summary": "The whole supervision tree",
                    "responses": {"200": json_content(_OBJECT, "the status snapshot")},
                }
            },
            "/connections": {
                "get": {
                    "summary": "Active connections per service and the last activity",
                    "responses": {"200": json_content(_OBJECT, "connection counts and peers")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "the Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/services/{name}/logs": {
                "get": {
                    "summary": "Recent captured output of a service",
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
                        "200": json_content(
                            {
                                "type": "object",
                                "required": ["service", "lines"],
                                "properties": {
                                    "service": {"type": "string"},
                                    "lines": {"type": "array", "items": _OBJECT},
                                },
                            },
                            "the last lines, oldest first",
                        ),
                        "400": error_content("lines out of range"),
                        "404": error_content("no such service"),
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
                    "security": _SECURED,
                    "responses": {
                        "200": json_content(_OBJECT, "what changed"),
                        "409": error_content("dev8 was not started from a config file"),
                        "422": error_content("the new config is invalid; nothing changed"),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/secrets/refresh": {
                "post": {
                    "summary": "Re-read the secrets now",
                    "security": _SECURED,
                    "responses": {
                        "200": json_content(_OBJECT, "every secret fetched; what was rewritten"),
                        "409": error_content(
                            "no secret provider is configured, a required secret does not "
                            "exist (secret_missing) or a file could not be written"
                        ),
                        "503": error_content(
                            "the store failed (secrets_unavailable: throttled, timeout, "
                            "credential, HTTP status) or no pass finished in time"
                        ),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/events": {
                "get": {
                    "summary": "Websocket: the event stream; a message is one JSON event, or a "
                    "JSON array of events when the subscriber is behind",
                    "parameters": [
                        {"name": n, "in": "query", "required": False, "schema": {"type": t}}
                        for n, t in (
                            ("since", "integer"),
                            ("bootId", "string"),
                            ("kind", "string"),
                            ("service", "string"),
                        )
                    ],
                    "security": _SECURED,
                    "responses": {
                        "101": {"description": "switching to the websocket protocol"},
                        "400": error_content("a malformed query parameter (named)"),
                        "401": error_content("missing or wrong bearer token"),
                        "403": error_content("a browser page of another origin"),
                    },
                }
            },
        },
    }
