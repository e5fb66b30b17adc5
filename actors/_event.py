"""Events: what happened in the tree, as typed values that a bus can number and fan out."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs


@attrs.frozen(kw_only=True)
class Event:
    """Base of every event.

    Subclasses are frozen attrs classes that set ``kind`` (a past-tense snake_case name such as
    ``child_exited``). ``source`` is the path of the actor it is about (``root/services/web``).
    """

    kind: ClassVar[str] = "event"
    source: str = ""

    def data(self) -> dict[str, Any]:
        """The event's own fields, JSON-ready, without ``source``."""
        fields = attrs.asdict(self, recurse=True)
        fields.pop("source", None)
        return fields
