"""Reading files that live under a directory the (untrusted) workspace user can write.

dev8 runs as root; the user owns their home and everything in it. A plain ``open()`` there
follows a link planted to a root-only file (reading it as root), blocks forever on a FIFO (PID 1
with it) and reads ``/dev/zero`` without end. So every path component is walked with a directory
fd (``O_DIRECTORY | O_NOFOLLOW``), the file is opened ``O_NOFOLLOW | O_NONBLOCK | O_NOCTTY``
relative to its directory, and ``fstat`` must show a regular file owned by the expected user and
no larger than the bound. Over the bound is an error, never a truncated read: a caller that
rewrites a file from what it read must never lose the rest of it.

Blocking functions here run in a worker thread; :func:`read_user_file` is the async way in.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import attrs
import trio

from dev8.secrets.errors import SecretInputError

#: The largest user file dev8 reads (a ``~/.gitconfig`` of a few MiB is real).
MAX_USER_FILE_BYTES = 8 * 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CHUNK = 256 * 1024


@attrs.frozen
class UserFile:
    """A regular file's whole content and metadata, as read through its fd."""

    data: bytes = attrs.field(repr=False)
    mode: int
    uid: int
    gid: int


def _refuse(item: str, error: OSError) -> SecretInputError:
    if error.errno == errno.ELOOP:
        return SecretInputError(item, "symlink")
    if error.errno == errno.ENOTDIR:
        return SecretInputError(item, "not_a_directory")
    if error.errno in (errno.EACCES, errno.EPERM):
        return SecretInputError(item, "permission_denied")
    if error.errno in (errno.ENXIO, errno.EWOULDBLOCK):
        return SecretInputError(item, "not_a_regular_file")
    return SecretInputError(item, errno.errorcode.get(error.errno or 0, "io_error").lower())


@contextmanager
def open_user_dir(base: str | os.PathLike[str], parts: Sequence[str] = ()) -> Iterator[int]:
    """An fd of ``base/parts...``, no symlink followed below ``base`` (``base`` is dev8's).

    A link or a file on the way raises :class:`SecretInputError`; a missing one
    ``FileNotFoundError``.
    """
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if not part or part in {".", ".."} or "/" in part:
                raise ValueError(f"bad path component {part!r}")
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except NotADirectoryError:  # O_DIRECTORY wins over O_NOFOLLOW: tell a link apart
                linked = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                raise SecretInputError(part, "symlink" if linked else "not_a_directory") from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def read_at(
    dir_fd: int,
    name: str,
    *,
    owner_uid: int | None,
    max_bytes: int = MAX_USER_FILE_BYTES,
    root_single_link_ok: bool = False,
) -> UserFile | None:
    """The whole regular file ``name`` in the directory, or None when there is no such name.

    Raises :class:`SecretInputError` (``symlink``, ``not_a_regular_file``, ``wrong_owner``,
    ``too_large``, ...) instead of reading anything else. ``root_single_link_ok`` also accepts
    a root-owned file with a single link: only root can have put one there (a hard link the user
    made to a file of root's has two), so it is dev8's own, to be given back to the user.
    Blocking: call it from a thread.
    """
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _refuse(name, e) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretInputError(name, "not_a_regular_file")
        dev8s_own = root_single_link_ok and info.st_uid == 0 and info.st_nlink == 1
        if owner_uid is not None and info.st_uid != owner_uid and not dev8s_own:
            raise SecretInputError(name, "wrong_owner")
        if info.st_size > max_bytes:
            raise SecretInputError(name, "too_large")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:  # one byte past the bound tells a file that grew meanwhile
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise SecretInputError(name, "too_large")
        return UserFile(b"".join(chunks), stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    except OSError as e:
        raise _refuse(name, e) from None
    finally:
        os.close(fd)


def read_user_file_blocking(
    base: str | os.PathLike[str],
    relative: str,
    *,
    owner_uid: int | None,
    max_bytes: int = MAX_USER_FILE_BYTES,
) -> UserFile | None:
    """``base/relative`` read as :func:`read_at` does, walking every directory without links."""
    *parts, name = [part for part in relative.split("/") if part]
    try:
        with open_user_dir(base, parts) as dir_fd:
            return read_at(dir_fd, name, owner_uid=owner_uid, max_bytes=max_bytes)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _refuse(relative, e) from None


async def read_user_file(
    base: str | os.PathLike[str],
    relative: str,
    *,
    owner_uid: int | None,
    max_bytes: int = MAX_USER_FILE_BYTES,
) -> UserFile | None:
    """:func:`read_user_file_blocking` in a worker thread: the event loop never waits on it."""
    return await trio.to_thread.run_sync(
        lambda: read_user_file_blocking(base, relative, owner_uid=owner_uid, max_bytes=max_bytes)
    )
