"""Answers built from ``dev8.documents``: the one place a route turns a document into a body."""

from __future__ import annotations

from typing import Any

from .. import documents
from ._http import Response


def error_answer(status: int, code: str, message: str, **extra: Any) -> Response:
    """A JSON error in the one shape of ``dev8.documents.ErrorDocument`` (every key present)."""
    return Response(status, documents.to_json(documents.error_document(code, message, **extra)))
