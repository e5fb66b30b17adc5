"""Where the workspace volume lives, and whether file modes and owners hold on it.

The platform keeps /workspace on Azure Files (SMB). An SMB mount shows every file with the
mount's fixed mode and owner: sshd's StrictModes then refuses ``~/.ssh/authorized_keys``, host
keys under /workspace are readable by everyone, and ``chmod 0600`` on an injected credential
silently does nothing. dev8 finds this out once at start -- the mount's file-system type, and
a probe file whose mode or owner does not stick -- and then keeps what needs strict modes where
modes hold, in /run/dev8 (root's tmpfs): the SSH host keys, the injected credentials (among
them the authorized key) in a home of their own that git, gh, ssh and login shells are pointed
at by system-wide configuration, and a root-owned copy of the user's own authorized_keys; sshd's
``AuthorizedKeysFile`` names the last two.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import tempfile
from pathlib import Path
from typing import Any

import attrs
import structlog

__all__ = [
    "SMB_FS_TYPES",
    "Placement",
    "Storage",
    "detect_storage",
    "mirror_authorized_keys",
    "mount_fs_type",
    "placement",
    "prepare_strict_home",
    "probe_modes",
    "workspace_placement",
]

#: What the kernel calls an SMB mount in /proc/self/mountinfo.
SMB_FS_TYPES = frozenset({"cifs", "smb3", "smbfs"})
#: Root's runtime directory: a tmpfs in a container, where modes always hold.
STRICT_ROOT = Path("/run/dev8")
#: The most an authorized_keys file may hold; more is refused rather than truncated.
MAX_AUTHORIZED_KEYS = 256 * 1024
_MOUNTINFO = Path("/proc/self/mountinfo")
log = structlog.get_logger("dev8.services.storage")


@attrs.frozen
class Storage:
    """The workspace's file system, as found at start."""

    path: str
    fs_type: str
    modes_hold: bool

    @property
    def kind(self) -> str:
        """``smb``, ``fixed-modes`` (any other mount that ignores chmod/chown) or ``posix``."""
        if self.fs_type in SMB_FS_TYPES:
            return "smb"
        return "posix" if self.modes_hold else "fixed-modes"

    def to_status(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "fsType": self.fs_type,
            "modesHold": self.modes_hold,
        }


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_fs_type(path: str | os.PathLike[str], mountinfo: Path = _MOUNTINFO) -> str:
    """The file-system type of the mount holding `path` (the longest mount point above it)."""
    target = os.path.realpath(path)
    best, best_type = "", "unknown"
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return best_type
    for line in lines:
        fields = line.split()
        # 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw  (proc(5))
        if "-" not in fields[6:]:
            continue
        point = _unescape(fields[4])
        fs_type = fields[fields.index("-", 6) + 1]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # later mounts over the same point win
            best, best_type = point, fs_type
    return best_type


