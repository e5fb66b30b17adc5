"""dev8.services.storage: finding a workspace that keeps no file modes (Azure Files, SMB),
and keeping the files that need strict modes where modes hold.

A bindfs mount that forces every file's mode and owner and ignores chmod and chown stands in for
the SMB mount (bindfs from scripts/setup; mounting needs root, as dev8 has in a container).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing
from support.dev8_harness import throwaway_user

from dev8.secrets import Injector, Owner, SecretValue
from dev8.services.storage import (
    detect_storage,
    mirror_authorized_keys,
    mount_fs_type,
    placement,
    prepare_strict_home,
    probe_modes,
)

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:40 / /workspace rw,relatime shared:20 - cifs //acct.file.core.windows.net/ws rw,vers=3.1.1
41 40 8:1 /data /workspace/local rw,relatime - ext4 /dev/sda1 rw
42 22 0:41 / /with\\040space rw - fuse.bindfs bindfs rw,user_id=0
43 22 0:42 / /over rw - ext4 /dev/sdb1 rw
44 22 0:43 / /over rw - tmpfs tmpfs rw
"""


def test_the_mount_holding_a_path_names_its_type(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert mount_fs_type("/workspace", info) == "cifs"
    assert mount_fs_type("/workspace/.ssh/authorized_keys", info) == "cifs"
    assert mount_fs_type("/workspace/local/x", info) == "ext4"  # a mount inside the share
    assert mount_fs_type("/workspacex", info) == "ext4"  # a prefix is not a parent
    assert mount_fs_type("/with space/f", info) == "fuse.bindfs"
    assert mount_fs_type("/over", info) == "tmpfs"  # the later mount over the same point
    assert mount_fs_type("/x", tmp_path / "missing") == "unknown"


def test_a_local_directory_keeps_modes(tmp_path: Path) -> None:
    storage = detect_storage(tmp_path)
    assert storage.modes_hold is True
    assert storage.kind == "posix"
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A scratch directory other users can reach (pytest's tmp_path is below a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="dev8-storage-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def smb_like(open_tmp: Path) -> Iterator[tuple[Path, Path]]:
    """(source, mount): the mount shows everything 0777 and owned by nobody, like SMB."""
    assert os.geteuid() == 0, "mounting bindfs needs root"
    source, mount = open_tmp / "source", open_tmp / "mount"
    source.mkdir()
    mount.mkdir()
    subprocess.run(
        ["bindfs", "-o", "allow_other", "--perms=0777", "--force-user=nobody",
         "--force-group=nogroup", "--chmod-ignore", "--chown-ignore", str(source), str(mount)],
        check=True,
        timeout=30,
    )  # fmt: skip
    try:
        yield source, mount
    finally:
        subprocess.run(["umount", str(mount)], check=False, timeout=30)


def test_a_mount_that_ignores_chmod_is_found(smb_like: tuple[Path, Path]) -> None:
    source, mount = smb_like
    # What the SMB share does to an injected secret: the chmod "works" and changes nothing.
    secret = mount / "secret"
    secret.write_text("x")
    secret.chmod(0o600)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o777
    assert probe_modes(source) is True
    assert probe_modes(mount) is False
    storage = detect_storage(mount)
    assert storage.modes_hold is False
    assert storage.fs_type.startswith("fuse")
    assert storage.kind == "fixed-modes"
    assert storage.to_status() == {
        "path": str(mount),
        "kind": "fixed-modes",
        "fsType": storage.fs_type,
        "modesHold": False,
    }
    assert sorted(p.name for p in source.iterdir()) == ["secret"]  # no probe file left


def test_strict_files_move_out_of_such_a_workspace_and_still_work(
    smb_like: tuple[Path, Path], open_tmp: Path, tmp_path: Path
) -> None:
    _, workspace = smb_like
    strict_root = open_tmp / "run" / "dev8"
    etc = open_tmp / "etc"
    (etc / "ssh" / "ssh_config.d").mkdir(parents=True)
    (etc / "profile.d").mkdir()
    where = placement(str(workspace), as_root=True, strict_root=strict_root)
    assert where.relocated
    assert where.host_key_dir == strict_root / "ssh-host-keys"
    assert where.credentials_home == strict_root / "home"
    assert where.authorized_keys_files == (
        f"{strict_root}/home/.ssh/authorized_keys",
        f"{strict_root}/authorized_keys/%u",
    )
    # A workspace whose modes hold keeps everything, as before.
    local = placement(str(tmp_path), as_root=True, strict_root=strict_root)
    assert not local.relocated
    assert local.credentials_home == tmp_path

    token = "ghp_" + uuid.uuid4().hex
    with throwaway_user("dev8st") as user:
        prepare_strict_home(where, user.pw_name, "github.com", etc=etc)
        home = where.credentials_home
        assert (home.stat().st_uid, stat.S_IMODE(home.stat().st_mode)) == (user.pw_uid, 0o700)
        assert stat.S_IMODE(home.parent.stat().st_mode) == 0o755
        assert home.parent.stat().st_uid == 0

        injector = Injector(home=home, owner=Owner(user.pw_uid, user.pw_gid), profile_dir=None)
        result = injector.inject({"github_token": SecretValue("github-token", token, "v1")})
        assert not result.failed
        credentials = home / ".git-credentials"
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600  # it holds here

        # git, as the user, with the workspace (the SMB-like mount) as its home.
        env = {"HOME": str(workspace), "GIT_CONFIG_SYSTEM": str(etc / "gitconfig"),
               "PATH": "/usr/bin:/bin", "GIT_TERMINAL_PROMPT": "0"}  # fmt: skip

        def git_credential(action: str, text: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["git", "credential", action], input=text, env=env, user=user.pw_uid,
                group=user.pw_gid, cwd="/", capture_output=True, text=True, check=False,
                timeout=30,
            )  # fmt: skip

        fill = git_credential("fill", "protocol=https\nhost=github.com\n\n")
        assert fill.returncode == 0, fill.stderr
        filled = fill.stdout
        assert f"password={token}" in filled
        # What git does after a successful push: every helper stores the credential. None may
        # write the token into the workspace.
        assert git_credential("approve", filled).returncode == 0
        assert not (workspace / ".git-credentials").exists()
        assert token not in "".join(p.read_text() for p in workspace.rglob("*") if p.is_file())

        # The user's own authorized_keys, copied where sshd's StrictModes accepts it.
        (workspace / ".ssh").mkdir()
        (workspace / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAAC3 mine\n")
        copy = mirror_authorized_keys(where, user.pw_name, home=workspace)
        assert copy == strict_root / "authorized_keys" / user.pw_name
        assert copy.read_text() == "ssh-ed25519 AAAAC3 mine\n"
        assert (copy.stat().st_uid, stat.S_IMODE(copy.stat().st_mode)) == (0, 0o644)
        # A link planted in the workspace is not followed by root: an empty copy, a warning.
        (workspace / ".ssh" / "authorized_keys").unlink()
        (workspace / ".ssh" / "authorized_keys").symlink_to("/etc/shadow")
        with structlog.testing.capture_logs() as logs:
            mirror_authorized_keys(where, user.pw_name, home=workspace)
        assert copy.read_text() == ""
        assert [e["event"] for e in logs] == ["storage.authorized_keys_skipped"]
        assert logs[0]["error"] == "OSError"
        assert logs[0]["path"] == str(workspace / ".ssh" / "authorized_keys")

    ssh_conf = (etc / "ssh" / "ssh_config.d" / "dev8-storage.conf").read_text()
    assert f"IdentityFile {home}/.ssh/id_ed25519" in ssh_conf
    profile = (etc / "profile.d" / "dev8-storage.sh").read_text()
    assert f"GH_CONFIG_DIR={home}/.config/gh" in profile
