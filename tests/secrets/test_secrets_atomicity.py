"""SIGKILL in the middle of writing secrets, many times: every file is whole, old or new."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from dev8.secrets import Injector, Owner, SecretValue
from dev8.secrets.atomic import TEMP_PREFIX

UID, GID = 4242, 4343
KILLS = 100
ROOT = Path(__file__).resolve().parents[2]

#: A zygote: imports once, then forks one writer per "go" line and reports its pid and death,
#: so that each kill costs a fork rather than a Python start-up.
ZYGOTE = """
import ctypes, json, os, sys
from dev8.secrets import Injector, Owner, SecretValue
home, sets = sys.argv[1], json.loads(sys.argv[2])
secrets = [{role: SecretValue(role, value, str(i)) for role, value in s.items()}
           for i, s in enumerate(sets)]
print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL: never outlive the zygote
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # its logs are not the zygote's protocol
        injector = Injector(home=home, owner=Owner(UID_GID), github_user="alice",
                            git_user_name="Alice", git_user_email="a@example.com")
        while True:
            for s in secrets:
                injector.inject(s)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(status, flush=True)
""".replace("UID_GID", f"{UID}, {GID}")


def secret_set(tag: str, keydir: Path) -> dict[str, str]:
    key = keydir / tag
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", tag, "-f", key],
        check=True, timeout=30,
    )  # fmt: skip
    return {
        "github_token": f"ghp_{tag * 20}",
        "copilot_token": f"ghu_{tag * 30}",
        "ssh_private_key": key.read_text(),
        "ssh_public_key": (keydir / f"{tag}.pub").read_text(),
        # Large enough that a torn write would be visible.
        "custom_env_vars": json.dumps({f"VAR_{i}": tag * 200 for i in range(20)}),
    }


def snapshot(home: Path) -> dict[Path, bytes]:
    return {
        p.relative_to(home): p.read_bytes()
        for p in home.rglob("*")
        if p.is_file() and not p.name.startswith(TEMP_PREFIX)
    }


def inject(home: Path, values: dict[str, str]) -> None:
    Injector(home=home, owner=Owner(UID, GID), github_user="alice", git_user_name="Alice",
             git_user_email="a@example.com").inject(
        {role: SecretValue(role, value, "x") for role, value in values.items()}
    )  # fmt: skip


class LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str:
        with trio.fail_after(60):
            while b"\n" not in self._buffer:
                chunk = await self._stream.receive_some(4096)
                assert chunk, "the zygote died"
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


def check(
    home: Path,
    state_a: dict[Path, bytes],
    state_b: dict[Path, bytes],
    modes: dict[Path, int],
    seen: set[Path],
) -> None:
    files = snapshot(home)
    assert seen <= set(files), "a file that existed disappeared"
    seen |= set(files)
    for path, data in files.items():
        assert data in (state_a[path], state_b[path]), f"{path} is partial"
        st = (home / path).lstat()
        assert stat.S_ISREG(st.st_mode)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (modes[path], UID, GID)


@pytest.mark.slow
async def test_sigkill_at_random_points_never_leaves_a_partial_file(tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    keydir.mkdir()
    sets = [secret_set("a", keydir), secret_set("b", keydir)]

    # The two complete states, computed by the same code in this process.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    inject(scratch, sets[0])
    state_a = snapshot(scratch)
    inject(scratch, sets[1])
    state_b = snapshot(scratch)
    inject(scratch, sets[0])
    assert snapshot(scratch) == state_a  # alternating converges to the same two states
    assert set(state_a) == set(state_b)
    assert len(state_a) == 8
    modes = {path: 0o644 if path.suffix == ".pub" else 0o600 for path in state_a}

    home = tmp_path / "home"
    home.mkdir()
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kills_mid_write = 0
    seen: set[Path] = set()
    async with trio.open_nursery() as nursery:
        zygote: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [sys.executable, "-c", ZYGOTE, str(home), json.dumps(sets)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, check=False,
            )
        )  # fmt: skip
        assert zygote.stdin is not None
        assert zygote.stdout is not None
        lines = LineReader(zygote.stdout)
        assert await lines.next() == "ready"
        for _ in range(KILLS):
            await zygote.stdin.send_all(b"go\n")
            pid = int(await lines.next())
            await trio.sleep(rng.uniform(0, 0.1))
            os.kill(pid, signal.SIGKILL)
            assert int(await lines.next()) == signal.SIGKILL  # wait status: killed by SIGKILL
            check(home, state_a, state_b, modes, seen)
            if list(home.rglob(TEMP_PREFIX + "*")):
                kills_mid_write += 1
        await zygote.stdin.aclose()
        with trio.fail_after(30):
            await zygote.wait()
    assert zygote.returncode == 0

    assert seen == set(state_a)
    # The kills really landed inside writes (a temporary file was left behind) often enough.
    print("kills that left a temporary file:", kills_mid_write, "of", KILLS)
    assert kills_mid_write >= 3, kills_mid_write
    # The next injection sweeps what the crashes left.
    inject(home, sets[0])
    assert snapshot(home) == state_a
    assert not list(home.rglob(TEMP_PREFIX + "*"))
