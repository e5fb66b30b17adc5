"""attrs validators shared by the sections: numbers in range, names, paths."""

import math
import re
from collections.abc import Callable
from typing import Any

import attrs

from dev8.config.errors import Invalid


def number(
    *, ge: float | None = None, gt: float | None = None, lt: float | None = None
) -> Callable[[Any, "attrs.Attribute[Any]", float], None]:
    """A range check whose message says what was expected."""
    bounds = []
    if ge is not None:
        bounds.append(f">= {ge:g}")
    if gt is not None:
        bounds.append(f"> {gt:g}")
    if lt is not None:
        bounds.append(f"< {lt:g}")

    def check(_inst: Any, attribute: "attrs.Attribute[Any]", value: float) -> None:
        ok = (
            math.isfinite(value)
            and (ge is None or value >= ge)
            and (gt is None or value > gt)
            and (lt is None or value < lt)
        )
        if not ok:
            what = "an integer" if isinstance(value, int) else "a number"
            raise Invalid(f"expected {what} {' and '.join(bounds)}", value, at=(attribute.name,))

    return check


_BAD_NAME_CHARS = re.compile(r"[\s\x00-\x1f\x7f:/]")


def check_name(_inst: Any, attribute: "attrs.Attribute[Any]", value: str | None) -> None:
    """User names and ids: non-empty, no whitespace, control characters, ':' or '/'."""
    if value is not None and (not value or len(value) > 256 or _BAD_NAME_CHARS.search(value)):
        raise Invalid(
            "expected a non-empty name without spaces, ':' or '/'", value, at=(attribute.name,)
        )


def _check_path(_inst: Any, attribute: "attrs.Attribute[Any]", value: str | None) -> None:
    if value is not None and (not value or "\0" in value):
        raise Invalid("expected a non-empty path", value, at=(attribute.name,))


# Field metadata: a path that load_config resolves against the config file's directory.
IS_PATH = "dev8.path"


def path_field(default: str | None) -> Any:
    return attrs.field(default=default, validator=_check_path, metadata={IS_PATH: True})


def optional_number(
    *, ge: float | None = None, gt: float | None = None, lt: float | None = None
) -> Callable[[Any, "attrs.Attribute[Any]", float | None], None]:
    check = number(ge=ge, gt=gt, lt=lt)

    def optional(inst: Any, attribute: "attrs.Attribute[Any]", value: float | None) -> None:
        if value is not None:
            check(inst, attribute, value)

    return optional
