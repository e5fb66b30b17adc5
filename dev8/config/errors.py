"""How a bad configuration is told: `ConfigError`, and cattrs' failures turned into one.

Values under secret-looking keys are described ('a string'), never echoed."""

import difflib
import reprlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import attrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)

SECRET_KEY_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")
REDACTED = "***"

KeyPath: TypeAlias = tuple[str | int, ...]


class ConfigError(Exception):
    """A configuration that dev8 refuses to run with; `str()` is the one line to show."""

    def __init__(
        self, source: str, path: str, message: str, *, others: Sequence["ConfigError"] = ()
    ) -> None:
        super().__init__(source, path, message)
        self.source = source
        self.path = path
        self.message = message
        # Further problems found in the same pass, for a CLI that wants to list them all.
        self.others = tuple(others)

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"config error in {self.source}: {where}{self.message}"


NO_VALUE: Any = object()  # an error that has no offending value to show


class Invalid(ValueError):
    """Raised by our hooks and validators; the offending value is kept apart so that values
    under secret-looking keys are never echoed."""

    def __init__(self, expected: str, value: Any = NO_VALUE, *, at: KeyPath = ()) -> None:
        # str() (seen when a Config built in code is invalid) names the key, never the value.
        super().__init__(f"{format_path(at)}: {expected}" if at else expected)
        self.expected = expected
        self.value = value
        self.at = at  # sub-path below the attribute or mapping entry being structured


class InvalidKey(Invalid):
    """A mapping key of the wrong type (YAML `on:` is the boolean True, not "on")."""


_short_repr = reprlib.Repr()
_short_repr.maxstring = 60
_short_repr.maxother = 60
_short_repr.maxlevel = 2


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if _holds_secret_key(value):
        return kind_of(value)  # `env: [{GITHUB_TOKEN: ...}]` must not echo the token
    return _short_repr.repr(value)


def _holds_secret_key(value: Any, depth: int = 0) -> bool:
    """Whether a mapping anywhere inside ``value`` has a secret-looking key."""
    if depth > _short_repr.maxlevel:
        return False
    if isinstance(value, Mapping):
        items: Any = value.items()
        return any(looks_secret(key) or _holds_secret_key(item, depth + 1) for key, item in items)
    if isinstance(value, list | tuple):
        return any(_holds_secret_key(item, depth + 1) for item in value)
    return False


_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "null"),
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (Mapping, "a mapping"),
    ((list, tuple), "a list"),
)


def kind_of(value: Any) -> str:
    """What a value is, without showing it."""
    for types_, kind in _KINDS:
        if isinstance(value, types_):
            return kind
    return f"a {type(value).__name__}"


def looks_secret(key: object) -> bool:
    upper = str(key).upper()
    return any(word in upper for word in SECRET_KEY_WORDS)


def _unknown_key_message(key: object, cl: type[Any]) -> str:
    names = [f.name for f in attrs.fields(cl)]
    close = difflib.get_close_matches(str(key).lower(), names, n=1)
    # DEV8_API_BIND: one underscore where the nesting needs two.
    close = close or [n for n in names if str(key).lower().startswith(f"{n}_")][:1]
    return f"{UNKNOWN} (did you mean {close[0]!r}?)" if close else UNKNOWN


MISSING = "required key missing"
UNKNOWN = "unknown key"


def flatten(exc: BaseException, path: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    """Walk cattrs' exception groups (and their notes) into (key path, message) pairs."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            # Notes name attributes or mapping keys (our only list hook reports its own index).
            step = note.name if hasattr(note, "name") else note.index
            yield from flatten(sub, (*path, step))
        for sub in without:
            yield from flatten(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields, key=str):
            yield (*path, str(key)), _unknown_key_message(key, exc.cl)
    elif isinstance(exc, Invalid):
        where = (*path, *exc.at)
        shown = not any(looks_secret(step) for step in where)
        if shown and len(where) >= 2 and where[-2] == "env":
            shown = False  # environment values are often secrets
        got = _describe(exc.value) if shown else kind_of(exc.value)
        prefix = "invalid key: " if isinstance(exc, InvalidKey) else ""
        if exc.value is NO_VALUE:
            yield where, f"{prefix}{exc.expected}"
        else:
            yield where, f"{prefix}{exc.expected}, got {got}"
    elif isinstance(exc, KeyError):
        yield path, MISSING
    else:  # a cattrs or attrs check we did not anticipate; say where, never the value
        yield path, f"invalid value ({type(exc).__name__})"


def format_path(path: KeyPath) -> str:
    out = ""
    for step in path:
        if isinstance(step, int) and not isinstance(step, bool):
            out += f"[{step}]"
        else:
            text = shown_key(step)
            out += f".{text}" if out else text
    return out


def shown_key(key: object) -> str:
    """A key as an error may show it: escaped unless printable (one line, no terminal codes)."""
    text = str(key)
    return text if text.isprintable() else ascii(text)
