"""Listen addresses: `HOST:PORT`, `[IPV6]:PORT` or `unix:/PATH`."""

import ipaddress
import os
import re
from typing import TypeAlias

import attrs

from dev8.config.checks import number
from dev8.config.errors import Invalid


@attrs.frozen
class TcpBind:
    """`HOST:PORT`; `str()` gives back the text it was parsed from."""

    host: str
    port: int = attrs.field(validator=number(ge=1, lt=65536))

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
BIND_FORMS = "expected HOST:PORT, [IPV6]:PORT or unix:/ABSOLUTE/PATH"


def valid_hostname(host: str) -> bool:
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
            raise Invalid(f"{BIND_FORMS} (the socket path must be absolute)", text)
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise Invalid(f"a socket path of at most {_SUN_PATH_MAX} bytes", text)
        return UnixBind(path)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not _PORT.fullmatch(port_text):
        raise Invalid(BIND_FORMS, text)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise Invalid("expected a port from 1 to 65535", text)
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise Invalid(f"{BIND_FORMS} (bad IPv6 address)", text) from None
        return TcpBind(host[1:-1], port)
    if ":" in host:
        raise Invalid(f"{BIND_FORMS} (put an IPv6 address in brackets: [::1]:9000)", text)
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not valid_hostname(host):
            raise Invalid(f"{BIND_FORMS} (bad host)", text) from None
    return TcpBind(host, port)


#: Host names a loopback API answers to by default (its Host-header allow-list).
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
