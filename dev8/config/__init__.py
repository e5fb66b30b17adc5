"""dev8's configuration: one YAML file, overridable by `DEV8_*` variables, validated at load.

This is the only module that reads the configuration file. Shapes and types are checked by a
strict cattrs converter (no silent coercion: `"yes"` is not a boolean, `8000` is not a string);
value ranges by attrs validators, so a `Config` built in code is checked the same way. Every
failure becomes one `ConfigError` naming the file (or the variable) and the key path.

See docs/configuration.md for the reference.
"""

import difflib
import enum
import ipaddress
import math
import os
import re
import reprlib
import signal
import stat
import types
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, NewType, TypeAlias, Union, get_args, get_origin

import attrs
import cattrs
import yaml
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_mapping_structure_fn

from ..secrets.errors import SecretsConfigError
from ..secrets.settings import SecretsConfig, secrets_config_from

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "RESERVED_ENV_VARS",
    "AlertsConfig",
    "ApiConfig",
    "BackoffConfig",
    "Bind",
    "Config",
    "ConfigError",
    "ConnectionsConfig",
    "IdleConfig",
    "IntensityConfig",
    "LogConfig",
    "LogLevel",
    "ProbeConfig",
    "ProbeType",
    "ProbesConfig",
    "RestartType",
    "ServiceConfig",
    "ShutdownConfig",
    "SupervisorConfig",
    "TcpBind",
    "UnixBind",
    "WebhookConfig",
    "WorkspaceConfig",
    "config_to_dict",
    "load_config",
    "parse_bind",
    "parse_config",
]

DEFAULT_CONFIG_PATH = "/etc/dev8/supervisor.yaml"
ENV_PREFIX = "DEV8_"
# Variables that share the prefix but are not key overrides (the CLI reads the file path from it).
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
SECRET_KEY_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")
REDACTED = "***"

_KeyPath: TypeAlias = tuple[str | int, ...]


# --------------------------------------------------------------------------- errors


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


_NO_VALUE: Any = object()  # an error that has no offending value to show


class _Invalid(ValueError):
    """Raised by our hooks and validators; the offending value is kept apart so that values
    under secret-looking keys are never echoed."""

    def __init__(self, expected: str, value: Any = _NO_VALUE, *, at: _KeyPath = ()) -> None:
        # str() (seen when a Config built in code is invalid) names the key, never the value.
        super().__init__(f"{_format_path(at)}: {expected}" if at else expected)
        self.expected = expected
        self.value = value
        self.at = at  # sub-path below the attribute or mapping entry being structured


class _InvalidKey(_Invalid):
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
        return _kind(value)  # `env: [{GITHUB_TOKEN: ...}]` must not echo the token
    return _short_repr.repr(value)


def _holds_secret_key(value: Any, depth: int = 0) -> bool:
    """Whether a mapping anywhere inside ``value`` has a secret-looking key."""
    if depth > _short_repr.maxlevel:
        return False
    if isinstance(value, Mapping):
        items: Any = value.items()
        return any(_looks_secret(key) or _holds_secret_key(item, depth + 1) for key, item in items)
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


def _kind(value: Any) -> str:
    """What a value is, without showing it."""
    for types_, kind in _KINDS:
        if isinstance(value, types_):
            return kind
    return f"a {type(value).__name__}"


def _looks_secret(key: object) -> bool:
    upper = str(key).upper()
    return any(word in upper for word in SECRET_KEY_WORDS)


# --------------------------------------------------------------------------- validators


