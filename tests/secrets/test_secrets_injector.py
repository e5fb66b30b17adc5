"""The injector and its atomic writes, on a real filesystem (root: chown is real too)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from dev8.secrets import Injector, Owner, SecretValue
from dev8.secrets.atomic import TEMP_PREFIX, atomic_write
from dev8.secrets.render import (
    normalize_key_text,
    openssh_public_from_private,
    render_gitconfig,
    set_git_config,
)

UID, GID = 4242, 4343


def sv(name: str, value: str, version: str = "v1") -> SecretValue:
    return SecretValue(name, value, version)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """type -> (private, public) made by ssh-keygen."""
    directory = tmp_path_factory.mktemp("keys")
    made = {}
    for kind, extra in [("ed25519", []), ("ecdsa", ["-b", "256"]), ("rsa", ["-b", "2048"])]:
        path = directory / kind
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", f"alice-{kind}", "-f", path],
            check=True,
            timeout=60,
        )
        made[kind] = (path.read_text(), (directory / f"{kind}.pub").read_text())
    return made


def full_set(keys: dict[str, tuple[str, str]], version: str = "v1") -> dict[str, SecretValue]:
    private, public = keys["ed25519"]
    return {
        "github_token": sv("github-token-alice", "ghp_TOKEN1\n", version),
        "copilot_token": sv("copilot-token-alice", "ghu_COPILOT", version),
        "ssh_private_key": sv("ssh-private-key-alice", private, version),
        "ssh_public_key": sv("ssh-public-key-alice", public, version),
        "custom_env_vars": sv("custom-env-vars-alice", '{"FOO": "bar", "N": 3}', version),
    }


def injector(home: Path, **kwargs: object) -> Injector:
    options: dict[object, object] = {
        "home": home, "owner": Owner(UID, GID), "github_user": "alice",
        "git_user_name": "Alice A", "git_user_email": "alice@example.com", "profile_dir": None,
    }  # fmt: skip
    options.update(kwargs)
    return Injector(**options)  # type: ignore[arg-type]


def as_user(home: Path) -> None:
    """What a test put in the home belongs to the user, as the user's own files do."""
    for path in [home, *home.rglob("*")]:
        os.lchown(path, UID, GID)


def sourced(env_file: Path, names: Iterable[str]) -> dict[str, str]:
    """What a POSIX shell that sources the env file sees, as a login shell does."""
    out = subprocess.run(
        ["sh", "-c", '. "$1" && exec env -0', "sh", str(env_file)], capture_output=True,
        check=True, timeout=30, env={"PATH": os.environ["PATH"]},
    ).stdout  # fmt: skip
    pairs = [item.decode().partition("=") for item in out.split(b"\0") if item]
    wanted = set(names)
    return {name: value for name, _, value in pairs if name in wanted}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_writes_every_file_with_content_mode_and_owner(
    home: Path, keys: dict[str, tuple[str, str]]
) -> None:
    inj = injector(home)
    result = inj.inject(full_set(keys))

    expected = {
        home / ".git-credentials": 0o600,
        home / ".gitconfig": 0o600,
        home / ".config/gh/hosts.yml": 0o600,
        home / ".config/github-copilot/hosts.json": 0o600,
        home / ".ssh/id_ed25519": 0o600,
        home / ".ssh/id_ed25519.pub": 0o644,
        home / ".ssh/authorized_keys": 0o600,
        home / ".config/dev8/secrets.env": 0o600,
    }
    assert set(result.written) == set(expected)
    assert not result.failed
    assert not result.unchanged
    for path, want in expected.items():
        st = path.lstat()
        assert stat.S_ISREG(st.st_mode), path
        assert (mode(path), st.st_uid, st.st_gid) == (want, UID, GID), path
    for directory in [".config", ".config/gh", ".config/github-copilot", ".ssh", ".config/dev8"]:
        st = (home / directory).lstat()
        assert (mode(home / directory), st.st_uid, st.st_gid) == (0o700, UID, GID), directory

    assert (home / ".git-credentials").read_text() == "https://alice:ghp_TOKEN1@github.com\n"
    assert yaml.safe_load((home / ".config/gh/hosts.yml").read_text()) == {
        "github.com": {"oauth_token": "ghp_TOKEN1", "user": "alice", "git_protocol": "https"}
    }
    assert json.loads((home / ".config/github-copilot/hosts.json").read_text()) == {
        "github.com": {"user": "alice", "oauth_token": "ghu_COPILOT"}
    }
    private, public = keys["ed25519"]
    assert (home / ".ssh/id_ed25519").read_text() == private
    assert (home / ".ssh/id_ed25519.pub").read_text() == public
    key_type, blob = public.split()[:2]
    assert (home / ".ssh/authorized_keys").read_text() == f"{key_type} {blob} dev8-managed\n"
    assert inj.custom_env() == {"FOO": "bar", "N": "3"}
    assert sourced(home / ".config/dev8/secrets.env", ["FOO", "N"]) == inj.custom_env()
    assert not list(home.rglob(TEMP_PREFIX + "*"))