def probe_modes(directory: str | os.PathLike[str]) -> bool:
    """Whether a chmod (and, as root, the owner of a new file) sticks in `directory`.

    Creates and removes one probe file (mkstemp: a fresh name, O_EXCL). A directory that cannot
    be written to says nothing about modes: True then.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=".dev8-modes-", dir=directory)
    except OSError:
        return True
    try:
        for mode in (0o600, 0o640):
            os.fchmod(fd, mode)
            if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
                return False
        return os.fstat(fd).st_uid == os.geteuid()
    except OSError:
        return False
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)


def detect_storage(path: str | os.PathLike[str]) -> Storage:
    """Blocking (a probe file): call before trio runs, or from a thread."""
    fs_type = mount_fs_type(path)
    hold = fs_type not in SMB_FS_TYPES and probe_modes(path)
    return Storage(path=str(path), fs_type=fs_type, modes_hold=hold)


@attrs.frozen
class Placement:
    """Where the files that need strict modes live for one workspace."""

    storage: Storage
    host_key_dir: Path
    #: sshd's AuthorizedKeysFile entries (``%u``: the user; relative: under the home).
    authorized_keys_files: tuple[str, ...]
    #: Where the secrets injector writes the user's credential files.
    credentials_home: Path
    #: Where sshd's copy of the authorized keys lives (None: sshd reads the user's own file).
    authorized_keys_dir: Path | None = None

    @property
    def relocated(self) -> bool:
        return self.authorized_keys_dir is not None


def workspace_placement(storage: Storage) -> Placement:
    """Everything in the workspace, as where modes hold."""
    workspace = Path(storage.path)
    return Placement(
        storage=storage,
        host_key_dir=workspace / ".dev8" / "ssh",
        authorized_keys_files=(".ssh/authorized_keys",),
        credentials_home=workspace,
    )


def placement(workspace_dir: str, *, as_root: bool, strict_root: Path = STRICT_ROOT) -> Placement:
    """Where the strict files go for this workspace. Blocking (the probe): once, at start.

    Only root can keep files where the user cannot change them, so a non-root dev8 (a local
    run) keeps everything in the workspace, as do workspaces whose modes hold.
    """
    storage = detect_storage(workspace_dir)
    if storage.modes_hold or not as_root:
        return workspace_placement(storage)
    return Placement(
        storage=storage,
        host_key_dir=strict_root / "ssh-host-keys",
        # The injected key (the injector writes it there), then a copy of the user's own file.
        authorized_keys_files=(
            str(strict_root / "home" / ".ssh" / "authorized_keys"),
            str(strict_root / "authorized_keys" / "%u"),
        ),
        credentials_home=strict_root / "home",
        authorized_keys_dir=strict_root / "authorized_keys",
    )


def _strict_dir(path: Path, mode: int, uid: int = 0, gid: int = 0) -> None:
    """A directory under root's /run, made or fixed (nothing the user controls is on its path)."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _write_root_file(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.dev8-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_user_file(home: Path, parts: tuple[str, ...], limit: int) -> bytes | None:
    """A file under the user's home, read as root without following links the user planted.

    None when it is missing; ValueError when it is not a plain file or is too large.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    opened: list[int] = []
    try:
        fd = os.open(home, flags | os.O_DIRECTORY)
        opened.append(fd)
        for part in parts[:-1]:
            fd = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            opened.append(fd)
        fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
        opened.append(fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{home.joinpath(*parts)} is not a plain file")
        if info.st_size > limit:
            raise ValueError(f"{home.joinpath(*parts)} is larger than {limit} bytes")
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise ValueError(f"{home.joinpath(*parts)} is larger than {limit} bytes")
        return data
    except FileNotFoundError:
        return None
    finally:
        for fd in reversed(opened):
            os.close(fd)


def mirror_authorized_keys(where: Placement, user: str, home: Path | None = None) -> Path:
    """Copy the user's ``~/.ssh/authorized_keys`` to where sshd reads it (root-owned, 0644).

    Blocking; runs before every sshd start. sshd reads the copy at each login, so the copy is
    what counts until the next start (``POST /restart/ssh`` after changing the file). A file
    that is not a plain file (a planted link) or is too large gives an empty copy and a warning
    naming it: sshd still starts, and the injected key still lets the user in.
    """
    assert where.authorized_keys_dir is not None
    home = Path(pwd.getpwnam(user).pw_dir) if home is None else home
    try:
        data = _read_user_file(home, (".ssh", "authorized_keys"), MAX_AUTHORIZED_KEYS)
    except (OSError, ValueError) as e:
        log.warning(
            "storage.authorized_keys_skipped",
            path=str(home / ".ssh" / "authorized_keys"),
            error=type(e).__name__,
            reason=str(e) if isinstance(e, ValueError) else e.strerror,
        )
        data = None
    _strict_dir(where.authorized_keys_dir.parent, 0o755)
    _strict_dir(where.authorized_keys_dir, 0o755)
    target = where.authorized_keys_dir / user
    _write_root_file(target, (data or b"").decode("utf-8", "replace"))
    return target


def prepare_strict_home(
    where: Placement, user: str, github_host: str, *, etc: Path = Path("/etc")
) -> None:
    """Make the credentials home (the user's, 0700) and point git, gh, ssh and shells at it.

    Blocking; as root, once at start and only when the workspace keeps no modes. Writes
    /etc/gitconfig (includes the injected ``.gitconfig``; the one credential helper for the
    GitHub host reads the injected store, so a push never writes the token back into
    /workspace), an ssh_config.d snippet naming the injected keys, and a profile.d script that
    sets GH_CONFIG_DIR and loads the injected environment.
    """
    entry = pwd.getpwnam(user)
    home = where.credentials_home
    _strict_dir(home.parent, 0o755)
    _strict_dir(home, 0o700, entry.pw_uid, entry.pw_gid)
    _write_root_file(
        etc / "gitconfig",
        "# Written by dev8: /workspace keeps no file modes, the credentials live in"
        f" {home}.\n"
        f"[include]\n\tpath = {home}/.gitconfig\n"
        f'[credential "https://{github_host}"]\n'
        f"\thelper =\n\thelper = store --file={home}/.git-credentials\n",
    )
    keys = ("id_ed25519", "id_ecdsa", "id_rsa", "id_ed25519_sk", "id_ecdsa_sk")
    ssh_dir = etc / "ssh" / "ssh_config.d"
    if ssh_dir.is_dir():
        _write_root_file(
            ssh_dir / "dev8-storage.conf",
            "# Written by dev8: the injected SSH keys, then OpenSSH's defaults.\nHost *\n"
            + "".join(f"\tIdentityFile {home}/.ssh/{key}\n" for key in keys)
            + "".join(f"\tIdentityFile ~/.ssh/{key}\n" for key in keys),
        )
    profile = etc / "profile.d"
    if profile.is_dir():
        _write_root_file(
            profile / "dev8-storage.sh",
            "# Written by dev8: the injected credentials live outside /workspace.\n"
            f"export GH_CONFIG_DIR={home}/.config/gh\n"
            f'if [ -r "{home}/.config/dev8/secrets.env" ]; then'
            f' . "{home}/.config/dev8/secrets.env"; fi\n',
        )
