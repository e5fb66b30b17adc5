"""dev8.services.sshd against the real OpenSSH: a root sshd, a real user, real ssh/scp clients."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio
from support.net import free_port

from dev8.services.sshd import (
    SshBannerError,
    SshdSettings,
    ensure_host_keys,
    host_key_paths,
    prepare_sshd_runtime,
    read_ssh_banner,
    render_sshd_config,
    sshd_command,
    sshd_test_command,
    write_sshd_config,
)


def _free_uid(start: int = 20000) -> int:
    taken = {entry.pw_uid for entry in pwd.getpwall()}
    return next(uid for uid in range(start, 60000) if uid not in taken)


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(path)], check=True)
    return path


@attrs.frozen
class Env:
    user: str
    home: Path
    keys_dir: Path  # root-owned, 0755, not under /tmp: StrictModes checks every component
    client_dir: Path
    host_key_dir: Path
    user_key: Path  # in ~user/.ssh/authorized_keys
    alt_user_key: Path  # in keys_dir/<user>
    root_key: Path  # in keys_dir/root
    known_hosts: Path


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    user = f"d8t{secrets.token_hex(4)}"
    subprocess.run(["useradd", "-m", "-u", str(_free_uid()), "-s", "/bin/sh", user], check=True)
    keys_dir = Path(tempfile.mkdtemp(prefix="dev8-test-sshd-", dir="/var/lib"))
    try:
        os.chmod(keys_dir, 0o755)
        client_dir = keys_dir / "client"
        client_dir.mkdir(mode=0o700)
        home = Path(pwd.getpwnam(user).pw_dir)
        prepare_sshd_runtime(user)
        e = Env(
            user=user,
            home=home,
            keys_dir=keys_dir,
            client_dir=client_dir,
            host_key_dir=keys_dir / "hostkeys",
            user_key=_keygen(client_dir / "user"),
            alt_user_key=_keygen(client_dir / "alt"),
            root_key=_keygen(client_dir / "root"),
            known_hosts=client_dir / "known_hosts",
        )
        authorized = home / ".ssh" / "authorized_keys"
        authorized.write_bytes(Path(f"{e.user_key}.pub").read_bytes())
        for name, key in ((user, e.alt_user_key), ("root", e.root_key)):
            target = keys_dir / name
            target.write_bytes(Path(f"{key}.pub").read_bytes())
            os.chmod(target, 0o644)
        yield e
    finally:
        subprocess.run(["userdel", "-r", "-f", user], check=False, capture_output=True)
        shutil.rmtree(keys_dir, ignore_errors=True)


def _settings(env: Env, port: int) -> SshdSettings:
    return SshdSettings(
        port=port,
        listen_address="127.0.0.1",
        host_keys=host_key_paths(env.host_key_dir),
        authorized_keys_files=(".ssh/authorized_keys", f"{env.keys_dir}/%u"),
        allowed_user=env.user,
    )


@attrs.frozen
class Sshd:
    port: int
    log: Path
    banner: str


async def _wait_banner(port: int, deadline: float = 10.0) -> str:
    with trio.fail_after(deadline):
        while True:
            try:
                return await read_ssh_banner("127.0.0.1", port, timeout=1.0)
            except SshBannerError:
                await trio.sleep(0.01)  # a real process: bounded poll


@asynccontextmanager
async def run_sshd(config: Path, log: Path, port: int) -> AsyncIterator[Sshd]:
    with log.open("ab") as log_file:
        proc = await trio.lowlevel.open_process(
            sshd_command(config), stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
        )
    try:
        yield Sshd(port=port, log=log, banner=await _wait_banner(port))
    finally:
        with trio.CancelScope(shield=True):
            proc.terminate()
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def sshd(env: Env, tmp_path: Path) -> AsyncIterator[Sshd]:
    ensure_host_keys(env.host_key_dir)
    port = free_port()
    config = write_sshd_config(_settings(env, port), tmp_path / "sshd_config")
    async with run_sshd(config, tmp_path / "sshd.log", port) as server:
        yield server


def _ssh_opts(env: Env, port: int, key: Path | None) -> list[str]:
    opts = [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        f"UserKnownHostsFile={env.known_hosts}",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=10",
    ]
    if key is not None:
        opts += ["-i", str(key)]
    return opts


async def _ssh(
    env: Env, port: int, login: str, key: Path | None, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            ["ssh", "-p", str(port), *_ssh_opts(env, port, key), f"{login}@127.0.0.1", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


# ---- config --------------------------------------------------------------------------------


def test_config_is_key_only_and_accepted_by_sshd(env: Env, tmp_path: Path) -> None:
    ensure_host_keys(env.host_key_dir)
    config = write_sshd_config(_settings(env, 2222), tmp_path / "sshd_config")
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert subprocess.run(sshd_test_command(config), check=False).returncode == 0
    # What sshd will actually enforce, not just what we wrote.
    effective = subprocess.run(
        ["/usr/sbin/sshd", "-T", "-f", str(config)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for line in (
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "permitrootlogin no",
        "pubkeyauthentication yes",
        f"allowusers {env.user}",
        "permitemptypasswords no",
        "subsystem sftp /usr/lib/openssh/sftp-server",
        "allowtcpforwarding yes",
        "x11forwarding no",
        "printmotd no",
        "usepam no",
        "clientaliveinterval 30",
        "listenaddress 127.0.0.1:2222",
        "strictmodes yes",
    ):
        assert line in effective


@pytest.mark.parametrize(
    "bad",
    [
        {"listen_address": "0.0.0.0\nPermitRootLogin yes"},
        {"authorized_keys_files": (".ssh/authorized_keys /etc/x",)},
        {"sftp_server": "/usr/lib/openssh/sftp-server # x"},
        {"allowed_user": "root"},
        {"allowed_user": "dev8 root"},
        {"port": 0},
        {"authorized_keys_files": ()},
    ],
)
def test_settings_refuse_values_that_would_change_the_config(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- each case has its own message
        SshdSettings(**bad)  # type: ignore[arg-type]


def test_command() -> None:
    assert sshd_command(Path("/run/dev8/sshd_config")) == [
        "/usr/sbin/sshd",
        "-D",
        "-e",
        "-f",
        "/run/dev8/sshd_config",
    ]
    assert "PasswordAuthentication no" in render_sshd_config(SshdSettings()).splitlines()


# ---- host keys and runtime -----------------------------------------------------------------


def _fingerprint(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[1]


def test_host_keys_are_created_once_private_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "workspace" / ".dev8" / "ssh"
    keys = ensure_host_keys(directory)
    assert [k.name for k in keys] == ["ssh_host_ed25519_key", "ssh_host_rsa_key"]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for key in keys:
        info = key.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o600, 0, 0)
        assert Path(f"{key}.pub").is_file()
    assert (
        "3072 "
        in subprocess.run(
            ["ssh-keygen", "-lf", f"{keys[1]}.pub"], capture_output=True, text=True, check=True
        ).stdout
    )
    before = {k: (k.read_bytes(), _fingerprint(Path(f"{k}.pub"))) for k in keys}
    os.chmod(keys[0], 0o644)  # drifted mode is repaired, the key is kept
    assert ensure_host_keys(directory) == keys
    assert {k: (k.read_bytes(), _fingerprint(Path(f"{k}.pub"))) for k in keys} == before
    assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_unreadable_or_linked_host_keys_are_replaced_not_followed(tmp_path: Path) -> None:
    directory = tmp_path / "ssh"
    ed25519, rsa = ensure_host_keys(directory)
    old_rsa = rsa.read_bytes()
    ed25519.write_bytes(b"garbage")
    victim = tmp_path / "victim"
    victim.write_bytes(b"not a key")
    os.chmod(victim, 0o644)
    rsa.unlink()
    rsa.symlink_to(victim)
    ensure_host_keys(directory)
    assert b"OPENSSH PRIVATE KEY" in ed25519.read_bytes()
    assert not rsa.is_symlink()
    assert rsa.read_bytes() != old_rsa
    assert (victim.read_bytes(), stat.S_IMODE(victim.stat().st_mode)) == (b"not a key", 0o644)

    ed25519.unlink()
    os.link(victim, ed25519)  # a hard link: same inode, same danger
    ensure_host_keys(directory)
    assert b"OPENSSH PRIVATE KEY" in ed25519.read_bytes()
    assert (victim.read_bytes(), stat.S_IMODE(victim.stat().st_mode)) == (b"not a key", 0o644)
    assert victim.stat().st_nlink == 1


def test_prepare_runtime_unlocks_account_and_fixes_modes(tmp_path: Path) -> None:
    user = f"d8t{secrets.token_hex(4)}"
    subprocess.run(["useradd", "-m", "-u", str(_free_uid(30000)), user], check=True)
    try:
        entry = pwd.getpwnam(user)
        home = Path(entry.pw_dir)
        shadow = subprocess.run(
            ["getent", "shadow", user], capture_output=True, text=True, check=True
        )
        assert shadow.stdout.split(":")[1].startswith("!")  # useradd leaves it locked
        os.chmod(home, 0o777)
        prepare_sshd_runtime(user, privsep_dir=tmp_path / "run-sshd")
        shadow = subprocess.run(
            ["getent", "shadow", user], capture_output=True, text=True, check=True
        )
        assert shadow.stdout.split(":")[1] == "*"
        assert stat.S_IMODE((tmp_path / "run-sshd").stat().st_mode) == 0o755
        assert stat.S_IMODE(home.stat().st_mode) == 0o755
        for path, mode in ((home / ".ssh", 0o700), (home / ".ssh/authorized_keys", 0o600)):
            info = path.stat()
            assert (stat.S_IMODE(info.st_mode), info.st_uid) == (mode, entry.pw_uid)

        # A link planted by the user must not make root chown its target.
        victim = tmp_path / "victim"
        victim.write_text("root's")
        (home / ".ssh/authorized_keys").unlink()
        (home / ".ssh/authorized_keys").symlink_to(victim)
        with pytest.raises(OSError):  # noqa: PT011 -- ELOOP from O_NOFOLLOW
            prepare_sshd_runtime(user, privsep_dir=tmp_path / "run-sshd")
        assert victim.stat().st_uid == 0
    finally:
        subprocess.run(["userdel", "-r", "-f", user], check=False, capture_output=True)


# ---- the banner probe ----------------------------------------------------------------------


async def test_banner_probe_fails_fast_on_closed_port() -> None:
    with pytest.raises(SshBannerError, match="cannot connect"):
        await read_ssh_banner("127.0.0.1", free_port(), timeout=5)


async def test_banner_probe_times_out_on_silent_port(autojump_clock: trio.abc.Clock) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # never accepts: connects succeed, nothing is ever sent
        start = trio.current_time()
        with pytest.raises(SshBannerError, match="within 7"):
            await read_ssh_banner("127.0.0.1", listener.getsockname()[1], timeout=7)
        assert trio.current_time() - start == pytest.approx(7)


async def test_banner_probe_rejects_other_protocols() -> None:
    async def http(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, http, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(SshBannerError, match="closed before"):
            await read_ssh_banner("127.0.0.1", port, timeout=5)
        nursery.cancel_scope.cancel()


# ---- the real server -----------------------------------------------------------------------


async def test_key_login_works(env: Env, sshd: Sshd) -> None:
    assert sshd.banner.startswith("SSH-2.0-OpenSSH_")
    result = await _ssh(env, sshd.port, env.user, env.user_key, "echo ok; id -un")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == ["ok", env.user]
    alt = await _ssh(env, sshd.port, env.user, env.alt_user_key, "echo alt")
    assert alt.stdout == b"alt\n", alt.stderr


async def test_only_publickey_is_offered(env: Env, sshd: Sshd) -> None:
    for method in ("password", "keyboard-interactive"):
        result = await _ssh(
            env,
            sshd.port,
            env.user,
            None,
            "-o",
            f"PreferredAuthentications={method}",
            "-o",
            "PubkeyAuthentication=no",
            "true",
        )
        assert result.returncode == 255
        assert b"Permission denied (publickey)." in result.stderr
    wrong_key = _keygen(env.client_dir / f"stranger-{secrets.token_hex(2)}")
    result = await _ssh(env, sshd.port, env.user, wrong_key, "true")
    assert result.returncode == 255
    assert b"Permission denied (publickey)." in result.stderr


async def test_root_is_refused_even_with_an_authorized_key(env: Env, sshd: Sshd) -> None:
    result = await _ssh(env, sshd.port, "root", env.root_key, "echo pwned")
    assert result.returncode == 255
    assert b"pwned" not in result.stdout
    await trio.sleep(0.1)  # let sshd flush its log line (real process)
    assert "User root from 127.0.0.1 not allowed because not listed in AllowUsers" in (
        sshd.log.read_text()
    )


async def test_permit_root_login_no_holds_on_its_own(env: Env, tmp_path: Path) -> None:
    """Even if root were in AllowUsers, PermitRootLogin no refuses it: two independent locks."""
    ensure_host_keys(env.host_key_dir)
    port = free_port()
    text = render_sshd_config(_settings(env, port)).replace(
        f"AllowUsers {env.user}", f"AllowUsers {env.user} root"
    )
    config = tmp_path / "sshd_config"
    config.write_text(text)
    async with run_sshd(config, tmp_path / "sshd.log", port) as server:
        result = await _ssh(env, port, "root", env.root_key, "echo pwned")
        assert result.returncode == 255
        assert b"pwned" not in result.stdout
        await trio.sleep(0.1)
        assert "ROOT LOGIN REFUSED" in server.log.read_text()


async def test_scp_both_ways_over_sftp(env: Env, sshd: Sshd, tmp_path: Path) -> None:
    payload = secrets.token_bytes(200_000)
    local = tmp_path / "up.bin"
    local.write_bytes(payload)
    base = ["scp", "-s", "-q", "-P", str(sshd.port), *_ssh_opts(env, sshd.port, env.user_key)]
    with trio.fail_after(30):
        up = await trio.run_process(
            [*base, str(local), f"{env.user}@127.0.0.1:up.bin"],
            check=False,
            capture_stderr=True,
        )
        assert up.returncode == 0, up.stderr
        remote = env.home / "up.bin"
        assert remote.read_bytes() == payload
        assert remote.stat().st_uid == pwd.getpwnam(env.user).pw_uid
        back = tmp_path / "down.bin"
        down = await trio.run_process(
            [*base, f"{env.user}@127.0.0.1:up.bin", str(back)],
            check=False,
            capture_stderr=True,
        )
        assert down.returncode == 0, down.stderr
        assert back.read_bytes() == payload


async def test_tcp_forwarding_works(env: Env, sshd: Sshd) -> None:
    """VS Code Remote-SSH reaches its server through a forwarded connection (direct-tcpip)."""

    async def echo(stream: trio.SocketStream) -> None:
        async for data in stream:
            await stream.send_all(data.upper())

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        result = await _ssh(
            env,
            sshd.port,
            env.user,
            env.user_key,
            "-W",
            f"127.0.0.1:{port}",
            stdin=b"forwarded\n",
        )
        nursery.cancel_scope.cancel()
    assert result.stdout == b"FORWARDED\n", result.stderr


async def test_restart_keeps_host_identity(env: Env, tmp_path: Path) -> None:
    async def scan(port: int) -> set[str]:
        with trio.fail_after(20):
            result = await trio.run_process(
                ["ssh-keyscan", "-p", str(port), "-t", "ed25519,rsa", "127.0.0.1"],
                capture_stdout=True,
                capture_stderr=True,
            )
        return {" ".join(line.split()[1:]) for line in result.stdout.decode().splitlines()}

    port = free_port()
    config = write_sshd_config(_settings(env, port), tmp_path / "sshd_config")
    ensure_host_keys(env.host_key_dir)
    async with run_sshd(config, tmp_path / "sshd.log", port):
        first = await scan(port)
    pubs = {
        " ".join((await trio.Path(f"{k}.pub").read_text()).split()[:2])
        for k in host_key_paths(env.host_key_dir)
    }
    assert len(first) == 2
    assert first == pubs

    # What a restarted container does: same directory, keys reused, same identity served.
    assert ensure_host_keys(env.host_key_dir) == list(host_key_paths(env.host_key_dir))
    async with run_sshd(config, tmp_path / "sshd.log", port):
        assert await scan(port) == first