def test_git_reads_the_config_we_write(home: Path, keys: dict[str, tuple[str, str]]) -> None:
    injector(home).inject(full_set(keys))
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1"}

    def get(key: str) -> str:
        out = subprocess.run(
            ["git", "config", "--global", "--get", key], env=env, capture_output=True,
            text=True, check=True, timeout=30,
        )  # fmt: skip
        return out.stdout.strip()

    assert get("user.name") == "Alice A"
    assert get("user.email") == "alice@example.com"
    assert get("credential.https://github.com.helper") == "store"


def test_unchanged_secrets_rewrite_nothing(home: Path, keys: dict[str, tuple[str, str]]) -> None:
    inj = injector(home)
    inj.inject(full_set(keys))
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in home.rglob("*") if p.is_file()}

    result = injector(home).inject(full_set(keys, version="v2"))  # same values, new versions

    assert result.written == ()
    assert result.fixed == ()
    assert len(result.unchanged) == 8
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in home.rglob("*") if p.is_file()}
    assert after == before


def test_a_wrong_mode_or_owner_is_fixed_in_place(
    home: Path, keys: dict[str, tuple[str, str]]
) -> None:
    inj = injector(home)
    inj.inject(full_set(keys))
    creds = home / ".git-credentials"
    inode = creds.stat().st_ino
    creds.chmod(0o644)
    os.chown(creds, 0, 0)

    result = inj.inject(full_set(keys))

    assert result.fixed == (creds,)
    assert result.written == ()
    st = creds.stat()
    assert (st.st_ino, mode(creds), st.st_uid, st.st_gid) == (inode, 0o600, UID, GID)


def test_a_rotated_token_rewrites_only_its_files(
    home: Path, keys: dict[str, tuple[str, str]]
) -> None:
    inj = injector(home)
    inj.inject(full_set(keys))
    secrets = full_set(keys, "v2")
    secrets["github_token"] = sv("github-token-alice", "ghp_TOKEN2", "v2")

    result = inj.inject(secrets)

    assert set(result.written) == {home / ".git-credentials", home / ".config/gh/hosts.yml"}
    assert "ghp_TOKEN2" in (home / ".git-credentials").read_text()


def test_absent_or_failed_roles_leave_their_files_alone(
    home: Path, keys: dict[str, tuple[str, str]]
) -> None:
    inj = injector(home)
    inj.inject(full_set(keys))
    snapshot = {p: p.read_bytes() for p in home.rglob("*") if p.is_file()}

    result = inj.inject({"github_token": None})

    assert result.written == ()
    assert {p: p.read_bytes() for p in home.rglob("*") if p.is_file()} == snapshot


