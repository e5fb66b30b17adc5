"""The whole configuration, `Config`, and its small sections (workspace, api, log, ...)."""

import re
from collections.abc import Mapping
from typing import Any, Literal, TypeAlias

import attrs

from dev8.config.alerts import AlertsConfig
from dev8.config.binds import Bind, TcpBind
from dev8.config.checks import check_name, number, path_field
from dev8.config.errors import Invalid
from dev8.config.services import IntensityConfig, ServiceConfig
from dev8.secrets.settings import SecretsConfig

_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def _check_services(
    _inst: Any, attribute: "attrs.Attribute[Any]", value: Mapping[str, Any]
) -> None:
    for name in value:
        if not _SERVICE_NAME.fullmatch(name):
            raise Invalid(
                "invalid service name: expected 1 to 63 of a-z, 0-9, '-', '_', "
                "starting with a letter or digit",
                at=(attribute.name, name),
            )


LogLevel: TypeAlias = Literal["debug", "info", "warning", "error"]


@attrs.frozen
class WorkspaceConfig:
    dir: str = path_field("/workspace")
    user: str = attrs.field(default="dev8", validator=check_name)


@attrs.frozen
class ApiConfig:
    bind: Bind = TcpBind("127.0.0.1", 9000)  # noqa: RUF009 - frozen, shared safely
    token_file: str | None = path_field(None)
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
    timeout: float = attrs.field(default=30.0, validator=number(gt=0))
    kill_grace: float = attrs.field(default=2.0, validator=number(ge=0))


@attrs.frozen
class SupervisorConfig:
    intensity: IntensityConfig = attrs.field(factory=lambda: IntensityConfig(50, 60.0))


@attrs.frozen
class ConnectionsConfig:
    """The connection tracker reads the kernel's TCP tables every `interval` seconds."""

    interval: float = attrs.field(default=5.0, validator=number(gt=0))


@attrs.frozen
class ResourcesConfig:
    """The resource sampler: every `interval` seconds; events when a fraction of a limit is
    crossed (memory of its limit, CPU of its cores)."""

    interval: float = attrs.field(default=10.0, validator=number(gt=0))
    memory_threshold: float = attrs.field(default=0.8, validator=number(gt=0))
    cpu_threshold: float = attrs.field(default=0.8, validator=number(gt=0))


def _check_port_owners(
    _inst: Any, attribute: "attrs.Attribute[Any]", value: Mapping[str, "ServiceConfig"]
) -> None:
    owner: dict[int, str] = {}
    for name, service in value.items():
        for index, port in enumerate(service.ports):
            if port in owner:
                raise Invalid(
                    f"port {port} is already counted for service {owner[port]!r}",
                    at=(attribute.name, name, "ports", index),
                )
            owner[port] = name


@attrs.frozen
class ChaosConfig:
    """Fault injection through the API (`/chaos/...`): off unless a test rig turns it on."""

    enabled: bool = False


@attrs.frozen
class IdleConfig:
    """`workspace_idle` after `after` seconds with nobody connected (null: never)."""

    after: float | None = attrs.field(default=1800.0)
    #: Whether event-stream (websocket) clients of the API count as someone connected.
    api_clients: bool = True

    @after.validator
    def _check_after(self, attribute: "attrs.Attribute[Any]", value: float | None) -> None:
        if value is not None:
            number(gt=0)(self, attribute, value)


@attrs.frozen
class Config:
    """The whole configuration. A new section is one attrs class and one field here."""

    environment_id: str = attrs.field(default="local", validator=check_name)
    user_id: str = attrs.field(default="local", validator=check_name)
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
