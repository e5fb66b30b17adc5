"""Every kind of event dev8 publishes, found where each is declared: for /openapi.json.

Above the modules that publish events (it imports them, none imports it), so the catalogue never
closes an import cycle; imported only when the API document is built, never at start.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import actors
from actors import Event
from dev8 import chaos, reload
from dev8.connections import idle, tracker
from dev8.documents import Schemas
from dev8.health import probers
from dev8.monitoring import alerts
from dev8.resources import sampler
from dev8.secrets import events as secret_events

#: The modules that declare events: the actors library's life-cycle events, then dev8's own.
EVENT_MODULES: tuple[ModuleType, ...] = (
    actors,
    probers,
    tracker,
    secret_events,
    chaos,
    alerts,
    idle,
    reload,
    sampler,
)


def event_classes() -> list[type[Event]]:
    """One class per kind, sorted by kind."""
    found: dict[str, type[Event]] = {}
    for module in EVENT_MODULES:
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Event) and value is not Event:
                found.setdefault(value.kind, value)
    return [found[kind] for kind in sorted(found)]


def event_schemas(schemas: Schemas) -> dict[str, Any]:
    """``oneOf`` every kind of event, and resync; registered in ``schemas``."""
    kinds = [schemas.event(cls) for cls in event_classes()] + [schemas.resync()]
    return {"oneOf": kinds}
