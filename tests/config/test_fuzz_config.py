"""Config fuzzing through the command: `dev8 config check FILE` on generated files, in-process.

The file only (``--schema-only``): the valid base names a machine (user dev8, /workspace,
code-server) that the test machine need not be; tests/services/test_preflight.py checks the machine.

Every file gives exit 0 with one "ok" line, or exit 2 with one line on stderr naming the file —
never a traceback, never a hang. test_config.py fuzzes the parser on plausible data; here the
files start from a complete valid configuration (every section: built-ins, probes, secrets,
chaos) and are broken one to four ways, as data and as text, and the odd files are tried too.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dev8.cli import main

SECRET = "fuzz-CANARY-7f3a9e2b41"
VALID: dict[str, Any] = {
    "environment_id": "env-1",
    "user_id": "u-1",
    "workspace": {"dir": "/workspace", "user": "dev8"},
    "api": {"bind": "127.0.0.1:9000", "token_file": None},
    "log": {"level": "info"},
    "shutdown": {"timeout": 30.0, "kill_grace": 2.0},
    "supervisor": {"intensity": {"max_restarts": 50, "window": 60.0}},
    "connections": {"interval": 5.0},
    "chaos": {"enabled": False},
    "secrets": {
        "provider": "directory",
        "directory": "/run/secrets",
        "names": {"github_token": "gh-{userId}"},
        "required": ["github_token"],
        "rotation_interval": 3600,
        "rotation_jitter": 10,
        "fetch_timeout": 5,
        "retry_initial_delay": 1,
        "retry_max_delay": 60,
        "sdk_retries": 2,
        "github_host": "github.com",
        "env_file": ".config/dev8/secrets.env",
        "profile_dir": None,
    },
    "services": {
        "web": {
            "command": ["python3", "-m", "http.server", "8000"],
            "env": {"GITHUB_TOKEN": SECRET, "COLOR": "blue"},
            "cwd": "/workspace",
            "restart": "permanent",
            "critical": False,
            "stop_signal": "TERM",
            "stop_timeout": 10.0,
            "start_timeout": 60.0,
            "backoff": {"initial_delay": 0.0, "min_delay": 0.1, "max_delay": 30.0},
            "intensity": {"max_restarts": 10, "window": 60.0},
            "ports": [8000],
            "probes": {
                "readiness": {"type": "http", "url": "http://127.0.0.1:8000/", "interval": 1},
                "liveness": {"type": "tcp", "port": 8000, "failure_threshold": 3},
            },
            "on_secret_change": "restart",
        },
        "ide": {"builtin": "code-server", "code_server": {"auth": "none"}},
        "ssh": {"builtin": "sshd", "sshd": {"port": 2222}, "on_secret_change": "reload"},
    },
}

# -- data mutations ---------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**200),
    st.floats(),  # nan and inf included
    st.text(max_size=30),
    st.binary(max_size=8),  # !!binary
    st.dates(),  # !!timestamp
    st.sampled_from(["", " ", "TERM", "SIGKILL", "unix:", "[::1]:99999", "-1", "1e400", "~"]),
)
keys = st.one_of(
    st.text(max_size=12),
    st.integers(-3, 3),
    st.booleans(),
    st.none(),
    st.sampled_from(["comand", "Services", "web ", "secrets", "names", "builtin", "probes"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


@st.composite
def broken_documents(draw: st.DrawFn) -> Any:
    """The valid config with one to four things broken."""
    document: Any = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(document))
        path = draw(st.sampled_from(paths))
        operation = draw(st.sampled_from(["replace", "delete", "add", "wrap", "rekey"]))
        if not path:
            document = draw(junk) if operation == "replace" else document
            continue
        *head, last = path
        parent = document
        for step in head:
            parent = parent[step]
        if operation == "replace":
            parent[last] = draw(junk)
        elif operation == "delete":
            del parent[last]
        elif operation == "wrap":
            parent[last] = draw(st.sampled_from([[parent[last]], {"x": parent[last]}]))
        elif operation == "add" and isinstance(parent[last], dict):
            parent[last][draw(keys)] = draw(junk)
        elif operation == "rekey" and isinstance(parent, dict):
            parent[draw(keys)] = parent.pop(last)
    return document


# -- text mutations ---------------------------------------------------------------------------

VALID_TEXT = yaml.safe_dump(VALID, sort_keys=False)


@st.composite
def broken_texts(draw: st.DrawFn) -> bytes:
    """The valid file, cut, spliced and corrupted as bytes."""
    data = VALID_TEXT.encode()
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["cut", "insert", "byte", "line", "bom", "indent"]))
        if operation == "cut":
            data = data[:at]
        elif operation == "insert":
            snippet = draw(
                st.one_of(
                    st.text(max_size=12).map(str.encode),
                    st.sampled_from(
                        [
                            b"&a ", b"*a", b"*nope", b"!!python/object:os.system ", b"<<: *a\n",
                            b"!!binary ", b"!!set ", b"? [1]\n", b"---\n", b"...\n", b"%YAML 1.1\n",
                            b"\t", b": ", b"- ", b"{", b"[", b'"', b"'", b"#", b"\x00", b"\x1b",
                        ]
                    ),
                )
            )  # fmt: skip
            data = data[:at] + snippet + data[at:]
        elif operation == "byte":
            data = data[:at] + bytes([draw(st.integers(0x80, 0xFF))]) + data[at + 1 :]
        elif operation == "line":
            lines = data.split(b"\n")
            index = draw(st.integers(0, len(lines) - 1))
            lines.insert(index, lines[index])  # a duplicate key, or a duplicate item
            data = b"\n".join(lines)
        elif operation == "bom":
            data = b"\xef\xbb\xbf" + data
        else:
            lines = data.split(b"\n")
            index = draw(st.integers(0, len(lines) - 1))
            lines[index] = b" " * draw(st.integers(1, 5)) + lines[index]
            data = b"\n".join(lines)
    return data


# -- the check --------------------------------------------------------------------------------


def config_check(content: bytes) -> tuple[int, str, str, str]:
    """`dev8 config check` on a file holding ``content``: (exit code, stdout, stderr, path)."""
    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "dev8.yaml")
        with open(path, "wb") as handle:
            handle.write(content)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["config", "check", "--schema-only", path])
    return code, out.getvalue(), err.getvalue(), path


def assert_one_clear_line(code: int, out: str, err: str, path: str) -> None:
    if code == 0:
        assert err == ""
        assert out.splitlines() == [out.strip()]
        assert out.startswith(f"{path}: ok (")
        return
    assert code == 2, (code, out, err)
    assert out == ""
    # One line, printable: no line break, no terminal escape from the file in it.
    assert err.endswith("\n"), err
    assert err[:-1].isprintable(), err
    assert err.startswith(f"dev8: config error in {path}: ") or "DEV8_" in err, err
    assert "Traceback" not in err
    assert SECRET not in err  # a secret-looking env value is never echoed


@contextlib.contextmanager
def clean_environ() -> Iterator[None]:
    """No DEV8_*/AZURE_* overrides from the machine; restored after."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(("DEV8_", "AZURE_")) or key in ("USER_ID", "ENVIRONMENT_ID"):
            del os.environ[key]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# Derandomized, as in test_config.py: the same examples on every run, so CI is stable.
