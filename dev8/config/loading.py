"""Reading the file (bounded, never blocking on a FIFO) and parsing it into a `Config`."""

import os
import stat
from collections.abc import Mapping
from typing import Any

import attrs
import yaml

from dev8.config.checks import IS_PATH
from dev8.config.convert import converter
from dev8.config.env import ENV_PREFIX, apply_overrides, source_of
from dev8.config.errors import MISSING, UNKNOWN, ConfigError, KeyPath, flatten, format_path, kind_of
from dev8.config.schema import Config
from dev8.secrets.errors import SecretsConfigError
from dev8.secrets.settings import secrets_config_from

DEFAULT_CONFIG_PATH = "/etc/dev8/supervisor.yaml"


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(source, "", f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:  # e.g. ReaderError: a control character in the text
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(source, "", f"invalid YAML: {first_line}") from None
    except RecursionError:
        raise ConfigError(source, "", "invalid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # e.g. the timestamp 2024-02-30
        raise ConfigError(source, "", f"invalid YAML value: {exc}") from None


def _resolve_paths(obj: Any, base_dir: str) -> Any:
    """Make relative path fields relative to the config file's directory."""
    if isinstance(obj, Mapping):
        return {k: _resolve_paths(v, base_dir) for k, v in obj.items()}
    if isinstance(obj, tuple) and obj and attrs.has(type(obj[0])):
        return tuple(_resolve_paths(item, base_dir) for item in obj)
    if not attrs.has(type(obj)):
        return obj
    changes = {}
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        if field.metadata.get(IS_PATH) and isinstance(value, str):
            changes[field.name] = os.path.normpath(os.path.join(base_dir, value))
        elif attrs.has(type(value)) or isinstance(value, Mapping | tuple):
            changes[field.name] = _resolve_paths(value, base_dir)
    return attrs.evolve(obj, **changes)


def _parse(
    text: str, source: str, environ: Mapping[str, str] | None, base_dir: str | None
) -> Config:
    environ = os.environ if environ is None else environ
    data = _parse_yaml(text, source)
    if data is None:
        raise ConfigError(source, "", "the file is empty; expected a mapping of settings")
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"expected a mapping at the top level, got {kind_of(data)}")
    origins: dict[KeyPath, str] = {}
    for key, var in (("environment_id", "ENVIRONMENT_ID"), ("user_id", "USER_ID")):
        if key not in data and environ.get(var):
            data[key] = environ[var]
            origins[(key,)] = var
    apply_overrides(data, environ, origins)
    raw_secrets = data.pop("secrets", None)
    try:
        config = converter.structure(data, Config)
    except Exception as exc:  # every structuring failure becomes one ConfigError
        # A misspelt key also makes the real one "missing": report the misspelling first.
        problems = sorted(flatten(exc, ()), key=lambda p: p[1] == MISSING)
        errors = []
        for path, message in problems:
            origin = source_of(path, origins, source)
            hint = ""
            from_var = origin.startswith(ENV_PREFIX)
            if from_var and path and message.startswith(UNKNOWN) and "_" in str(path[-1]):
                hint = "; nested keys are separated by '__' in variable names"
            errors.append(ConfigError(origin, format_path(path), message + hint))
        first = errors[0]
        raise ConfigError(first.source, first.path, first.message, others=errors[1:]) from None
    if raw_secrets is not None and not isinstance(raw_secrets, Mapping):
        raise ConfigError(source, "secrets", f"expected a mapping, got {kind_of(raw_secrets)}")
    secrets_environ = {"USER_ID": config.user_id, "ENVIRONMENT_ID": config.environment_id}
    try:
        secrets = secrets_config_from(raw_secrets, {**secrets_environ, **environ})
    except SecretsConfigError as exc:
        # Its messages lead with the key ("secrets.provider must be ..."): split that off.
        head, _, rest = str(exc).partition(" ")
        where = head.rstrip(":")
        if not where.startswith("secrets") or not rest:
            where, rest = "secrets", str(exc)
        raise ConfigError(source, where, rest) from None
    config = attrs.evolve(config, secrets=secrets)
    return _resolve_paths(config, base_dir) if base_dir is not None else config


def parse_config(text: str, source: str, environ: Mapping[str, str] | None = None) -> Config:
    """Parse YAML text; `source` names it in errors. Relative paths are left as written."""
    return _parse(text, source, environ, None)


#: A configuration is a few kilobytes; more is a mistake (or /dev/zero), not a config.
MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and parse the file; relative paths in it are resolved against its directory."""
    source = os.fspath(path)
    try:
        # Non-blocking: a FIFO nobody writes to must not hang dev8 (it is refused below).
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise ConfigError(source, "", "not a regular file")
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(source, "", f"the file is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, "", "the file is not valid UTF-8") from None
    return _parse(text, source, environ, os.path.dirname(os.path.abspath(source)))