def test_user_settings_survive_a_merge(home: Path) -> None:
    (home / ".config/gh").mkdir(parents=True)
    (home / ".config/gh/hosts.yml").write_text(
        "github.com:\n"
        "    oauth_token: gho_from_gh_auth_login\n"
        "    user: alice\n"
        "    git_protocol: ssh\n"
        "    users:\n"
        "        alice:\n"
        "            oauth_token: gho_from_gh_auth_login\n"
        "ghe.example.com:\n"
        "    oauth_token: ghe_token\n"
        "    user: alice2\n"
    )
    (home / ".gitconfig").write_text(
        "[user]\n\tname = Old Name\n\tsigningkey = ABC\n"
        "[alias]\n\tco = checkout\n"
        "[credential]\n\thelper = cache\n"
    )
    (home / ".git-credentials").write_text(
        "https://bob:old@github.com\nhttps://alice2:ghe_token@ghe.example.com\n"
    )
    (home / ".ssh").mkdir(mode=0o755)
    (home / ".ssh/authorized_keys").write_text("ssh-ed25519 AAAAUSERKEY laptop\n")
    as_user(home)

    inj = injector(home)
    inj.inject({"github_token": sv("github-token-alice", "ghp_NEW")})

    hosts = yaml.safe_load((home / ".config/gh/hosts.yml").read_text())
    assert hosts == {
        "github.com": {
            "oauth_token": "ghp_NEW",
            "user": "alice",
            "git_protocol": "ssh",  # the user's choice stays
            "users": {"alice": {"oauth_token": "ghp_NEW"}},
        },
        "ghe.example.com": {"oauth_token": "ghe_token", "user": "alice2"},
    }
    assert (home / ".gitconfig").read_text() == (
        "[user]\n\tname = Alice A\n\tsigningkey = ABC\n\temail = alice@example.com\n"
        "[alias]\n\tco = checkout\n"
        "[credential]\n\thelper = cache\n"
        '[credential "https://github.com"]\n\thelper = store\n'
    )
    assert (home / ".git-credentials").read_text() == (
        "https://alice:ghp_NEW@github.com\nhttps://alice2:ghe_token@ghe.example.com\n"
    )
    assert mode(home / ".ssh") == 0o755  # ssh not injected: its directory is not touched
    # Idempotent: a second pass over the merged files changes nothing.
    assert inj.inject({"github_token": sv("github-token-alice", "ghp_NEW")}).written == ()


def test_authorized_keys_keeps_user_keys_and_replaces_ours(
    home: Path, keys: dict[str, tuple[str, str]]
) -> None:
    (home / ".ssh").mkdir(mode=0o775)
    (home / ".ssh/authorized_keys").write_text("ssh-ed25519 AAAAUSERKEY laptop\n")
    as_user(home)
    inj = injector(home)
    _ed_priv, ed_pub = keys["ed25519"]
    inj.inject({"ssh_public_key": sv("p", ed_pub)})
    rsa_priv, rsa_pub = keys["rsa"]
    result = inj.inject({"ssh_private_key": sv("k", rsa_priv), "ssh_public_key": sv("p", rsa_pub)})

    lines = (home / ".ssh/authorized_keys").read_text().splitlines()
    assert lines == [
        "ssh-ed25519 AAAAUSERKEY laptop",
        " ".join(rsa_pub.split()[:2]) + " dev8-managed",
    ]
    assert mode(home / ".ssh") == 0o700  # forced: sshd's StrictModes wants it
    assert home / ".ssh/id_rsa" in result.written


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_key_files_are_named_after_the_key_type(
    home: Path, keys: dict[str, tuple[str, str]], kind: str
) -> None:
    private, public = keys[kind]
    injector(home).inject({"ssh_private_key": sv("k", private), "ssh_public_key": sv("p", public)})
    assert (home / f".ssh/id_{kind}").read_text() == private
    assert mode(home / f".ssh/id_{kind}.pub") == 0o644
    # ssh-keygen accepts the written private key and derives the same public key from it.
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", home / f".ssh/id_{kind}"], capture_output=True, text=True,
        check=True, timeout=30,
    ).stdout  # fmt: skip
    assert derived.split()[:2] == public.split()[:2]


def test_public_key_is_derived_when_only_the_private_key_exists(
    home: Path, keys: dict[str, tuple[str, str]]
) -> None:
    private, public = keys["ed25519"]
    one_line = private.strip().replace("\n", "\\n")  # as pasted into a one-line secret field
    injector(home).inject({"ssh_private_key": sv("k", one_line)})
    assert (home / ".ssh/id_ed25519").read_text() == private
    assert (home / ".ssh/id_ed25519.pub").read_text().split()[:2] == public.split()[:2]
    assert openssh_public_from_private(private) == " ".join(public.split()[:2])
    assert normalize_key_text(private.replace("\n", "\r\n")) == private


