"""The `services:` section: one supervised program, its restarts, limits and built-ins."""

import enum
import signal
from collections.abc import Mapping
from typing import Any, Literal, NewType, TypeAlias

import attrs

from dev8.config.binds import TcpBind, parse_bind
from dev8.config.checks import check_name, number, optional_number, path_field
from dev8.config.errors import MISSING, REDACTED, Invalid, looks_secret
from dev8.config.probes import ProbesConfig


def _check_command(inst: Any, attribute: "attrs.Attribute[Any]", value: tuple[str, ...]) -> None:
    if inst.builtin is not None and not value:
        return  # a built-in service brings its own command
    if not value:
        raise Invalid(
            f"{MISSING}: expected a non-empty list of strings, or a builtin",
            at=(attribute.name,),
        )
    if not value[0]:
        raise Invalid("expected a non-empty list of strings", list(value), at=(attribute.name,))
    for index, arg in enumerate(value):
        if "\0" in arg:
            raise Invalid("expected no NUL characters", at=(attribute.name, index))


def _check_env(_inst: Any, attribute: "attrs.Attribute[Any]", value: Mapping[str, str]) -> None:
    for key, item in value.items():
        if not key or "=" in key or "\0" in key:
            raise Invalid(
                "expected a variable name without '=' or NUL", key, at=(attribute.name, key)
            )
        if "\0" in item:
            raise Invalid("expected no NUL characters", at=(attribute.name, key))


def _redacted_env_repr(env: Mapping[str, str]) -> str:
    return repr({k: REDACTED if looks_secret(k) else v for k, v in env.items()})


class RestartType(enum.Enum):
    """OTP restart types: when a service that ended is started again."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit
    TEMPORARY = "temporary"  # never


@attrs.frozen
class IntensityConfig:
    """At most `max_restarts` restarts in any `window` seconds; beyond that, give up."""

    max_restarts: int = attrs.field(default=10, validator=number(ge=0))
    window: float = attrs.field(default=60.0, validator=number(gt=0))


def _check_max_delay(
    inst: "BackoffConfig", attribute: "attrs.Attribute[Any]", value: float
) -> None:
    if value < inst.min_delay or value < inst.initial_delay:
        raise Invalid(
            "expected a number >= min_delay and >= initial_delay", value, at=(attribute.name,)
        )


#: No service is started again sooner than this after its previous start, whatever its `backoff`
#: says: a service that fails at once with every delay 0 would otherwise be respawned as fast as
#: the machine allows. One that ran longer is restarted after its backoff alone.
RESTART_DELAY_FLOOR = 0.05


@attrs.frozen
class BackoffConfig:
    """Delay before a restart: `initial_delay` first, then from `min_delay` growing by `factor`
    up to `max_delay`, +/- `jitter` (a fraction); reset after `reset_after` seconds running.
    Never sooner than `RESTART_DELAY_FLOOR` after the previous start."""

    initial_delay: float = attrs.field(default=0.0, validator=number(ge=0))
    min_delay: float = attrs.field(default=0.1, validator=number(ge=0))
    max_delay: float = attrs.field(default=30.0, validator=[number(ge=0), _check_max_delay])
    factor: float = attrs.field(default=2.0, validator=number(ge=1))
    jitter: float = attrs.field(default=0.1, validator=number(ge=0, lt=1))
    reset_after: float = attrs.field(default=10.0, validator=number(ge=0))


def _check_ports(_inst: Any, attribute: "attrs.Attribute[Any]", value: tuple[int, ...]) -> None:
    seen: set[int] = set()
    for index, port in enumerate(value):
        if not 1 <= port <= 65535:
            raise Invalid("expected a port from 1 to 65535", port, at=(attribute.name, index))
        if port in seen:
            raise Invalid("this port is already listed", port, at=(attribute.name, index))
        seen.add(port)


def _check_tcp_bind(_inst: Any, attribute: "attrs.Attribute[Any]", value: str) -> None:
    if not isinstance(parse_bind(value), TcpBind):
        raise Invalid("expected HOST:PORT", value, at=(attribute.name,))


@attrs.frozen
class CodeServerOptions:
    """`builtin: code-server`. `auth: none` only when something in front authenticates."""

    bind: str = attrs.field(default="0.0.0.0:8080", validator=_check_tcp_bind)
    auth: Literal["none", "password"] = "password"
    #: The secret holding the password (auth: password); `{userId}` is filled in.
    password_secret: str = "code-server-password-{userId}"
    binary: str = path_field("/opt/code-server/bin/code-server")


@attrs.frozen
class SshdOptions:
    """`builtin: sshd`: key-only OpenSSH for terminals, scp and VS Code Remote-SSH."""

    port: int = attrs.field(default=2222, validator=number(ge=1, lt=65536))
    listen: str = attrs.field(default="0.0.0.0", validator=check_name)  # noqa: S104


#: A size in bytes: an integer, or text such as "512M", "1G", "64Mi" (powers of 1024).
ByteSize = NewType("ByteSize", int)


@attrs.frozen
class LimitsConfig:
    """What one service may use: rlimits always, and a cgroup sub-group where dev8 may make one
    (memory and cpu are then enforced on the whole process tree)."""

    #: Bytes: RLIMIT_AS of each process, and the sub-group's memory limit.
    memory: ByteSize | None = attrs.field(default=None, validator=optional_number(ge=1 << 20))
    #: Open files per process (RLIMIT_NOFILE).
    nofile: int | None = attrs.field(default=None, validator=optional_number(ge=1))
    #: Processes of the service's user (RLIMIT_NPROC; the kernel counts per user).
    nproc: int | None = attrs.field(default=None, validator=optional_number(ge=1))
    #: Cores, e.g. 0.5: the sub-group's CPU quota.
    cpu: float | None = attrs.field(default=None, validator=optional_number(gt=0))


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
    cwd: str | None = path_field(None)
    # None: workspace.user when dev8 runs as root, else dev8's own user (see Config.service_user).
    user: str | None = attrs.field(default=None, validator=check_name)
    restart: RestartType = RestartType.PERMANENT
    critical: bool = False  # ending for good shuts dev8 down with exit code 3
    enabled: bool = True
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = attrs.field(default=10.0, validator=number(ge=0))
    start_timeout: float = attrs.field(default=60.0, validator=number(gt=0))
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
        default=None, validator=optional_number(ge=-1000, lt=1001)
    )
