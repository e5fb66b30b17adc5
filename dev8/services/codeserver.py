"""code-server (VS Code in the browser) as a built-in service: command line and environment.

Installed by `scripts/install-code-server.sh` (default `/opt/code-server`). Settings and
extensions live under the persistent workspace so they survive a recreated container.

Authentication: `auth="none"` serves the editor -- and with it a shell as the workspace user --
to anyone who reaches the port. Use it only when something in front authenticates every
request (the platform's gateway or an authenticating proxy) and the port is not reachable
otherwise; on its own, use `auth="password"`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Literal

import attrs

__all__ = [
    "CODESERVER_SECRET_ENV",
    "DEFAULT_BINARY",
    "CodeServerSettings",
    "codeserver_command",
    "codeserver_env",
    "prepare_codeserver_dirs",
]

DEFAULT_BINARY = Path("/opt/code-server/bin/code-server")
_STATE_DIR = Path("/workspace/.dev8/code-server")
#: Variables code-server reads a password from: strip them from any inherited environment.
CODESERVER_SECRET_ENV = ("PASSWORD", "HASHED_PASSWORD")

Auth = Literal["none", "password"]


def _check_bind_addr(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{attribute.name} must be HOST:PORT, got {value!r}")


@attrs.frozen(kw_only=True)
class CodeServerSettings:
    """How code-server is started; see the module docstring before choosing `auth="none"`."""

    bind_addr: str = attrs.field(default="0.0.0.0:8080", validator=_check_bind_addr)
    auth: Auth = attrs.field(
        default="password", validator=attrs.validators.in_(("none", "password"))
    )
    workspace_dir: Path = attrs.field(default=Path("/workspace"), converter=Path)
    user_data_dir: Path = attrs.field(default=_STATE_DIR / "data", converter=Path)
    extensions_dir: Path = attrs.field(default=_STATE_DIR / "extensions", converter=Path)
    binary: Path = attrs.field(default=DEFAULT_BINARY, converter=Path)

    @property
    def port(self) -> int:
        return int(self.bind_addr.rpartition(":")[2])

    @property
    def local_url(self) -> str:
        """Where a prober on the same host reaches it (a wildcard bind answers on loopback)."""
        host = self.bind_addr.rpartition(":")[0]
        if host in ("0.0.0.0", "", "[::]", "::"):  # noqa: S104
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"


def codeserver_command(settings: CodeServerSettings) -> list[str]:
    """The argv. Never carries the password: argv is world-readable in /proc."""
    return [
        str(settings.binary),
        # dev8 is the configuration: no user config.yaml may change auth or add a
        # hashed-password, and code-server must not write one with a generated password.
        "--config",
        "/dev/null",
        "--bind-addr",
        settings.bind_addr,
        "--auth",
        settings.auth,
        "--disable-telemetry",
        "--disable-update-check",
        "--user-data-dir",
        str(settings.user_data_dir),
        "--extensions-dir",
        str(settings.extensions_dir),
        str(settings.workspace_dir),
    ]


def codeserver_env(settings: CodeServerSettings, password: str | None) -> dict[str, str]:
    """Variables to add to code-server's environment: `PASSWORD` when auth is password.

    The base environment must not carry `CODESERVER_SECRET_ENV` (an inherited
    HASHED_PASSWORD would win over PASSWORD). A password given with `auth="none"` is refused
    rather than ignored: it means the deployment believes the editor is protected when it is not.
    """
    if settings.auth == "password":
        if not password:
            raise ValueError("code-server auth is 'password' but no password was provided")
        return {"PASSWORD": password}
    if password is not None:
        raise ValueError("a code-server password was provided but auth is 'none'")
    return {}


def prepare_codeserver_dirs(
    settings: CodeServerSettings, uid: int, gid: int, *, modes_hold: bool = True
) -> None:
    """Create the state dirs owned by the user code-server runs as (root creates the parents).

    Below the workspace (the user's, writable by them) every component is opened with
    ``O_NOFOLLOW`` relative to its parent's fd: a link planted anywhere on the way
    (``.dev8/code-server -> /etc``) fails the start instead of redirecting a mkdir and a chown.
    Blocking; call from `trio.to_thread.run_sync`.

    On storage that keeps no modes (`modes_hold=False`, an SMB share: see dev8.services.storage) a
    refused chown or chmod is expected and ignored.
    """
    for directory in (settings.user_data_dir, settings.extensions_dir):
        try:
            base, parts = (
                settings.workspace_dir,
                directory.relative_to(settings.workspace_dir).parts,
            )
        except ValueError:  # configured outside the workspace: the operator's tree
            directory.parent.mkdir(parents=True, exist_ok=True)
            base, parts = directory.parent, (directory.name,)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
                os.close(fd)
                fd = child
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
        except PermissionError:
            if modes_hold:
                raise
        finally:
            os.close(fd)