def test_symlinks_planted_by_the_user_are_not_followed(home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious\n")
    (home / ".ssh").symlink_to(outside)  # ~/.ssh -> somewhere root should not write
    (home / ".git-credentials").symlink_to(outside / "victim")
    private = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"

    result = injector(home).inject(
        {"github_token": sv("t", "ghp_X"), "ssh_private_key": sv("k", private)}
    )

    assert [p for p, _ in result.failed] == [home / ".ssh/id_rsa"]
    assert result.failed[0][1] == "ENOTDIR"
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_text() == "precious\n"
    creds = home / ".git-credentials"
    assert not creds.is_symlink()
    assert creds.read_text() == "https://alice:ghp_X@github.com\n"


def test_leftover_temporary_files_are_cleaned(home: Path) -> None:
    (home / f"{TEMP_PREFIX}.git-credentials.dead").write_text("half a tok")
    injector(home).inject({"github_token": sv("t", "ghp_X")})
    assert not list(home.glob(TEMP_PREFIX + "*"))


def test_env_file_is_loadable_by_shells_and_services(home: Path, tmp_path: Path) -> None:
    tricky = {"PLAIN": "v", "SPACES": "a b  c", "QUOTES": "it's \"q\"", "NEWLINE": "l1\nl2",
              "DOLLAR": "$HOME `x`"}  # fmt: skip
    profile_dir = tmp_path / "profile.d"
    profile_dir.mkdir()
    inj = injector(home, profile_dir=profile_dir)
    result = inj.inject({"custom_env_vars": sv("e", json.dumps({**tricky, "bad-name": "x"}))})
    env_file = home / ".config/dev8/secrets.env"
    assert env_file in result.written
    assert inj.custom_env() == tricky
    assert sourced(env_file, tricky) == tricky
    # A login shell goes through the profile.d hook.
    hook = profile_dir / "dev8-secrets.sh"
    assert mode(hook) == 0o644
    assert "secrets.env" in hook.read_text()
    for name, value in tricky.items():
        out = subprocess.run(
            ["sh", "-c", f'. "{hook}"; printf %s "${name}"'],
            env={"HOME": str(home), "PATH": os.environ["PATH"]}, capture_output=True,
            text=True, check=True, timeout=30,
        )  # fmt: skip
        assert out.stdout == value, name


def test_dotenv_format_is_accepted(home: Path) -> None:
    text = '# comment\nexport A=1\nB = "two words"\nC=three words\nnot a line\n'
    inj = injector(home)
    inj.inject({"custom_env_vars": sv("e", text)})
    assert inj.custom_env() == {"A": "1", "B": "two words", "C": "three words"}
    assert sourced(home / ".config/dev8/secrets.env", "ABC") == inj.custom_env()


def test_bytes_that_are_not_utf8_survive_a_gitconfig_merge(home: Path) -> None:
    (home / ".gitconfig").write_bytes(b"[alias]\n\tx = \xff\xfe\n")
    as_user(home)
    injector(home).inject({"github_token": sv("t", "ghp_X")})
    assert (home / ".gitconfig").read_bytes().startswith(b"[alias]\n\tx = \xff\xfe\n[user]\n")


def test_set_git_config_quotes_and_replaces_duplicates() -> None:
    text = "[User]\n  NAME = a\n  name = b \\\n  continued\n[core]\n\teditor = vim\n"
    out = set_git_config(text, "user", None, "name", 'Al "x" ; y')
    assert out == '[User]\n\tname = "Al \\"x\\" ; y"\n[core]\n\teditor = vim\n'
    assert set_git_config(out, "user", None, "name", 'Al "x" ; y') == out
    old_style = set_git_config("[branch.main]\n\tremote = x\n[branch \"dev\"]\n\tremote = y\n",
                               "branch", "dev", "remote", "z")  # fmt: skip
    assert old_style == '[branch.main]\n\tremote = x\n[branch "dev"]\n\tremote = z\n'
    appended = set_git_config("[user]\n\temail = e\n\n[core]\n", "user", None, "name", "n")
    assert appended == "[user]\n\temail = e\n\tname = n\n\n[core]\n"
    twice = set_git_config(
        "[user]\n\ta = 1\n[core]\n\tb = 2\n[user]\n\tc = 3\n", "user", None, "d", "4"
    )
    assert twice == "[user]\n\ta = 1\n\td = 4\n[core]\n\tb = 2\n[user]\n\tc = 3\n"
    assert render_gitconfig(None, host="h", user_name=None, user_email=None,
                            credential_helper=False) == ""  # fmt: skip


def test_atomic_write_helper_reports_changes(tmp_path: Path) -> None:
    target = tmp_path / "f"
    assert atomic_write(target, b"one", mode=0o640) is True
    assert atomic_write(target, b"one", mode=0o640) is False
    assert atomic_write(target, b"one", mode=0o600) is True
    assert (target.read_bytes(), mode(target)) == (b"one", 0o600)
    assert os.listdir(tmp_path) == ["f"]
