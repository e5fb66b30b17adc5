"""`DEV8_A__B__C=value` variables override keys of the file."""

import enum
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

import attrs
import yaml

from dev8.config.binds import Bind
from dev8.config.convert import is_literal, is_mapping_type
from dev8.config.errors import ConfigError, KeyPath, format_path, kind_of
from dev8.config.schema import Config

ENV_PREFIX = "DEV8_"
# Variables that share the prefix but are not key overrides: the CLI reads DEV8_CONFIG, DEV8_API
# and DEV8_API_TOKEN, dev8.secrets reads its own (docs/secrets.md), and DEV8_SECRET_* hold values.
RESERVED_ENV_VARS = frozenset(
    {
        "DEV8_CONFIG",
        "DEV8_API",
        "DEV8_API_TOKEN",
        "DEV8_SECRETS_PROVIDER",
        "DEV8_SECRETS_DIR",
        "DEV8_TEST_KEYVAULT_SKIP_CHALLENGE_CHECK",
    }
)
RESERVED_ENV_PREFIXES = ("DEV8_SECRET_",)


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_text_type(tp: Any) -> bool:
    """Keys whose YAML value is a string: an override gives them the text verbatim."""
    tp = _unwrap_optional(tp)
    return (
        tp is str
        or tp == Bind
        or is_literal(tp)
        or (isinstance(tp, type) and issubclass(tp, enum.Enum))
    )


def _norm(key: str) -> str:
    return key.lower().replace("-", "_")


def _child(tp: Any, node: Mapping[Any, Any], segment: str) -> tuple[str, Any]:
    """The key a variable's segment addresses in `node` (of type `tp`), and the child's type."""
    tp = _unwrap_optional(tp)
    if attrs.has(tp):
        name = segment.lower()
        fields = {f.name: f.type for f in attrs.fields(tp)}
        return name, fields.get(name)
    if is_mapping_type(tp):
        value_type = get_args(tp)[1]
        if segment in node:
            return segment, value_type
        if not attrs.has(value_type):
            return segment, value_type  # env names are case-sensitive: keep them as written
        for key in node:
            if isinstance(key, str) and _norm(key) == _norm(segment):
                return key, value_type
        return segment.lower(), value_type
    return segment.lower(), None  # unknown key: structuring will report it


def _override_value(var: str, raw: str, tp: Any, path: str) -> Any:
    if tp is not None and _is_text_type(tp):
        if raw in ("", "null", "~") and _unwrap_optional(tp) is not tp:
            return None
        return raw
    try:
        return yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError, RecursionError):
        raise ConfigError(var, path, "the value is not a valid YAML flow value") from None


def apply_overrides(
    data: dict[Any, Any], environ: Mapping[str, str], origins: dict[KeyPath, str]
) -> None:
    """Apply `DEV8_A__B__C=value` variables to the raw data, noting which variable set what."""
    requests = []
    for var, raw in environ.items():
        if (
            not var.startswith(ENV_PREFIX)
            or var in RESERVED_ENV_VARS
            or var.startswith(RESERVED_ENV_PREFIXES)
        ):
            continue
        segments = var[len(ENV_PREFIX) :].split("__")
        if not all(segments):
            raise ConfigError(var, "", "malformed name: expected DEV8_KEY or DEV8_SECTION__KEY")
        requests.append((len(segments), var, segments, raw))
    set_by: dict[KeyPath, str] = {}
    for _, var, segments, raw in sorted(requests):
        node: dict[Any, Any] = data
        tp: Any = Config
        path: KeyPath = ()
        for depth, segment in enumerate(segments):
            key, child_tp = _child(tp, node, segment)
            path = (*path, key)
            dotted = format_path(path)
            if depth == len(segments) - 1:
                if path in set_by:
                    raise ConfigError(var, dotted, f"also set by {set_by[path]}")
                node[key] = _override_value(var, raw, child_tp, dotted)
                set_by[path] = origins[path] = var
                break
            if child_tp is not None and not (
                attrs.has(_unwrap_optional(child_tp)) or is_mapping_type(child_tp)
            ):
                raise ConfigError(var, dotted, "cannot set a key inside this value")
            if node.get(key) is None:
                node[key] = {}
                origins.setdefault(path, var)
            elif isinstance(node[key], dict):
                node[key] = dict(node[key])  # YAML aliases share nodes: copy before writing
            else:
                raise ConfigError(var, dotted, f"cannot set a key inside {kind_of(node[key])}")
            node, tp = node[key], child_tp


def source_of(path: KeyPath, origins: Mapping[KeyPath, str], default: str) -> str:
    best: KeyPath | None = None
    for origin in origins:
        if path[: len(origin)] == origin and (best is None or len(origin) > len(best)):
            best = origin
    return origins[best] if best is not None else default
