"""Crash-safe file writes into a home directory that its (untrusted) user controls.

dev8 may run as root while the home belongs to the workspace user, so every path below the home
is walked with ``O_NOFOLLOW`` and every operation is relative to a directory fd: a symlink the
user planted (``~/.ssh -> /etc``) makes the write fail instead of redirecting it. A file is
replaced by writing a temporary file in the same directory, fsyncing it, renaming it over the
target and fsyncing the directory, so a crash at any instant leaves the old or the new content.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs

from dev8.secrets.errors import SecretInputError
from dev8.secrets.userfiles import MAX_USER_FILE_BYTES, read_at
from dev8.secrets.userfiles import UserFile as Existing

#: Temporary files start with this; a crash can leave one behind, the next write removes it.
TEMP_PREFIX = ".dev8-tmp-"
#: A file dev8 merges into is read whole or not at all (over this, it is left alone).
MAX_READ_BYTES = MAX_USER_FILE_BYTES
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@attrs.frozen
class Owner:
    """Who the written files belong to (applied only when dev8 runs as root)."""

    uid: int
    gid: int


def _should_chown(owner: Owner | None) -> bool:
    return owner is not None and os.geteuid() == 0


@contextmanager
def open_dir(
    base: str | os.PathLike[str],
    parts: Sequence[str] = (),
    *,
    mode: int = 0o700,
    owner: Owner | None = None,
    enforce_leaf: bool = True,
) -> Iterator[int]:
    """Open (creating as needed) ``base/parts...`` without following symlinks below ``base``.

    Directories created here get ``mode`` and ``owner``; the leaf is forced to them when
    ``enforce_leaf`` (``~/.ssh`` must not stay group-writable, or sshd refuses the keys).
    """
    fd = os.open(base, _DIR_FLAGS)
    try:
        for index, part in enumerate(parts):
            if not part or part in {".", ".."} or "/" in part:
                raise ValueError(f"bad path component {part!r}")
            try:
                os.mkdir(part, mode, dir_fd=fd)
                created = True
            except FileExistsError:
                created = False
            child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
            if created or (enforce_leaf and index == len(parts) - 1):
                _fix_fd(fd, mode, owner)
        yield fd
    finally:
        os.close(fd)


def read_existing(dir_fd: int, name: str, *, owner_uid: int | None = None) -> Existing | None:
    """The whole regular file at ``name``, or None if there is none (a symlink counts as none:
    the rename will replace the link itself).

    Anything else that is not a regular file (owned by ``owner_uid`` when given, or root's own
    with a single link, within :data:`MAX_READ_BYTES`) raises :class:`SecretInputError`: a file
    is never rewritten from a partial or foreign read.
    """
    try:
        return read_at(
            dir_fd, name, owner_uid=owner_uid, max_bytes=MAX_READ_BYTES, root_single_link_ok=True
        )
    except SecretInputError as e:
        if e.reason == "symlink":
            return None
        raise


def write_atomic(
    dir_fd: int,
    name: str,
    data: bytes,
    *,
    mode: int = 0o600,
    owner: Owner | None = None,
    sync_dir: bool = True,
) -> None:
    """Replace ``name`` in the directory with ``data``, all or nothing, even across SIGKILL.

    ``sync_dir=False`` leaves the directory fsync (which makes the rename durable) to the
    caller, who can then do it once for several files.
    """
    tmp = f"{TEMP_PREFIX}{name}.{secrets.token_hex(4)}"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
        dir_fd=dir_fd,
    )  # fmt: skip
    try:
        try:
            _fix_fd(fd, mode, owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_quietly(dir_fd, tmp)
        raise
    if sync_dir:
        os.fsync(dir_fd)


def fix_metadata(dir_fd: int, name: str, *, mode: int, owner: Owner | None) -> None:
    """Put mode and owner right on an existing file whose content is already right.

    The name may have been swapped since it was read: a chown goes only to a regular file that is
    not a hard link to someone else's (root's ``/etc/shadow`` must never become the user's).
    """
    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretInputError(name, "not_a_regular_file")
        expected = owner.uid if owner is not None and _should_chown(owner) else os.geteuid()
        if info.st_nlink > 1 and info.st_uid != expected:
            raise SecretInputError(name, "wrong_owner")
        _fix_fd(fd, mode, owner)
    finally:
        os.close(fd)


def needs_metadata_fix(existing: Existing, *, mode: int, owner: Owner | None) -> bool:
    if existing.mode != mode:
        return True
    if owner is None or not _should_chown(owner):
        return False
    return (existing.uid, existing.gid) != (owner.uid, owner.gid)


def remove_stale_temps(dir_fd: int) -> int:
    """Delete temporary files a crash left behind; returns how many."""
    removed = 0
    for entry in os.listdir(dir_fd):
        if entry.startswith(TEMP_PREFIX):
            _unlink_quietly(dir_fd, entry)
            removed += 1
    return removed


def atomic_write(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, owner: Owner | None = None
) -> bool:
    """Write ``path`` atomically unless it already holds ``data``; True if anything changed.

    For trusted directories only (the parent is opened following symlinks).
    """
    target = Path(path)
    with open_dir(target.parent, enforce_leaf=False) as dir_fd:
        existing = read_existing(dir_fd, target.name)
        if existing is not None and existing.data == data:
            if not needs_metadata_fix(existing, mode=mode, owner=owner):
                return False
            fix_metadata(dir_fd, target.name, mode=mode, owner=owner)
            return True
        write_atomic(dir_fd, target.name, data, mode=mode, owner=owner)
        return True


def _fix_fd(fd: int, mode: int, owner: Owner | None) -> None:
    if _should_chown(owner):
        assert owner is not None
        os.fchown(fd, owner.uid, owner.gid)
    os.fchmod(fd, mode)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
