"""OpenSSH as a built-in service: key-only config, persistent host keys, readiness banner.

The process actor runs `sshd_command(...)`; this module only knows what OpenSSH needs. Works
with a root sshd (privilege separation; needs `/run/sshd`) and with a non-root sshd, which
can only let its own user in.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

__all__ = [
    "DEFAULT_HOST_KEY_DIR",
    "HOST_KEY_TYPES",
    "SSHD_BINARY",
    "SshBannerError",
    "SshdSettings",
    "ensure_host_keys",
    "host_key_paths",
    "prepare_sshd_runtime",
    "read_ssh_banner",
    "render_sshd_config",
    "sshd_command",
    "sshd_test_command",
    "write_sshd_config",
]

SSHD_BINARY = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
#: Under the persistent workspace so a recreated container keeps its host identity.
DEFAULT_HOST_KEY_DIR = Path("/workspace/.dev8/ssh")
#: (ssh-keygen -t, extra args): ed25519 for modern clients, RSA for everything else.
HOST_KEY_TYPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ed25519", ()),
    ("rsa", ("-b", "3072")),
)
#: Compiled into Debian's sshd as its privilege-separation directory; /run is a tmpfs.
PRIVSEP_DIR = Path("/run/sshd")

# A token is written into sshd_config unquoted: refuse anything that could split or extend it.
_CONFIG_TOKEN = re.compile(r"[^\s\"'#\\]+")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


def host_key_paths(directory: Path) -> tuple[Path, ...]:
    """The private host keys `ensure_host_keys(directory)` maintains."""
    return tuple(directory / f"ssh_host_{kind}_key" for kind, _ in HOST_KEY_TYPES)


def _check_token(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    values = value if isinstance(value, tuple) else (value,)
    if not values:
        raise ValueError(f"{attribute.name} must not be empty")
    for item in values:
        if not _CONFIG_TOKEN.fullmatch(str(item)):
            raise ValueError(f"{attribute.name} has an unsafe sshd_config value: {item!r}")


def _check_user(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _USER_NAME.fullmatch(value):
        raise ValueError(f"{attribute.name} is not a valid user name: {value!r}")
    if value == "root":
        raise ValueError(f"{attribute.name} cannot be root: root login is always refused")


def _check_port(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 < value < 65536:
        raise ValueError(f"{attribute.name} must be 1..65535, got {value}")


def _paths(value: tuple[Path | str, ...] | list[Path | str]) -> tuple[Path, ...]:
    return tuple(Path(v) for v in value)


def _strs(value: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen(kw_only=True)
class SshdSettings:
    """What varies between deployments; everything security-relevant is fixed in the renderer.

    `authorized_keys_files` uses sshd's tokens (`%h`, `%u`); relative paths are under the
    user's home. StrictModes applies: every directory on an absolute path must be owned by
    root (or the user) and not group/world-writable, so not under /tmp.
    """

    port: int = attrs.field(default=2222, validator=_check_port)
    listen_address: str = attrs.field(default="0.0.0.0", validator=_check_token)  # noqa: S104
    host_keys: tuple[Path, ...] = attrs.field(
        factory=lambda: host_key_paths(DEFAULT_HOST_KEY_DIR),
        converter=_paths,
        validator=_check_token,
    )
    authorized_keys_files: tuple[str, ...] = attrs.field(
        default=(".ssh/authorized_keys",), converter=_strs, validator=_check_token
    )
    allowed_user: str = attrs.field(default="dev8", validator=_check_user)
    pid_file: str = attrs.field(default="none", validator=_check_token)
    sftp_server: Path = attrs.field(
        default=Path("/usr/lib/openssh/sftp-server"), converter=Path, validator=_check_token
    )
    use_pam: bool = False
    client_alive_interval: int = attrs.field(default=30, validator=attrs.validators.ge(0))
    client_alive_count_max: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    login_grace_time: int = attrs.field(default=30, validator=attrs.validators.ge(1))


def render_sshd_config(settings: SshdSettings) -> str:
    """Key-only, one allowed user, no root; forwarding on because VS Code Remote-SSH needs it."""
    lines = [
        "# Written by dev8; regenerated at every start, do not edit.",
        f"Port {settings.port}",
        f"ListenAddress {settings.listen_address}",
        *(f"HostKey {key}" for key in settings.host_keys),
        f"PidFile {settings.pid_file}",
        f"UsePAM {'yes' if settings.use_pam else 'no'}",
        # VERBOSE logs each refused key ("Failed publickey for ..."), which dev8 counts
        # (dev8_ssh_failed_auth_total); INFO logs only the connection that gave up.
        "LogLevel VERBOSE",
        "",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "PermitEmptyPasswords no",
        "PermitRootLogin no",
        f"AllowUsers {settings.allowed_user}",
        f"AuthorizedKeysFile {' '.join(settings.authorized_keys_files)}",
        "StrictModes yes",
        f"LoginGraceTime {settings.login_grace_time}",
        "",
        "AllowTcpForwarding yes",
        "AllowAgentForwarding yes",
        "GatewayPorts no",
        "PermitTunnel no",
        "X11Forwarding no",
        "PermitUserEnvironment no",
        "PrintMotd no",
        "PrintLastLog no",
        f"ClientAliveInterval {settings.client_alive_interval}",
        f"ClientAliveCountMax {settings.client_alive_count_max}",
        "",
        f"Subsystem sftp {settings.sftp_server}",
        "",
    ]
    return "\n".join(lines)


def sshd_command(config_path: Path | str) -> list[str]:
    """Foreground (-D), logs to stderr (-e) so the process actor captures them."""
    return [SSHD_BINARY, "-D", "-e", "-f", str(config_path)]


def sshd_test_command(config_path: Path | str) -> list[str]:
    """`sshd -t`: checks the config and the host keys, exits 0 when sshd would start."""
    return [SSHD_BINARY, "-t", "-f", str(config_path)]


def write_sshd_config(settings: SshdSettings, path: Path) -> Path:
    """Atomically (re)write the config, mode 0600: sshd reads it once at start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, render_sshd_config(settings).encode(), mode=0o600)
    return path