def _number(
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
            raise _Invalid(f"expected {what} {' and '.join(bounds)}", value, at=(attribute.name,))

    return check


_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_BAD_NAME_CHARS = re.compile(r"[\s\x00-\x1f\x7f:/]")


def _check_name(_inst: Any, attribute: "attrs.Attribute[Any]", value: str | None) -> None:
    """User names and ids: non-empty, no whitespace, control characters, ':' or '/'."""
    if value is not None and (not value or len(value) > 256 or _BAD_NAME_CHARS.search(value)):
        raise _Invalid(
            "expected a non-empty name without spaces, ':' or '/'", value, at=(attribute.name,)
        )


def _check_path(_inst: Any, attribute: "attrs.Attribute[Any]", value: str | None) -> None:
    if value is not None and (not value or "\0" in value):
        raise _Invalid("expected a non-empty path", value, at=(attribute.name,))


def _check_command(inst: Any, attribute: "attrs.Attribute[Any]", value: tuple[str, ...]) -> None:
    if inst.builtin is not None and not value:
        return  # a built-in service brings its own command
    if not value:
        raise _Invalid(
            f"{_MISSING}: expected a non-empty list of strings, or a builtin",
            at=(attribute.name,),
        )
    if not value[0]:
        raise _Invalid("expected a non-empty list of strings", list(value), at=(attribute.name,))
    for index, arg in enumerate(value):
        if "\0" in arg:
            raise _Invalid("expected no NUL characters", at=(attribute.name, index))


def _check_env(_inst: Any, attribute: "attrs.Attribute[Any]", value: Mapping[str, str]) -> None:
    for key, item in value.items():
        if not key or "=" in key or "\0" in key:
            raise _Invalid(
                "expected a variable name without '=' or NUL", key, at=(attribute.name, key)
            )
        if "\0" in item:
            raise _Invalid("expected no NUL characters", at=(attribute.name, key))


def _check_services(
    _inst: Any, attribute: "attrs.Attribute[Any]", value: Mapping[str, Any]
) -> None:
    for name in value:
        if not _SERVICE_NAME.fullmatch(name):
            raise _Invalid(
                "invalid service name: expected 1 to 63 of a-z, 0-9, '-', '_', "
                "starting with a letter or digit",
                at=(attribute.name, name),
            )


def _redacted_env_repr(env: Mapping[str, str]) -> str:
    return repr({k: REDACTED if _looks_secret(k) else v for k, v in env.items()})


# Field metadata: a path that load_config resolves against the config file's directory.
_IS_PATH = "dev8.path"


def _path_field(default: str | None) -> Any:
    return attrs.field(default=default, validator=_check_path, metadata={_IS_PATH: True})


# --------------------------------------------------------------------------- the model


class RestartType(enum.Enum):
    """OTP restart types: when a service that ended is started again."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit
    TEMPORARY = "temporary"  # never


LogLevel: TypeAlias = Literal["debug", "info", "warning", "error"]


@attrs.frozen
class TcpBind:
    """`HOST:PORT`; `str()` gives back the text it was parsed from."""

    host: str
    port: int = attrs.field(validator=_number(ge=1, lt=65536))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class UnixBind:
    """`unix:/PATH`; `str()` gives back the text it was parsed from."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


Bind: TypeAlias = TcpBind | UnixBind

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes, NUL included
_BIND_FORMS = "expected HOST:PORT, [IPV6]:PORT or unix:/ABSOLUTE/PATH"


def _valid_hostname(host: str) -> bool:
    labels = host.split(".")
    return (
        len(host) <= 253
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()  # "999.1.1.1" is a bad address, not a host name
    )


def parse_bind(text: str) -> Bind:
    """Parse `HOST:PORT`, `[IPV6]:PORT` or `unix:/PATH`; raises ValueError saying what is wrong."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/") or "\0" in path:
            raise _Invalid(f"{_BIND_FORMS} (the socket path must be absolute)", text)
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise _Invalid(f"a socket path of at most {_SUN_PATH_MAX} bytes", text)
        return UnixBind(path)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not _PORT.fullmatch(port_text):
        raise _Invalid(_BIND_FORMS, text)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise _Invalid("expected a port from 1 to 65535", text)
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _Invalid(f"{_BIND_FORMS} (bad IPv6 address)", text) from None
        return TcpBind(host[1:-1], port)
    if ":" in host:
        raise _Invalid(f"{_BIND_FORMS} (put an IPv6 address in brackets: [::1]:9000)", text)
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _valid_hostname(host):
            raise _Invalid(f"{_BIND_FORMS} (bad host)", text) from None
    return TcpBind(host, port)


@attrs.frozen
class IntensityConfig:
    """At most `max_restarts` restarts in any `window` seconds; beyond that, give up."""

    max_restarts: int = attrs.field(default=10, validator=_number(ge=0))
    window: float = attrs.field(default=60.0, validator=_number(gt=0))


def _check_max_delay(
    inst: "BackoffConfig", attribute: "attrs.Attribute[Any]", value: float
) -> None:
    if value < inst.min_delay or value < inst.initial_delay:
        raise _Invalid(
            "expected a number >= min_delay and >= initial_delay", value, at=(attribute.name,)
        )


#: No restart of a service comes sooner than this, whatever its `backoff` says: a service that
#: fails at once with every delay 0 would otherwise be respawned as fast as the machine allows.
RESTART_DELAY_FLOOR = 0.05


@attrs.frozen
class BackoffConfig:
    """Delay before a restart: `initial_delay` first, then from `min_delay` growing by `factor`
    up to `max_delay`, +/- `jitter` (a fraction); reset after `reset_after` seconds running.
    Never less than `RESTART_DELAY_FLOOR`."""

    initial_delay: float = attrs.field(default=0.0, validator=_number(ge=0))
    min_delay: float = attrs.field(default=0.1, validator=_number(ge=0))
    max_delay: float = attrs.field(default=30.0, validator=[_number(ge=0), _check_max_delay])
    factor: float = attrs.field(default=2.0, validator=_number(ge=1))
    jitter: float = attrs.field(default=0.1, validator=_number(ge=0, lt=1))
    reset_after: float = attrs.field(default=10.0, validator=_number(ge=0))


class ProbeType(enum.Enum):
    """How a probe checks a service (Kubernetes' probe handlers, plus an SSH banner)."""

    PROCESS = "process"  # the process is alive and not a zombie
    HTTP = "http"  # GET url answers expect_status
    TCP = "tcp"  # host:port accepts a connection
    SSH_BANNER = "ssh-banner"  # host:port sends an `SSH-2.0-` identification line


_PORT_TYPES = (ProbeType.TCP, ProbeType.SSH_BANNER)


def _check_probe_url(inst: "ProbeConfig", _attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if value is None:
        if inst.type is ProbeType.HTTP:
            raise _Invalid("required for an http probe", at=("url",))
        return
    try:
        parts = urllib.parse.urlsplit(value)
        scheme, host, has_password = parts.scheme, parts.hostname, parts.password is not None
    except ValueError:  # e.g. an unclosed IPv6 bracket
        scheme, host, has_password = "", None, "@" in value
    if scheme not in ("http", "https") or not host or "\0" in value:
        # A URL with a password in it is described, never shown.
        shown = _NO_VALUE if has_password else value
        raise _Invalid("expected an http:// or https:// URL with a host", shown, at=("url",))


def _check_probe_port(inst: "ProbeConfig", _attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if value is None:
        if inst.type in _PORT_TYPES:
            article = "an" if inst.type is ProbeType.SSH_BANNER else "a"
            raise _Invalid(f"required for {article} {inst.type.value} probe", at=("port",))
        return
    if not 1 <= value <= 65535:
        raise _Invalid("expected a port from 1 to 65535", value, at=("port",))


def _check_host(_inst: Any, attribute: "attrs.Attribute[Any]", value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _valid_hostname(value):
            raise _Invalid(
                "expected an IP address or a host name", value, at=(attribute.name,)
            ) from None


def _check_status(_inst: Any, attribute: "attrs.Attribute[Any]", value: int) -> None:
    if not 100 <= value <= 599:
        raise _Invalid("expected an HTTP status from 100 to 599", value, at=(attribute.name,))


@attrs.frozen
class ProbeConfig:
    """One health check, run every `interval` seconds, each bounded by `timeout`.

    `failure_threshold` consecutive failures flip it to failing, `success_threshold` consecutive
    successes back to passing (as in Kubernetes).
    """

    type: ProbeType = attrs.field(converter=ProbeType)  # code may say type="tcp"
    url: str | None = attrs.field(default=None, validator=_check_probe_url)
    expect_status: int = attrs.field(default=200, validator=_check_status)
    host: str = attrs.field(default="127.0.0.1", validator=_check_host)
    port: int | None = attrs.field(default=None, validator=_check_probe_port)
    interval: float = attrs.field(default=30.0, validator=_number(gt=0))
    timeout: float = attrs.field(default=5.0, validator=_number(gt=0))
    initial_delay: float = attrs.field(default=0.0, validator=_number(ge=0))
    failure_threshold: int = attrs.field(default=3, validator=_number(ge=1))
    success_threshold: int = attrs.field(default=1, validator=_number(ge=1))


def _check_liveness(
    _inst: Any, attribute: "attrs.Attribute[Any]", value: ProbeConfig | None
) -> None:
    # One success proves a process alive; more would only delay the reset of its failures.
    if value is not None and value.success_threshold != 1:
        raise _Invalid(
            "expected 1 for a liveness probe",
            value.success_threshold,
            at=(attribute.name, "success_threshold"),
        )


@attrs.frozen
class ProbesConfig:
    """`readiness` gates the start and `/health`; `liveness` failing restarts the service."""

    readiness: ProbeConfig | None = None
    liveness: ProbeConfig | None = attrs.field(default=None, validator=_check_liveness)


def _check_ports(_inst: Any, attribute: "attrs.Attribute[Any]", value: tuple[int, ...]) -> None:
    seen: set[int] = set()
    for index, port in enumerate(value):
        if not 1 <= port <= 65535:
            raise _Invalid("expected a port from 1 to 65535", port, at=(attribute.name, index))
        if port in seen:
            raise _Invalid("this port is already listed", port, at=(attribute.name, index))
        seen.add(port)


def _check_tcp_bind(_inst: Any, attribute: "attrs.Attribute[Any]", value: str) -> None:
    if not isinstance(parse_bind(value), TcpBind):
        raise _Invalid("expected HOST:PORT", value, at=(attribute.name,))


@attrs.frozen
class CodeServerOptions:
    """`builtin: code-server`. `auth: none` only when something in front authenticates."""

    bind: str = attrs.field(default="0.0.0.0:8080", validator=_check_tcp_bind)
    auth: Literal["none", "password"] = "password"
    #: The secret holding the password (auth: password); `{userId}` is filled in.
    password_secret: str = "code-server-password-{userId}"
    binary: str = _path_field("/opt/code-server/bin/code-server")


@attrs.frozen
class SshdOptions:
    """`builtin: sshd`: key-only OpenSSH for terminals, scp and VS Code Remote-SSH."""

    port: int = attrs.field(default=2222, validator=_number(ge=1, lt=65536))
    listen: str = attrs.field(default="0.0.0.0", validator=_check_name)  # noqa: S104


#: A size in bytes: an integer, or text such as "512M", "1G", "64Mi" (powers of 1024).
ByteSize = NewType("ByteSize", int)
_BYTE_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(?:i?[bB]?)")
_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_BYTE_SIZE_EXPECTED = 'expected a size in bytes (an integer, or e.g. "512M", "1G")'


def _structure_byte_size(value: Any, _type: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (match := _BYTE_SIZE.fullmatch(value.strip())):
        return int(float(match[1]) * _BYTE_UNITS[match[2].lower()])
    raise _Invalid(_BYTE_SIZE_EXPECTED, value)


def _optional_number(
    *, ge: float | None = None, gt: float | None = None, lt: float | None = None
) -> Callable[[Any, "attrs.Attribute[Any]", float | None], None]:
    check = _number(ge=ge, gt=gt, lt=lt)

    def optional(inst: Any, attribute: "attrs.Attribute[Any]", value: float | None) -> None:
        if value is not None:
            check(inst, attribute, value)

    return optional


@attrs.frozen
class LimitsConfig:
    """What one service may use: rlimits always, and a cgroup sub-group where dev8 may make one
    (memory and cpu are then enforced on the whole process tree)."""

    #: Bytes: RLIMIT_AS of each process, and the sub-group's memory limit.
    memory: ByteSize | None = attrs.field(default=None, validator=_optional_number(ge=1 << 20))
    #: Open files per process (RLIMIT_NOFILE).
    nofile: int | None = attrs.field(default=None, validator=_optional_number(ge=1))
    #: Processes of the service's user (RLIMIT_NPROC; the kernel counts per user).
    nproc: int | None = attrs.field(default=None, validator=_optional_number(ge=1))
    #: Cores, e.g. 0.5: the sub-group's CPU quota.
    cpu: float | None = attrs.field(default=None, validator=_optional_number(gt=0))


BuiltinKind: TypeAlias = Literal["code-server", "sshd"]
SecretChangeAction: TypeAlias = Literal["restart", "reload", "none"]


@attrs.frozen
class ServiceConfig:
    """One supervised program."""

    #: A built-in service (no command needed): its defaults fill what is not set here.
    builtin: BuiltinKind | None = None
    command: tuple[str, ...] = attrs.field(default=(), validator=_check_command)
    env: Mapping[str, str] = attrs.field(
        factory=dict, validator=_check_env, repr=_redacted_env_repr
    )
    cwd: str | None = _path_field(None)
    # None: workspace.user when dev8 runs as root, else dev8's own user (see Config.service_user).
    user: str | None = attrs.field(default=None, validator=_check_name)
    restart: RestartType = RestartType.PERMANENT
    critical: bool = False  # ending for good shuts dev8 down with exit code 3
    enabled: bool = True
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = attrs.field(default=10.0, validator=_number(ge=0))
    start_timeout: float = attrs.field(default=60.0, validator=_number(gt=0))
    backoff: BackoffConfig = attrs.field(factory=BackoffConfig)
    intensity: IntensityConfig = attrs.field(factory=IntensityConfig)
    probes: ProbesConfig = attrs.field(factory=ProbesConfig)
    # The ports whose established connections count for this service (GET /connections).
    ports: tuple[int, ...] = attrs.field(default=(), validator=_check_ports)
    #: What a rotated secret does to the running service.
    on_secret_change: SecretChangeAction = "none"
    #: The signal `on_secret_change: reload` sends to the service's process group.
    reload_signal: signal.Signals = signal.SIGHUP
    code_server: CodeServerOptions = attrs.field(factory=CodeServerOptions)
    sshd: SshdOptions = attrs.field(factory=SshdOptions)
    limits: LimitsConfig = attrs.field(factory=LimitsConfig)
    #: /proc/PID/oom_score_adj (-1000..1000); null: 0 for services, lower for sshd/code-server.
    oom_score_adj: int | None = attrs.field(
        default=None, validator=_optional_number(ge=-1000, lt=1001)
    )


@attrs.frozen
class WorkspaceConfig:
    dir: str = _path_field("/workspace")
    user: str = attrs.field(default="dev8", validator=_check_name)


@attrs.frozen
class ApiConfig:
    bind: Bind = TcpBind("127.0.0.1", 9000)
    token_file: str | None = _path_field(None)
    #: Listen beyond loopback with no token: a choice written down, never a default.
    insecure_no_auth: bool = False
    #: Host names the API answers to besides loopback's ("*": any). Empty: loopback's names
    #: when the API listens on loopback or a Unix socket, any name otherwise.
    allowed_hosts: tuple[str, ...] = ()
    #: Browser origins (``scheme://host[:port]``) allowed besides the API's own.
    allowed_origins: tuple[str, ...] = ()
    #: A second listener that serves only /livez, /readyz and /health (no token), for the
    #: kubelet: a flood of connections to ``bind`` queues behind nothing here. None: off.
    probe_bind: Bind | None = None


@attrs.frozen
class LogConfig:
    level: LogLevel = "info"


@attrs.frozen
class ShutdownConfig:
    timeout: float = attrs.field(default=30.0, validator=_number(gt=0))
    kill_grace: float = attrs.field(default=2.0, validator=_number(ge=0))


@attrs.frozen
class SupervisorConfig:
    intensity: IntensityConfig = attrs.field(factory=lambda: IntensityConfig(50, 60.0))


@attrs.frozen
class ConnectionsConfig:
    """The connection tracker reads the kernel's TCP tables every `interval` seconds."""

    interval: float = attrs.field(default=5.0, validator=_number(gt=0))


@attrs.frozen
class ResourcesConfig:
    """The resource sampler: every `interval` seconds; events when a fraction of a limit is
    crossed (memory of its limit, CPU of its cores)."""

    interval: float = attrs.field(default=10.0, validator=_number(gt=0))
    memory_threshold: float = attrs.field(default=0.8, validator=_number(gt=0))
    cpu_threshold: float = attrs.field(default=0.8, validator=_number(gt=0))


def _check_port_owners(
    _inst: Any, attribute: "attrs.Attribute[Any]", value: Mapping[str, "ServiceConfig"]
) -> None:
    owner: dict[int, str] = {}
    for name, service in value.items():
        for index, port in enumerate(service.ports):
            if port in owner:
                raise _Invalid(
                    f"port {port} is already counted for service {owner[port]!r}",
                    at=(attribute.name, name, "ports", index),
                )
            owner[port] = name


@attrs.frozen
class ChaosConfig:
    """Fault injection through the API (`/chaos/...`): off unless a test rig turns it on."""

    enabled: bool = False


def _check_webhook_url(_inst: Any, attribute: "attrs.Attribute[Any]", value: str) -> None:
    try:
        parts = urllib.parse.urlsplit(value)
        scheme, host = parts.scheme, parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        scheme, host = "", None
    if scheme not in ("http", "https") or not host or "\0" in value:
        # Never shown: a webhook URL often carries its own token in the path or query.
        raise _Invalid("expected an http:// or https:// URL with a host", at=(attribute.name,))


@attrs.frozen
class WebhookConfig:
    """One receiver of dev8's alerts (docs/configuration.md, `alerts.webhooks`)."""

    url: str = attrs.field(validator=_check_webhook_url)
    #: A root-owned file holding the HMAC-SHA256 key that signs each body; no key, no signature.
    secret_file: str | None = _path_field(None)
    timeout: float = attrs.field(default=5.0, validator=_number(gt=0))
    #: Tries per alert, the first included; then the alert is dropped (and counted).
    max_attempts: int = attrs.field(default=5, validator=_number(ge=1))
    retry_initial_delay: float = attrs.field(default=1.0, validator=_number(gt=0))
    retry_max_delay: float = attrs.field(default=60.0, validator=_number(gt=0))
    #: Alerts waiting for this receiver; beyond this they are dropped (and counted).
    queue: int = attrs.field(default=100, validator=_number(ge=1))


def _structure_webhooks(value: Any, _type: Any) -> tuple[WebhookConfig, ...]:
    if not isinstance(value, list):
        raise _Invalid("expected a list of webhooks ({url: ...} each)", value)
    items = []
    errors: list[Exception] = []
    for index, item in enumerate(value):
        try:
            items.append(_converter.structure(item, WebhookConfig))
        except Exception as exc:
            note = IterableValidationNote(f"webhook @ index {index}", index, WebhookConfig)
            exc.__notes__ = [*getattr(exc, "__notes__", []), note]
            errors.append(exc)
    if errors:
        raise IterableValidationError("invalid webhooks", errors, tuple[WebhookConfig, ...])
    return tuple(items)


@attrs.frozen
class AlertsConfig:
    """dev8's own alerts, pushed to webhooks (docs/operations.md, "Alerts")."""

    webhooks: tuple[WebhookConfig, ...] = ()
    #: An alert raised by a single happening (a restart, an OOM kill, throttling, a failed
    #: secrets pass) is resolved after this many seconds without another one.
    resolve_after: float = attrs.field(default=300.0, validator=_number(gt=0))


@attrs.frozen
class IdleConfig:
    """`workspace_idle` after `after` seconds with nobody connected (null: never)."""

    after: float | None = attrs.field(default=1800.0)
    #: Whether event-stream (websocket) clients of the API count as someone connected.
    api_clients: bool = True

    @after.validator
    def _check_after(self, attribute: "attrs.Attribute[Any]", value: float | None) -> None:
        if value is not None:
            _number(gt=0)(self, attribute, value)


@attrs.frozen
class Config:
    """The whole configuration. A new section is one attrs class and one field here."""

    environment_id: str = attrs.field(default="local", validator=_check_name)
    user_id: str = attrs.field(default="local", validator=_check_name)
    workspace: WorkspaceConfig = attrs.field(factory=WorkspaceConfig)
    api: ApiConfig = attrs.field(factory=ApiConfig)
    log: LogConfig = attrs.field(factory=LogConfig)
    shutdown: ShutdownConfig = attrs.field(factory=ShutdownConfig)
    supervisor: SupervisorConfig = attrs.field(factory=SupervisorConfig)
    connections: ConnectionsConfig = attrs.field(factory=ConnectionsConfig)
    chaos: ChaosConfig = attrs.field(factory=ChaosConfig)
    alerts: AlertsConfig = attrs.field(factory=AlertsConfig)
    idle: IdleConfig = attrs.field(factory=IdleConfig)
    resources: ResourcesConfig = attrs.field(factory=ResourcesConfig)
    #: Built from the raw `secrets:` section and the environment by dev8.secrets.settings.
    secrets: SecretsConfig = attrs.field(
        default=attrs.Factory(
            lambda self: SecretsConfig(user_id=self.user_id, environment_id=self.environment_id),
            takes_self=True,
        )
    )
    services: Mapping[str, ServiceConfig] = attrs.field(
        factory=dict, validator=[_check_services, _check_port_owners]
    )

    def service_user(self, name: str, *, as_root: bool) -> str | None:
        """The user a service runs as; None means dev8's own user (no switch)."""
        configured = self.services[name].user
        if configured is not None:
            return configured
        return self.workspace.user if as_root else None


# --------------------------------------------------------------------------- the converter

_Key = NewType("_Key", str)


def _structure_str(value: Any, _type: Any) -> str:
    if isinstance(value, str):
        return value
    hint = " (quote it)" if isinstance(value, bool | int | float) else ""
    raise _Invalid(f"expected a string{hint}", value)


def _structure_key(value: Any, _type: Any) -> str:
    if isinstance(value, str):
        return value
    raise _InvalidKey("expected a string key (quote it)", value)


def _structure_bool(value: Any, _type: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _Invalid("expected true or false", value)


def _structure_int(value: Any, _type: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _Invalid("expected an integer", value)


def _structure_float(value: Any, _type: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            result = float(value)
        except OverflowError:
            raise _Invalid("expected a number of a sensible size", value) from None
        if math.isfinite(result):
            return result
        raise _Invalid("expected a finite number", value)
    raise _Invalid("expected a number", value)


def _structure_signal(value: Any, _type: Any) -> signal.Signals:
    if isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        member = signal.Signals.__members__.get(name)
        if member is not None:
            return member
    raise _Invalid("expected a signal name such as TERM, INT, HUP, QUIT or KILL", value)


def _structure_bind(value: Any, _type: Any) -> Bind:
    if not isinstance(value, str):
        raise _Invalid(_BIND_FORMS, value)
    return parse_bind(value)


def _structure_str_tuple(value: Any, _type: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _Invalid("expected a non-empty list of strings", value)
    items = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            hint = " (quote it)" if isinstance(item, bool | int | float) else ""
            raise _Invalid(f"expected a string{hint}", item, at=(index,))
        items.append(item)
    return tuple(items)


def _structure_int_tuple(value: Any, _type: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise _Invalid("expected a list of integers", value)
    items = []
    for index, item in enumerate(value):
        if not isinstance(item, int) or isinstance(item, bool):
            raise _Invalid("expected an integer", item, at=(index,))
        items.append(item)
    return tuple(items)


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum) and tp is not signal.Signals


def _choices_hook(choices: Sequence[Any], build: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    listed = ", ".join(repr(c) for c in choices)

    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, str) and value in choices:
            return build(value)
        raise _Invalid(f"expected one of {listed}", value)

    return hook


def _enum_factory(tp: type[enum.Enum]) -> Callable[[Any, Any], Any]:
    return _choices_hook([m.value for m in tp], tp)


def _is_literal(tp: Any) -> bool:
    return get_origin(tp) is Literal


def _literal_factory(tp: Any) -> Callable[[Any, Any], Any]:
    return _choices_hook(get_args(tp), lambda v: v)


def _is_mapping_type(tp: Any) -> bool:
    return get_origin(tp) in (dict, Mapping)


def _as_mapping(value: Any) -> Mapping[Any, Any]:
    """An empty section (`api:` with everything commented out) means all defaults."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Invalid("expected a mapping", value)
    return value


def _is_frozenset(tp: Any) -> bool:
    return bool(tp is frozenset or get_origin(tp) is frozenset)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    def attrs_factory(cl: type[Any]) -> Callable[[Any, Any], Any]:
        inner = make_dict_structure_fn(
            cl, conv, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True
        )
        return lambda value, tp: inner(_as_mapping(value), tp)

    def mapping_factory(tp: Any) -> Callable[[Any, Any], Any]:
        key_type = get_args(tp)[0] if get_args(tp) else Any
        inner = make_mapping_structure_fn(
            tp, conv, key_type=_Key if key_type is str else key_type, detailed_validation=True
        )
        return lambda value, tp: inner(_as_mapping(value), tp)

    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(_Key, _structure_key)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(signal.Signals, _structure_signal)
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _structure_str_tuple)
    conv.register_structure_hook_func(lambda t: t == tuple[int, ...], _structure_int_tuple)
    conv.register_structure_hook_factory(_is_enum, _enum_factory)
    conv.register_structure_hook_factory(_is_literal, _literal_factory)
    conv.register_structure_hook_factory(_is_mapping_type, mapping_factory)
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


_converter = _make_converter()


# --------------------------------------------------------------------------- cattrs errors -> one


def _unknown_key_message(key: object, cl: type[Any]) -> str:
    names = [f.name for f in attrs.fields(cl)]
    close = difflib.get_close_matches(str(key).lower(), names, n=1)
    # DEV8_API_BIND: one underscore where the nesting needs two.
    close = close or [n for n in names if str(key).lower().startswith(f"{n}_")][:1]
    return f"{_UNKNOWN} (did you mean {close[0]!r}?)" if close else _UNKNOWN


_MISSING = "required key missing"
_UNKNOWN = "unknown key"


def _flatten(exc: BaseException, path: _KeyPath) -> Iterator[tuple[_KeyPath, str]]:
    """Walk cattrs' exception groups (and their notes) into (key path, message) pairs."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            # Notes name attributes or mapping keys (our only list hook reports its own index).
            step = note.name if hasattr(note, "name") else note.index
            yield from _flatten(sub, (*path, step))
        for sub in without:
            yield from _flatten(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields, key=str):
            yield (*path, str(key)), _unknown_key_message(key, exc.cl)
    elif isinstance(exc, _Invalid):
        where = (*path, *exc.at)
        shown = not any(_looks_secret(step) for step in where)
        if shown and len(where) >= 2 and where[-2] == "env":
            shown = False  # environment values are often secrets
        got = _describe(exc.value) if shown else _kind(exc.value)
        prefix = "invalid key: " if isinstance(exc, _InvalidKey) else ""
        if exc.value is _NO_VALUE:
            yield where, f"{prefix}{exc.expected}"
        else:
            yield where, f"{prefix}{exc.expected}, got {got}"
    elif isinstance(exc, KeyError):
        yield path, _MISSING
    else:  # a cattrs or attrs check we did not anticipate; say where, never the value
        yield path, f"invalid value ({type(exc).__name__})"


def _format_path(path: _KeyPath) -> str:
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


# --------------------------------------------------------------------------- env overrides


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
        or _is_literal(tp)
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
    if _is_mapping_type(tp):
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


def _apply_overrides(
    data: dict[Any, Any], environ: Mapping[str, str], origins: dict[_KeyPath, str]
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
    set_by: dict[_KeyPath, str] = {}
    for _, var, segments, raw in sorted(requests):
        node: dict[Any, Any] = data
        tp: Any = Config
        path: _KeyPath = ()
        for depth, segment in enumerate(segments):
            key, child_tp = _child(tp, node, segment)
            path = (*path, key)
            dotted = _format_path(path)
            if depth == len(segments) - 1:
                if path in set_by:
                    raise ConfigError(var, dotted, f"also set by {set_by[path]}")
                node[key] = _override_value(var, raw, child_tp, dotted)
                set_by[path] = origins[path] = var
                break
            if child_tp is not None and not (
                attrs.has(_unwrap_optional(child_tp)) or _is_mapping_type(child_tp)
            ):
                raise ConfigError(var, dotted, "cannot set a key inside this value")
            if node.get(key) is None:
                node[key] = {}
                origins.setdefault(path, var)
            elif isinstance(node[key], dict):
                node[key] = dict(node[key])  # YAML aliases share nodes: copy before writing
            else:
                raise ConfigError(var, dotted, f"cannot set a key inside {_kind(node[key])}")
            node, tp = node[key], child_tp


def _source_of(path: _KeyPath, origins: Mapping[_KeyPath, str], default: str) -> str:
    best: _KeyPath | None = None
    for origin in origins:
        if path[: len(origin)] == origin and (best is None or len(origin) > len(best)):
            best = origin
    return origins[best] if best is not None else default


# --------------------------------------------------------------------------- loading


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
        if field.metadata.get(_IS_PATH) and isinstance(value, str):
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
        raise ConfigError(source, "", f"expected a mapping at the top level, got {_kind(data)}")
    origins: dict[_KeyPath, str] = {}
    for key, var in (("environment_id", "ENVIRONMENT_ID"), ("user_id", "USER_ID")):
        if key not in data and environ.get(var):
            data[key] = environ[var]
            origins[(key,)] = var
    _apply_overrides(data, environ, origins)
    raw_secrets = data.pop("secrets", None)
    try:
        config = _converter.structure(data, Config)
    except Exception as exc:  # every structuring failure becomes one ConfigError
        # A misspelt key also makes the real one "missing": report the misspelling first.
        problems = sorted(_flatten(exc, ()), key=lambda p: p[1] == _MISSING)
        errors = []
        for path, message in problems:
            origin = _source_of(path, origins, source)
            hint = ""
            from_var = origin.startswith(ENV_PREFIX)
            if from_var and path and message.startswith(_UNKNOWN) and "_" in str(path[-1]):
                hint = "; nested keys are separated by '__' in variable names"
            errors.append(ConfigError(origin, _format_path(path), message + hint))
        first = errors[0]
        raise ConfigError(first.source, first.path, first.message, others=errors[1:]) from None
    if raw_secrets is not None and not isinstance(raw_secrets, Mapping):
        raise ConfigError(source, "secrets", f"expected a mapping, got {_kind(raw_secrets)}")
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


def _redacted_url(url: str) -> str:
    """A webhook URL without what often holds its token (path, query, user info)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    hidden = parts.path not in ("", "/") or parts.query or parts.username
    return f"{parts.scheme}://{host}{port}/{REDACTED if hidden else ''}"


def config_to_dict(config: Config, *, redact: bool = True) -> dict[str, Any]:
    """Plain data (YAML/JSON-ready) for `dev8 config show`; secret-looking env values hidden."""
    data: dict[str, Any] = _converter.unstructure(config)
    if redact:
        for service in data["services"].values():
            service["env"] = {
                k: REDACTED if _looks_secret(k) else v for k, v in service["env"].items()
            }
        for hook in data["alerts"]["webhooks"]:
            hook["url"] = _redacted_url(hook["url"])
    return data
