"""Pure renderers: (what the file holds now, the secrets) -> what it must hold.

Each renderer owns only its keys and keeps everything else the user put in the file, so that
``gh auth login`` or a hand-edited ``~/.gitconfig`` survive a rotation. Rendering is idempotent:
feeding a renderer its own output gives the same output, so an unchanged secret rewrites nothing.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import struct
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import yaml

#: sshd's key type -> the ``id_*`` file name OpenSSH uses for it.
SSH_KEY_FILE_NAMES = {
    "ssh-ed25519": "id_ed25519",
    "ssh-rsa": "id_rsa",
    "ecdsa-sha2-nistp256": "id_ecdsa",
    "ecdsa-sha2-nistp384": "id_ecdsa",
    "ecdsa-sha2-nistp521": "id_ecdsa",
    "sk-ssh-ed25519@openssh.com": "id_ed25519_sk",
    "sk-ecdsa-sha2-nistp256@openssh.com": "id_ecdsa_sk",
    "ssh-dss": "id_dsa",
}
_PEM_KEY_TYPES = {"RSA": "ssh-rsa", "EC": "ecdsa-sha2-nistp256", "DSA": "ssh-dss"}
#: The comment that marks the authorized_keys line dev8 owns.
AUTHORIZED_KEY_MARK = "dev8-managed"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---- git -------------------------------------------------------------------------------------


def render_git_credentials(existing: str | None, *, host: str, user: str, token: str) -> str:
    """``~/.git-credentials`` with our ``https://user:token@host`` first and other hosts kept."""
    ours = f"https://{quote(user, safe='')}:{quote(token, safe='')}@{host}"
    kept = [
        line
        for line in (existing or "").splitlines()
        if line.strip() and not _credential_line_for(line, host)
    ]
    return "\n".join([ours, *kept]) + "\n"


def _credential_line_for(line: str, host: str) -> bool:
    try:
        parts = urlsplit(line.strip())
        netloc = parts.netloc.rpartition("@")[2]
    except ValueError:
        return False
    # git's own ``store`` helper rewrites the file with the port's colon as %3a.
    return parts.scheme == "https" and unquote(netloc).lower() == host.lower()


_HEADER = re.compile(r'^\s*\[\s*([A-Za-z0-9.-]+)(?:\s+"((?:[^"\\]|\\.)*)")?\s*\]')


def set_git_config(text: str, section: str, subsection: str | None, key: str, value: str) -> str:
    """Set ``section[.subsection].key = value`` in gitconfig text, keeping every other line.

    The first existing assignment is replaced in place and duplicates are dropped; a missing
    section is appended. Section and key names compare case-insensitively, subsections exactly.
    """
    lines = text.splitlines()
    key_re = re.compile(rf"^\s*{re.escape(key)}\s*(=|$)", re.IGNORECASE)
    out: list[str] = []
    in_section = in_first = False
    section_end: int | None = None  # where the first matching section's last line ends
    placed = False
    continuation = False
    for line in lines:
        if continuation:  # the rest of a dropped multi-line value
            continuation = _continues(line)
            continue
        header = _HEADER.match(line)
        if header:
            seen = section_end is not None
            in_section = _same_section(header.group(1), header.group(2), section, subsection)
            out.append(line)
            in_first = in_section and not seen
            if in_first:
                section_end = len(out)
            continue
        if in_section and key_re.match(line):
            if not placed:
                out.append(f"\t{key} = {_git_quote(value)}")
                placed = True
            continuation = _continues(line)
        else:
            out.append(line)
        if in_first and line.strip():
            section_end = len(out)
    if not placed:
        assignment = f"\t{key} = {_git_quote(value)}"
        if section_end is not None:
            out.insert(section_end, assignment)
        else:
            sub = f' "{_git_escape(subsection)}"' if subsection is not None else ""
            out.extend([f"[{section}{sub}]", assignment])
    return "\n".join(out) + "\n"


def _same_section(name: str, sub: str | None, section: str, subsection: str | None) -> bool:
    if sub is None and "." in name:  # the deprecated [section.subsection] form
        name, _, sub = name.partition(".")
    elif sub is not None:
        sub = re.sub(r"\\(.)", r"\1", sub)
    return name.lower() == section.lower() and sub == subsection


def _continues(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


def _git_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _git_quote(value: str) -> str:
    if value == value.strip() and not re.search(r'[";#\\\n]', value):
        return value
    return '"' + _git_escape(value).replace("\n", "\\n") + '"'


def render_gitconfig(
    existing: str | None,
    *,
    host: str,
    user_name: str | None,
    user_email: str | None,
    credential_helper: bool,
) -> str:
    """``~/.gitconfig`` with our identity and a credential helper scoped to the GitHub host.

    The helper is scoped to ``https://host`` so that git's ``store`` keeps no plain-text
    passwords for other hosts the user may talk to.
    """
    text = existing or ""
    if user_name:
        text = set_git_config(text, "user", None, "name", user_name)
    if user_email:
        text = set_git_config(text, "user", None, "email", user_email)
    if credential_helper:
        text = set_git_config(text, "credential", f"https://{host}", "helper", "store")
    return text if text.endswith("\n") or not text else text + "\n"


# ---- gh and Copilot --------------------------------------------------------------------------


def render_gh_hosts(existing: str | None, *, host: str, token: str, user: str | None) -> str:
    """``~/.config/gh/hosts.yml``: we own ``oauth_token`` and ``user``, default ``git_protocol``."""
    data = _load_mapping(existing, yaml_format=True)
    entry = data.get(host)
    if not isinstance(entry, dict):
        entry = {}
    entry["oauth_token"] = token
    if user:
        entry["user"] = user
        users = entry.get("users")
        if isinstance(users, dict):  # gh >= 2.40 keeps a per-account map as well
            account = users.get(user)
            account = account if isinstance(account, dict) else {}
            account["oauth_token"] = token
            users[user] = account
    entry.setdefault("git_protocol", "https")
    data[host] = entry
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False)


