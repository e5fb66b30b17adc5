"""JSON answers and strict query parameters: the shapes every route shares."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dev8 import documents

if TYPE_CHECKING:
    from quart import Response


class BadParameter(ValueError):
    """A query parameter that is not what the route expects; answered 400 naming it."""

    def __init__(self, name: str, expected: str) -> None:
        super().__init__(f"{name} must be {expected}")
        self.name = name


def json_response(body: Any, status: int = 200) -> Response:
    return json_text_response(json.dumps(body), status)


def json_text_response(text: str | bytes, status: int = 200) -> Response:
    from quart import Response  # noqa: PLC0415 - Quart loads with the first route it serves

    return Response(text, status=status, content_type="application/json")


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    parameter: str | None = None,
    known: Iterable[str] | None = None,
    state: str | None = None,
) -> Response:
    """Every error in the one shape of ``dev8.documents.ErrorDocument`` (every key present)."""
    document = documents.error_document(
        code, message, parameter=parameter, known=known, state=state
    )
    return json_text_response(documents.to_json(document), status)


def whole_number(
    args: Mapping[str, str],
    name: str,
    *,
    default: int | None = None,
    low: int = 0,
    high: int = 2**53,
) -> int | None:
    """``args[name]`` as an int in ``[low, high]``, ASCII digits only.

    ``str.isdigit()`` also accepts "²" and other Unicode digits that ``int()`` refuses.
    """
    text = args.get(name)
    if text is None:
        return default
    # Length first: int() refuses (ValueError) strings of more than 4,300 digits.
    if not (text.isascii() and text.isdigit()) or len(text) > 16 or not low <= int(text) <= high:
        raise BadParameter(name, f"a whole number from {low} to {high}")
    return int(text)