def ensure_host_keys(directory: Path = DEFAULT_HOST_KEY_DIR) -> list[Path]:
    """Generate the host keys once and reuse them, so clients keep trusting a restarted box.

    Blocking (runs ssh-keygen): from trio call it via `trio.to_thread.run_sync`. Keys are 0600
    and the directory 0700, owned by whoever runs this (root for a root sshd): sshd refuses
    host keys that others can read. A key ssh-keygen cannot read is replaced.
    """
    directory.mkdir(parents=True, exist_ok=True)
    _secure(directory, 0o700, os.O_DIRECTORY)
    keys: list[Path] = []
    for (kind, extra), key in zip(HOST_KEY_TYPES, host_key_paths(directory), strict=True):
        if key.is_symlink() or (key.is_file() and key.stat().st_nlink > 1):
            key.unlink()  # planted in the workspace: a link's target is not ours to chmod
        elif key.is_file():
            _secure(key, 0o600)  # ssh-keygen refuses to read a key others can read
        if not _is_valid_private_key(key):
            _generate_key(directory, key, kind, extra)
        _secure(key, 0o600)
        keys.append(key)
    _fsync_dir(directory)
    return keys


def _secure(path: Path, mode: int, flags: int = 0) -> None:
    """Own and chmod `path` itself, never a symlink's target (the workspace is user-writable)."""
    with _opened(path, os.O_RDONLY | os.O_NOFOLLOW | flags) as fd:
        os.fchown(fd, os.geteuid(), os.getegid())
        os.fchmod(fd, mode)


