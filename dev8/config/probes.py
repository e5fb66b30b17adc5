"""The `probes:` of a service: readiness and liveness checks (Kubernetes' handlers)."""

import enum
import ipaddress
import urllib.parse
from typing import Any

import attrs

from dev8.config.binds import valid_hostname
from dev8.config.checks import number
from dev8.config.errors import NO_VALUE, Invalid


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
            raise Invalid("required for an http probe", at=("url",))
        return
    try:
        parts = urllib.parse.urlsplit(value)
        scheme, host, has_password = parts.scheme, parts.hostname, parts.password is not None
    except ValueError:  # e.g. an unclosed IPv6 bracket
        scheme, host, has_password = "", None, "@" in value
    if scheme not in ("http", "https") or not host or "\0" in value:
        # A URL with a password in it is described, never shown.
        shown = NO_VALUE if has_password else value
        raise Invalid("expected an http:// or https:// URL with a host", shown, at=("url",))


def _check_probe_port(inst: "ProbeConfig", _attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if value is None:
        if inst.type in _PORT_TYPES:
            article = "an" if inst.type is ProbeType.SSH_BANNER else "a"
            raise Invalid(f"required for {article} {inst.type.value} probe", at=("port",))
        return
    if not 1 <= value <= 65535:
        raise Invalid("expected a port from 1 to 65535", value, at=("port",))


def _check_host(_inst: Any, attribute: "attrs.Attribute[Any]", value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not valid_hostname(value):
            raise Invalid(
                "expected an IP address or a host name", value, at=(attribute.name,)
            ) from None


def _check_status(_inst: Any, attribute: "attrs.Attribute[Any]", value: int) -> None:
    if not 100 <= value <= 599:
        raise Invalid("expected an HTTP status from 100 to 599", value, at=(attribute.name,))


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
    interval: float = attrs.field(default=30.0, validator=number(gt=0))
    timeout: float = attrs.field(default=5.0, validator=number(gt=0))
    initial_delay: float = attrs.field(default=0.0, validator=number(ge=0))
    failure_threshold: int = attrs.field(default=3, validator=number(ge=1))
    success_threshold: int = attrs.field(default=1, validator=number(ge=1))


def _check_liveness(
    _inst: Any, attribute: "attrs.Attribute[Any]", value: ProbeConfig | None
) -> None:
    # One success proves a process alive; more would only delay the reset of its failures.
    if value is not None and value.success_threshold != 1:
        raise Invalid(
            "expected 1 for a liveness probe",
            value.success_threshold,
            at=(attribute.name, "success_threshold"),
        )


@attrs.frozen
class ProbesConfig:
    """`readiness` gates the start and `/health`; `liveness` failing restarts the service."""

    readiness: ProbeConfig | None = None
    liveness: ProbeConfig | None = attrs.field(default=None, validator=_check_liveness)