def render_copilot_hosts(existing: str | None, *, host: str, token: str, user: str | None) -> str:
    """``~/.config/github-copilot/hosts.json``: we own ``oauth_token`` and ``user`` of the host."""
    data = _load_mapping(existing, yaml_format=False)
    entry = data.get(host)
    if not isinstance(entry, dict):
        entry = {}
    if user:
        entry["user"] = user
    entry["oauth_token"] = token
    data[host] = entry
    return json.dumps(data, indent=2) + "\n"


def _load_mapping(text: str | None, *, yaml_format: bool) -> dict[Any, Any]:
    """The file's mapping; an unreadable file is replaced (it could not have worked anyway).

    One nested too deeply raises ``RecursionError``: the injector leaves such a file alone.
    """
    if not text or not text.strip():
        return {}
    try:
        data = yaml.safe_load(text) if yaml_format else json.loads(text)
    except (yaml.YAMLError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---- ssh -------------------------------------------------------------------------------------


def normalize_key_text(text: str) -> str:
    """CRLF to LF, literal ``\\n`` (as a key pasted into a one-line field) to newlines, one final
    newline: OpenSSH refuses a private key without it."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\n" not in text.strip() and "\\n" in text:
        text = text.replace("\\n", "\n")
    return text.strip() + "\n"


def openssh_public_from_private(private: str) -> str | None:
    """``type base64`` of an unencrypted-header OpenSSH private key (the public part is clear)."""
    body = re.search(
        r"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END OPENSSH PRIVATE KEY-----",
        private,
        re.DOTALL,
    )
    if body is None:
        return None
    try:
        blob = base64.b64decode("".join(body.group(1).split()), validate=True)
        magic = b"openssh-key-v1\0"
        if not blob.startswith(magic):
            return None
        offset = len(magic)
        for _ in range(3):  # ciphername, kdfname, kdfoptions
            offset = _skip_string(blob, offset)
        (count,) = struct.unpack_from(">I", blob, offset)
        offset += 4
        if count < 1:
            return None
        (length,) = struct.unpack_from(">I", blob, offset)
        public = blob[offset + 4 : offset + 4 + length]
        (type_length,) = struct.unpack_from(">I", public, 0)
        key_type = public[4 : 4 + type_length].decode("ascii")
    except (ValueError, struct.error, UnicodeDecodeError):
        return None
    return f"{key_type} {base64.b64encode(public).decode('ascii')}"


def _skip_string(blob: bytes, offset: int) -> int:
    length: int = struct.unpack_from(">I", blob, offset)[0]
    if offset + 4 + length > len(blob):
        raise ValueError("truncated key")
    return offset + 4 + length


def ssh_key_type(private: str | None, public: str | None) -> str | None:
    """The key's type name (``ssh-ed25519``...), from the public key or else the private one."""
    if public and public.split():
        return public.split()[0]
    if private is None:
        return None
    derived = openssh_public_from_private(private)
    if derived is not None:
        return derived.split()[0]
    pem = re.search(r"-----BEGIN (RSA|EC|DSA) PRIVATE KEY-----", private)
    return _PEM_KEY_TYPES[pem.group(1)] if pem else None


def public_key_line(private: str | None, public: str | None) -> str | None:
    """``type base64`` of the key pair, without the comment."""
    if public and len(public.split()) >= 2:
        key_type, blob = public.split()[:2]
        return f"{key_type} {blob}"
    return openssh_public_from_private(private) if private else None


def render_derived_public_key(existing: str | None, *, line: str) -> str:
    """``id_*.pub`` when no public key secret came: derived from the private key, unless the file
    already holds that same key (with the user's own comment), which is then kept as it is."""
    if existing is not None:
        fields = existing.split()
        if len(fields) >= 2 and f"{fields[0]} {fields[1]}" == line:
            return existing
    return f"{line} dev8\n"


def render_authorized_keys(existing: str | None, *, public_line: str) -> str:
    """``authorized_keys`` with our one marked key; the user's own keys stay untouched."""
    kept = [
        line
        for line in (existing or "").splitlines()
        if not line.rstrip().endswith(" " + AUTHORIZED_KEY_MARK)
    ]
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join([*kept, f"{public_line} {AUTHORIZED_KEY_MARK}"]) + "\n"


# ---- custom environment ----------------------------------------------------------------------


def render_env_file(variables: Mapping[str, str]) -> str:
    """POSIX-shell text (``export K='v'``) that the user's login shells source (services get the
    values dev8 holds, never this file's)."""
    header = "# Written by dev8 from the workspace's custom env vars secret. Do not edit.\n"
    return header + "".join(
        f"export {name}={shlex.quote(val)}\n"
        for name, val in variables.items()
        if _ENV_NAME.match(name)
    )


PROFILE_HOOK = """\
# Written by dev8: login shells load the workspace's custom environment (no secrets in here).
if [ -r "$HOME/{env_file}" ]; then . "$HOME/{env_file}"; fi
"""