def _is_valid_private_key(key: Path) -> bool:
    if not key.is_file() or key.stat().st_size == 0:
        return False
    result = subprocess.run(
        [SSH_KEYGEN, "-y", "-f", str(key)],
        capture_output=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return result.returncode == 0


def _generate_key(directory: Path, key: Path, kind: str, extra: tuple[str, ...]) -> None:
    """ssh-keygen into a private temp dir, then rename: a crash never leaves half a key."""
    with tempfile.TemporaryDirectory(dir=directory, prefix=".keygen-") as tmp:
        tmp_key = Path(tmp) / key.name
        subprocess.run(
            [
                SSH_KEYGEN,
                "-q",
                "-N",
                "",
                "-t",
                kind,
                *extra,
                "-C",
                f"dev8-host-{kind}",
                "-f",
                str(tmp_key),
            ],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        pub = tmp_key.with_name(tmp_key.name + ".pub")
        for written in (pub, tmp_key):
            _fsync_file(written)
        os.chmod(pub, 0o644)
        # The public half first: the private key's presence means the pair is complete.
        os.replace(pub, key.with_name(key.name + ".pub"))
        os.replace(tmp_key, key)


def prepare_sshd_runtime(
    user: str, *, privsep_dir: Path = PRIVSEP_DIR, own_home: bool = True
) -> None:
    """Make the host ready for a key login as `user`; sshd refuses silently otherwise.

    As root: creates sshd's privilege-separation dir, and unlocks an account that `useradd`
    left locked (`!` in /etc/shadow) with `*` (no password can ever match; keys still work:
    with `UsePAM no` sshd refuses locked accounts). For the user, in any case it has the rights
    to: home not group/world-writable, `~/.ssh` 0700 and `~/.ssh/authorized_keys` 0600 (created
    empty when missing), owned by the user, as StrictModes requires (not with `own_home=False`:
    a workspace that keeps no modes, see dev8.services.storage). Blocking.
    """
    entry = pwd.getpwnam(user)
    is_root = os.geteuid() == 0
    if not is_root and entry.pw_uid != os.geteuid():
        return
    if is_root:
        privsep_dir.mkdir(parents=True, exist_ok=True)
        os.chown(privsep_dir, 0, 0)
        os.chmod(privsep_dir, 0o755)  # noqa: S103 -- the mode Debian's sshd expects
        if _shadow_password(user).startswith("!"):
            subprocess.run(
                ["/usr/sbin/usermod", "-p", "*", user],
                check=True,
                capture_output=True,
                stdin=subprocess.DEVNULL,
            )
    if not own_home:
        return
    home = Path(entry.pw_dir)
    home_mode = home.stat().st_mode
    if home_mode & 0o022:
        os.chmod(home, home_mode & ~0o022 & 0o7777)
    _own_private(home, entry.pw_uid, entry.pw_gid)


def _own_private(home: Path, uid: int, gid: int) -> None:
    """`~/.ssh` and its authorized_keys, without following links the user may have planted.

    The user controls their home: a root chown through a symlink (or a hard link) to
    /etc/shadow would hand it over, hence O_NOFOLLOW, fchown and the link-count check.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(home / ".ssh", 0o700)
    with _opened(home / ".ssh", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW) as dir_fd:
        os.fchown(dir_fd, uid, gid)
        os.fchmod(dir_fd, 0o700)
        fd = os.open(
            "authorized_keys",
            os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise PermissionError(f"{home}/.ssh/authorized_keys is not a plain file")
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def _shadow_password(user: str, shadow: Path = Path("/etc/shadow")) -> str:
    """The password field, so the caller can tell a locked account; never log it."""
    for line in shadow.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user and len(fields) > 1:
            return fields[1]
    raise LookupError(f"user {user!r} not found in {shadow}")


class SshBannerError(Exception):
    """The port did not answer like an SSH server within the timeout."""


async def read_ssh_banner(host: str, port: int, timeout: float) -> str:
    """Readiness probe: connect and return the server's `SSH-2.0-…` identification line.

    Reads only; sends nothing, so sshd logs the probe as a closed pre-auth connection.
    """
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                return await _read_identification(stream)
    except trio.TooSlowError:
        raise SshBannerError(f"no SSH banner from {host}:{port} within {timeout} s") from None
    except OSError as exc:
        raise SshBannerError(f"cannot connect to {host}:{port}: {exc}") from None


async def _read_identification(stream: trio.SocketStream) -> str:
    # RFC 4253 4.2: the server may send other lines first; the version line is <= 255 bytes.
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            text = line.rstrip(b"\r").decode("utf-8", "replace")
            if text.startswith("SSH-"):
                if not text.startswith("SSH-2.0-"):
                    raise SshBannerError(f"unsupported SSH version: {text[:64]!r}")
                return text
        if len(buffer) > 255:
            raise SshBannerError("no SSH identification line in the first bytes")
        chunk = await stream.receive_some(256)
        if not chunk:
            raise SshBannerError("connection closed before the SSH banner")
        buffer += chunk


def _atomic_write(path: Path, data: bytes, *, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    with _opened(path, os.O_RDONLY) as fd:
        os.fsync(fd)


def _fsync_dir(directory: Path) -> None:
    with _opened(directory, os.O_RDONLY | os.O_DIRECTORY) as fd:
        os.fsync(fd)


@contextlib.contextmanager
def _opened(path: Path, flags: int) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)