FUZZ = settings(
    derandomize=True,
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_the_valid_base_is_valid() -> None:
    with clean_environ():
        code, out, err, path = config_check(VALID_TEXT.encode())
    assert (code, err) == (0, ""), err
    assert out.strip() == f"{path}: ok (3 services)"


@FUZZ
@given(document=broken_documents())
def test_every_broken_document_is_one_clear_line(document: Any) -> None:
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    with clean_environ():
        assert_one_clear_line(*config_check(text.encode()))


@FUZZ
@given(content=broken_texts())
def test_every_corrupted_file_is_one_clear_line(content: bytes) -> None:
    with clean_environ():
        assert_one_clear_line(*config_check(content))


override_names = st.lists(
    st.sampled_from(
        ["SERVICES", "WEB", "IDE", "COMMAND", "ENV", "PROBES", "READINESS", "PORT", "SECRETS",
         "API", "BIND", "CHAOS", "ENABLED", "SSHD", "CODE_SERVER", "INTENSITY", "X", ""]
    ),
    min_size=1,
    max_size=4,
).map(lambda parts: "DEV8_" + "__".join(parts))  # fmt: skip
override_values = st.one_of(
    st.text(max_size=20).filter(lambda s: "\0" not in s),
    st.sampled_from(["[", "{a: 1}", "[1, 2]", "null", "~", "true", ".inf", "0x10", "!!binary x"]),
)


@FUZZ
@given(overrides=st.dictionaries(override_names, override_values, min_size=1, max_size=3))
def test_every_bad_environment_override_is_one_clear_line(overrides: dict[str, str]) -> None:
    with clean_environ():
        os.environ.update(overrides)
        code, out, err, path = config_check(VALID_TEXT.encode())
    assert_one_clear_line(code, out, err, path)
    if code == 2:  # the variable at fault is named, or the file
        assert any(name in err for name in (*overrides, path)), err


# -- found by the fuzzers, kept as examples ---------------------------------------------------


@pytest.mark.parametrize(
    "secrets_section",
    [
        {1: "x", "provider": "none"},  # keys of mixed types: sorting them failed
        {"sdk_retries": float("inf")},  # int(inf) failed
        {"sdk_retries": float("nan")},
        {"rotation_interval": float("inf")},
        {"names": {"github_token": 5}},
        {"required": [[1]]},
        {"required": "github_token"},
        {"provider": ["keyvault"]},
        {"names": {"github_token": "gh-{"}},  # str.format's own errors escaped
        {"names": {"github_token": "{userId:>{x}}"}},
        {"fetch_timeout": 10**400},  # float() overflowed
        {"rotation_interval": float("nan")},  # was accepted
        {"required": ["a\nb"]},  # a key or role shown raw broke the line
        {"x\x1b[2J": 1},
    ],
    ids=["mixed-keys", "inf-retries", "nan-retries", "inf-interval", "int-name", "list-role",
         "string-required", "list-provider", "lone-brace", "nested-format", "huge-int",
         "nan-interval", "newline-role", "escape-key"],
)  # fmt: skip
def test_bad_secrets_sections_are_one_clear_line(secrets_section: dict[Any, Any]) -> None:
    text = yaml.safe_dump({**VALID, "secrets": secrets_section}, sort_keys=False)
    with clean_environ():
        result = config_check(text.encode())
    assert_one_clear_line(*result)
    assert result[0] == 2


# -- odd files: through a real process, so that a hang is a failure, not a stuck suite --------


def _alias_bomb() -> bytes:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    return ("\n".join(lines) + "\nservices:\n  web:\n    command: *i\n").encode()


def _make_odd(kind: str, directory: Path) -> tuple[str, str]:
    """(path to check, what the one line must say)."""
    path = directory / "dev8.yaml"
    contents = {
        "huge": (b"# padding\n" * 300_000, "larger than 1048576 bytes"),  # 3 MB of comments
        "bomb": (_alias_bomb(), "services.web.command[0]: expected a string"),
        "deep": (b"services: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply"),
        "binary": (bytes(range(256)) * 8, "not valid UTF-8"),
    }
    if kind in contents:
        data, expected = contents[kind]
        path.write_bytes(data)
        return str(path), expected
    if kind == "fifo":
        os.mkfifo(path)  # nobody will ever write to it
    elif kind == "loop":
        path.symlink_to(path)
    others = {
        "fifo": (str(path), "not a regular file"),
        "device": ("/dev/zero", "not a regular file"),
        "directory": (str(directory), "Is a directory"),
        "missing": (str(directory / "nope.yaml"), "file not found"),
        "loop": (str(path), "cannot read the file"),
    }
    return others[kind]


ODD = ["fifo", "device", "directory", "missing", "loop", "huge", "bomb", "deep", "binary"]


def _limit_memory() -> None:
    """An endless file must fail the test, not the machine: 2 GiB of address space at most."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.parametrize("kind", ODD)
def test_odd_files_are_one_clear_line_without_hanging(kind: str, tmp_path: Path) -> None:
    target, expected = _make_odd(kind, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEV8_", "AZURE_"))}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "dev8", "config", "check", target],
            capture_output=True,
            timeout=20,
            env=env,
            preexec_fn=_limit_memory,
            cwd=Path(__file__).resolve().parents[2],
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`dev8 config check` on a {kind} did not finish within 20 s")
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 2, err
    assert result.stdout == b""
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"dev8: config error in {target}: "), err
    assert expected in err, err
