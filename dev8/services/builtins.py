"""The built-in services: code-server and sshd, with their defaults filled in.

A service with ``builtin: code-server`` or ``builtin: sshd`` needs no command: this module
provides the command, the readiness and liveness probes, the ports whose connections count, and
the preparation each start needs (sshd config, persisted host keys, privilege-separation dir;
code-server's state directories and password). Anything set in the service's own config wins.
"""

from __future__ import annotations

import functools
import os
import pwd
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio

from dev8.config import Config, ProbeConfig, ProbesConfig, ServiceConfig
from dev8.pid1.reaper import OwnPids
from dev8.services.codeserver import (
    CodeServerSettings,
    codeserver_command,
    codeserver_env,
    prepare_codeserver_dirs,
)
from dev8.services.sshd import (
    SshdSettings,
    ensure_host_keys,
    host_key_paths,
    prepare_sshd_runtime,
    sshd_command,
    write_sshd_config,
)
from dev8.services.storage import Placement, Storage, mirror_authorized_keys, workspace_placement

#: Fetches a secret's current value by name (None when absent).
SecretGetter = Callable[[str], Awaitable[str | None]]


@attrs.frozen(kw_only=True)
class Builtin:
    """What a built-in adds to a service: the effective config and a per-start preparation."""

    service: ServiceConfig
    #: Runs before every spawn; returns extra environment for the process (never on argv).
    prepare: Callable[[], Awaitable[dict[str, str]]]


async def _nothing() -> dict[str, str]:
    return {}


def _as_root() -> bool:
    return os.geteuid() == 0


def runtime_dir(config: Config) -> Path:
    """Where generated files that the workspace user must not be able to swap live."""
    if _as_root():
        return Path("/run/dev8")
    return Path(config.workspace.dir) / ".dev8" / "run"


def _user_entry(config: Config, name: str) -> pwd.struct_passwd:
    user = config.service_user(name, as_root=_as_root())
    return pwd.getpwuid(os.geteuid()) if user is None else pwd.getpwnam(user)


def _with_defaults(
    service: ServiceConfig,
    *,
    command: tuple[str, ...],
    probes: ProbesConfig,
    ports: tuple[int, ...],
    user: str | None,
) -> ServiceConfig:
    return attrs.evolve(
        service,
        command=service.command or command,
        probes=ProbesConfig(
            readiness=service.probes.readiness or probes.readiness,
            liveness=service.probes.liveness or probes.liveness,
        ),
        ports=service.ports or ports,
        user=service.user if service.user is not None else user,
    )


def _placement(config: Config, where: Placement | None) -> Placement:
    """What dev8 found at start (dev8.services.storage), else the workspace as where modes hold."""
    if where is not None:
        return where
    return workspace_placement(Storage(path=config.workspace.dir, fs_type="", modes_hold=True))


def sshd_builtin(
    name: str, service: ServiceConfig, config: Config, *, own: OwnPids, where: Placement | None
) -> Builtin:
    options = service.sshd
    # On storage that keeps no modes (SMB) the host keys and authorized keys live in /run/dev8.
    where = _placement(config, where)
    key_dir = where.host_key_dir
    config_path = runtime_dir(config) / f"{name}_config"
    login_user = config.workspace.user if _as_root() else pwd.getpwuid(os.geteuid()).pw_name
    settings = SshdSettings(
        port=options.port,
        listen_address=options.listen,
        host_keys=host_key_paths(key_dir),
        authorized_keys_files=where.authorized_keys_files,
        allowed_user=login_user,
    )
    banner = ProbeConfig(type="ssh-banner", port=options.port, interval=10.0, timeout=5.0)
    effective = _with_defaults(
        service,
        command=tuple(sshd_command(config_path)),
        probes=ProbesConfig(
            readiness=banner, liveness=attrs.evolve(banner, interval=30.0, failure_threshold=3)
        ),
        ports=(options.port,),
        # sshd starts as root so that it can let the workspace user in; it drops privileges
        # for every session. Without root it can only let dev8's own user in.
        user="root" if _as_root() else None,
    )

    def prepare_blocking() -> None:
        state = key_dir.parent
        if _as_root() and not where.relocated and not state.exists():
            # The workspace's .dev8 belongs to the user (code-server keeps state there too);
            # only the host keys below it are root's.
            entry = pwd.getpwnam(config.workspace.user)
            state.mkdir(mode=0o755, parents=True)
            os.chown(state, entry.pw_uid, entry.pw_gid)
        ensure_host_keys(key_dir)
        write_sshd_config(settings, config_path)
        # Modes cannot be fixed in a workspace that keeps none: sshd reads copies instead.
        prepare_sshd_runtime(login_user, own_home=not where.relocated)
        if where.relocated:
            mirror_authorized_keys(where, login_user)

    async def prepare() -> dict[str, str]:
        # ssh-keygen and usermod are spawned and waited outside trio: the reaper must hold off.
        with own.spawning():
            await trio.to_thread.run_sync(prepare_blocking)
        return {}

    return Builtin(service=effective, prepare=prepare)


def codeserver_builtin(
    name: str,
    service: ServiceConfig,
    config: Config,
    *,
    get_secret: SecretGetter | None,
    where: Placement | None,
) -> Builtin:
    options = service.code_server
    state = Path(config.workspace.dir) / ".dev8" / "code-server"
    settings = CodeServerSettings(
        bind_addr=options.bind,
        auth=options.auth,
        workspace_dir=Path(config.workspace.dir),
        user_data_dir=state / "data",
        extensions_dir=state / "extensions",
        binary=Path(options.binary),
    )
    healthz = ProbeConfig(
        type="http", url=f"{settings.local_url}/healthz", interval=10.0, timeout=5.0
    )
    effective = _with_defaults(
        service,
        command=tuple(codeserver_command(settings)),
        probes=ProbesConfig(
            readiness=healthz, liveness=attrs.evolve(healthz, interval=30.0, failure_threshold=3)
        ),
        ports=(settings.port,),
        user=None,
    )
    secret_name = options.password_secret.replace("{userId}", config.user_id).replace(
        "{environmentId}", config.environment_id
    )

    async def prepare() -> dict[str, str]:
        entry = _user_entry(config, name)
        modes_hold = _placement(config, where).storage.modes_hold
        await trio.to_thread.run_sync(
            functools.partial(
                prepare_codeserver_dirs, settings, entry.pw_uid, entry.pw_gid, modes_hold=modes_hold
            )
        )
        password = None
        if settings.auth == "password":
            if get_secret is None:
                raise BuiltinError("code-server auth 'password' needs a secret provider")
            password = await get_secret(secret_name)
            if not password:
                raise BuiltinError(f"code-server password secret {secret_name!r} is missing")
        return codeserver_env(settings, password)

    return Builtin(service=effective, prepare=prepare)


class BuiltinError(Exception):
    """A built-in service cannot be prepared (its start fails, and is retried with backoff)."""


def expand(
    name: str,
    service: ServiceConfig,
    config: Config,
    *,
    own: OwnPids,
    get_secret: SecretGetter | None = None,
    placement: Placement | None = None,
) -> Builtin:
    """The effective service config and its preparation; plain services pass through.

    `placement`: where files that need strict modes live (dev8.services.storage); None keeps
    them all in the workspace.
    """
    if service.builtin == "sshd":
        return sshd_builtin(name, service, config, own=own, where=placement)
    if service.builtin == "code-server":
        return codeserver_builtin(name, service, config, get_secret=get_secret, where=placement)
    return Builtin(service=service, prepare=_nothing)
