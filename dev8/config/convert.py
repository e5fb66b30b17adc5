"""The strict cattrs converter: YAML data to `Config`, no silent coercion.

`"yes"` is not a boolean, `8000` is not a string; every hook raises `Invalid`, saying what
was expected."""

import enum
import math
import re
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NewType, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_mapping_structure_fn

from dev8.config.alerts import WebhookConfig
from dev8.config.binds import BIND_FORMS, Bind, parse_bind
from dev8.config.errors import Invalid, InvalidKey
from dev8.config.services import ByteSize

_BYTE_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(?:i?[bB]?)")
_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_BYTE_SIZE_EXPECTED = 'expected a size in bytes (an integer, or e.g. "512M", "1G")'


def _structure_byte_size(value: Any, _type: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (match := _BYTE_SIZE.fullmatch(value.strip())):
        return int(float(match[1]) * _BYTE_UNITS[match[2].lower()])
    raise Invalid(_BYTE_SIZE_EXPECTED, value)


def _structure_webhooks(value: Any, _type: Any) -> tuple[WebhookConfig, ...]:
    if not isinstance(value, list):
        raise Invalid("expected a list of webhooks ({url: ...} each)", value)
    items = []
    errors: list[Exception] = []
    for index, item in enumerate(value):
        try:
            items.append(converter.structure(item, WebhookConfig))
        except Exception as exc:
            note = IterableValidationNote(f"webhook @ index {index}", index, WebhookConfig)
            exc.__notes__ = [*getattr(exc, "__notes__", []), note]
            errors.append(exc)
    if errors:
        raise IterableValidationError("invalid webhooks", errors, tuple[WebhookConfig, ...])
    return tuple(items)


_Key = NewType("_Key", str)


def _structure_str(value: Any, _type: Any) -> str:
    if isinstance(value, str):
        return value
    hint = " (quote it)" if isinstance(value, bool | int | float) else ""
    raise Invalid(f"expected a string{hint}", value)


def _structure_key(value: Any, _type: Any) -> str:
    if isinstance(value, str):
        return value
    raise InvalidKey("expected a string key (quote it)", value)


def _structure_bool(value: Any, _type: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise Invalid("expected true or false", value)


def _structure_int(value: Any, _type: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise Invalid("expected an integer", value)


def _structure_float(value: Any, _type: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            result = float(value)
        except OverflowError:
            raise Invalid("expected a number of a sensible size", value) from None
        if math.isfinite(result):
            return result
        raise Invalid("expected a finite number", value)
    raise Invalid("expected a number", value)


def _structure_signal(value: Any, _type: Any) -> signal.Signals:
    if isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        member = signal.Signals.__members__.get(name)
        if member is not None:
            return member
    raise Invalid("expected a signal name such as TERM, INT, HUP, QUIT or KILL", value)


def _structure_bind(value: Any, _type: Any) -> Bind:
    if not isinstance(value, str):
        raise Invalid(BIND_FORMS, value)
    return parse_bind(value)


def _structure_str_tuple(value: Any, _type: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise Invalid("expected a non-empty list of strings", value)
    items = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            hint = " (quote it)" if isinstance(item, bool | int | float) else ""
            raise Invalid(f"expected a string{hint}", item, at=(index,))
        items.append(item)
    return tuple(items)


def _structure_int_tuple(value: Any, _type: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise Invalid("expected a list of integers", value)
    items = []
    for index, item in enumerate(value):
        if not isinstance(item, int) or isinstance(item, bool):
            raise Invalid("expected an integer", item, at=(index,))
        items.append(item)
    return tuple(items)


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum) and tp is not signal.Signals


def _choices_hook(choices: Sequence[Any], build: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    listed = ", ".join(repr(c) for c in choices)

    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, str) and value in choices:
            return build(value)
        raise Invalid(f"expected one of {listed}", value)

    return hook


def _enum_factory(tp: type[enum.Enum]) -> Callable[[Any, Any], Any]:
    return _choices_hook([m.value for m in tp], tp)


def is_literal(tp: Any) -> bool:
    return get_origin(tp) is Literal


def _literal_factory(tp: Any) -> Callable[[Any, Any], Any]:
    return _choices_hook(get_args(tp), lambda v: v)


def is_mapping_type(tp: Any) -> bool:
    return get_origin(tp) in (dict, Mapping)


def _as_mapping(value: Any) -> Mapping[Any, Any]:
    """An empty section (`api:` with everything commented out) means all defaults."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Invalid("expected a mapping", value)
    return value


def _is_frozenset(tp: Any) -> bool:
    return bool(tp is frozenset or get_origin(tp) is frozenset)


def _on_first_use(generate: Callable[[], Callable[[Any, Any], Any]]) -> Callable[[Any, Any], Any]:
    """A structure hook that generates the real one (``generate()``) on its first call."""
    generated: list[Callable[[Any, Any], Any]] = []

    def hook(value: Any, tp: Any) -> Any:
        if not generated:
            generated.append(generate())
        return generated[0](_as_mapping(value), tp)

    return hook


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    # cattrs generates (and compiles) a function per class and per mapping type, and the one of
    # a class asks at once for the hooks of every field's type: eager, `Config` would generate
    # every section's, present in the file or not (about 20 ms of `dev8 run`'s start-up). So
    # each hook is generated on its first use: a section the file leaves out never is.

    def attrs_factory(cl: type[Any]) -> Callable[[Any, Any], Any]:
        def generate() -> Callable[[Any, Any], Any]:
            return make_dict_structure_fn(
                cl, conv, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True
            )

        return _on_first_use(generate)

    def mapping_factory(tp: Any) -> Callable[[Any, Any], Any]:
        key_type = get_args(tp)[0] if get_args(tp) else Any

        def generate() -> Callable[[Any, Any], Any]:
            return make_mapping_structure_fn(
                tp, conv, key_type=_Key if key_type is str else key_type, detailed_validation=True
            )

        return _on_first_use(generate)

    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(_Key, _structure_key)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(signal.Signals, _structure_signal)
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _structure_str_tuple)
    conv.register_structure_hook_func(lambda t: t == tuple[int, ...], _structure_int_tuple)
    conv.register_structure_hook_factory(_is_enum, _enum_factory)
    conv.register_structure_hook_factory(is_literal, _literal_factory)
    conv.register_structure_hook_factory(is_mapping_type, mapping_factory)
    conv.register_structure_hook_factory(attrs.has, attrs_factory)
    conv.register_structure_hook(Bind, _structure_bind)
    conv.register_structure_hook_func(lambda t: t == tuple[WebhookConfig, ...], _structure_webhooks)
    conv.register_structure_hook(ByteSize, _structure_byte_size)
    conv.register_structure_hook(
        Bind | None, lambda v, _t: None if v is None else _structure_bind(v, Bind)
    )

    conv.register_unstructure_hook(signal.Signals, lambda s: s.name)
    conv.register_unstructure_hook(Bind, str)
    conv.register_unstructure_hook(Bind | None, lambda b: None if b is None else str(b))
    conv.register_unstructure_hook_func(_is_frozenset, sorted)
    conv.register_unstructure_hook_func(lambda t: t == tuple[str, ...], list)
    conv.register_unstructure_hook_func(lambda t: t == tuple[int, ...], list)
    return conv


converter = _make_converter()
