"""The custom environment variables secret: parsed and checked once, when it is fetched.

The user sets this secret, so its names and values are untrusted. dev8 keeps the checked
variables in memory and hands them to the services that run as the workspace user; nothing
reads them back from the user-writable ``secrets.env``. A variable that could run code in a
process before it drops to the user (``setpriv`` starts as root), change how the dynamic loader
or libc behave, hook an interpreter's or a shell's startup, or overwrite what dev8 itself sets is
refused by name; so is one that no ``execve`` could carry (a NUL byte, over 128 KiB, not
UTF-8). Each refusal names the variable and a reason, never its value; the others still apply.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from dotenv import dotenv_values

from dev8.secrets.errors import SecretInputError

#: What the kernel accepts for one ``NAME=value`` string of an environment (MAX_ARG_STRLEN).
MAX_VARIABLE_BYTES = 128 * 1024
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Read by ld.so or libc in any process, including ``setpriv``, which starts a workspace service
#: as root and only then drops to the user: glibc's ``UNSECURE_ENVVARS`` (what it clears for
#: setuid programs), but ``TMPDIR``, which nothing reads before the drop.
LOADER_AND_LIBC = frozenset({
    "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH",
    "MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TZDIR",
})  # fmt: skip
LOADER_PREFIXES = ("LD_", "MALLOC_", "GLIBC_")
#: Startup hooks of shells and interpreters: code run, or options injected, at every start.
STARTUP_HOOKS = frozenset({
    "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS",
    "PYTHONSTARTUP", "PYTHONINSPECT", "PERL5OPT", "PERL5DB", "RUBYOPT", "NODE_OPTIONS",
    "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS",
})  # fmt: skip
STARTUP_HOOK_PREFIXES = ("BASH_FUNC_",)
#: Set by dev8 for every service (identity, its own settings): a secret may not replace them.
RESERVED = frozenset({"HOME", "USER", "LOGNAME", "SHELL"})
RESERVED_PREFIXES = ("DEV8_",)


@attrs.frozen
class RefusedVariable:
    """A variable left out, by name, with why (``dangerous_name``, ``nul_byte``, ...)."""

    name: str
    reason: str


@attrs.frozen
class CustomEnv:
    """The variables services get, and the ones refused. Values never show in a repr."""

    variables: Mapping[str, str] = attrs.field(repr=False, factory=dict)
    refused: tuple[RefusedVariable, ...] = ()


def refusal_reason(name: str) -> str | None:
    """Why ``name`` may not come from the user's secret; None when it may."""
    if name in LOADER_AND_LIBC or name.startswith(LOADER_PREFIXES):
        return "dangerous_name"
    if name in STARTUP_HOOKS or name.startswith(STARTUP_HOOK_PREFIXES):
        return "dangerous_name"
    if name in RESERVED or name.startswith(RESERVED_PREFIXES):
        return "reserved_name"
    return None


def _value_problem(name: str, value: str) -> str | None:
    if "\0" in value:
        return "nul_byte"
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a JSON "\ud800"
        return "not_utf8"
    if len(name) + 1 + len(encoded) + 1 > MAX_VARIABLE_BYTES:
        return "too_large"
    return None


def parse_custom_env(value: str, *, item: str = "custom_env_vars") -> CustomEnv:
    """The secret as a JSON object, or as ``KEY=VALUE`` lines (dotenv syntax, read by
    python-dotenv: ``#`` starts a comment only at a line's or a word's start, quotes keep ``\\r``,
    ``#`` and newlines, nothing is interpolated).

    Names that are not shell identifiers are dropped (no shell could load them). A secret nested
    too deeply to parse raises :class:`SecretInputError`.
    """
    stripped = value.strip()
    pairs: Iterable[tuple[str, Any]] | None = None
    try:
        if stripped.startswith("{"):
            try:
                loaded = json.loads(stripped)
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                pairs = (
                    (str(k), v if isinstance(v, str) else json.dumps(v))
                    for k, v in loaded.items()
                    if v is not None
                )
        if pairs is None:
            parsed = dotenv_values(stream=io.StringIO(value), interpolate=False)
            pairs = ((k, v) for k, v in parsed.items() if v is not None)
        return check_variables(pairs)
    except RecursionError:
        raise SecretInputError(item, "too_deeply_nested") from None


def check_variables(pairs: Iterable[tuple[str, str]]) -> CustomEnv:
    """Split name/value pairs into the usable variables and the refused ones."""
    variables: dict[str, str] = {}
    refused: dict[str, RefusedVariable] = {}
    for name, val in pairs:
        if not _ENV_NAME.match(name):
            continue
        reason = refusal_reason(name) or _value_problem(name, val)
        if reason is not None:
            refused[name] = RefusedVariable(name, reason)
            variables.pop(name, None)
        else:
            variables[name] = val
            refused.pop(name, None)
    return CustomEnv(variables, tuple(refused.values()))
