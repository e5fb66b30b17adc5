"""The ``secrets:`` configuration section, built from a plain mapping plus the environment.

The lead's ``dev8.config`` owns the YAML file; it hands this module the ``secrets:`` mapping and
``os.environ``. The environment wins over the file because the platform's agent speaks through it
(``AZURE_KEY_VAULT_NAME``/``AZURE_KEY_VAULT_URL``, ``USER_ID``, ``ENVIRONMENT_ID``).
"""

from __future__ import annotations

import ipaddress
import math
import re
import string
from collections.abc import Mapping
from typing import Any, Final, Literal, cast
from urllib.parse import urlsplit

import attrs

from dev8.secrets.errors import SecretsConfigError

ProviderKind = Literal["keyvault", "directory", "env", "none"]
PROVIDER_KINDS: Final = ("keyvault", "directory", "env", "none")

#: The logical secrets dev8 knows how to inject, in the seed's naming.
ROLES: Final = (
    "github_token",
    "copilot_token",
    "ssh_private_key",
    "ssh_public_key",
    "custom_env_vars",
)
DEFAULT_NAMES: Final[Mapping[str, str]] = {
    "github_token": "github-token-{userId}",
    "copilot_token": "copilot-token-{userId}",
    "ssh_private_key": "ssh-private-key-{userId}",
    "ssh_public_key": "ssh-public-key-{userId}",
    "custom_env_vars": "custom-env-vars-{userId}",
}
DEFAULT_REQUIRED: Final = frozenset({"github_token"})

#: Key Vault's own rule for secret names; it also keeps names safe as file names.
SECRET_NAME_RE: Final = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_VAULT_NAME_RE: Final = re.compile(r"^[0-9A-Za-z-]{3,24}$")
_PLACEHOLDERS: Final = frozenset({"userId", "environmentId"})
#: Test-only: turns off the SDK's challenge-resource check; honoured only for a loopback vault.
SKIP_CHALLENGE_CHECK_ENV: Final = "DEV8_TEST_KEYVAULT_SKIP_CHALLENGE_CHECK"

_KEYS: Final = frozenset(
    {
        "provider", "vault_url", "vault_name", "directory", "user_id", "environment_id",
        "names", "required", "rotation_interval", "rotation_jitter", "fetch_timeout",
        "retry_initial_delay", "retry_max_delay", "sdk_retries", "verify_challenge_resource",
        "github_host", "github_user", "git_user_name", "git_user_email", "env_file",
        "profile_dir",
    }
)  # fmt: skip


@attrs.frozen(kw_only=True)
class SecretsConfig:
    """Everything the secrets actors need; immutable once built."""

    provider: ProviderKind = "none"
    vault_url: str | None = None
    directory: str | None = None
    user_id: str | None = None
    environment_id: str | None = None
    #: role -> name pattern with ``{userId}``/``{environmentId}``.
    names: Mapping[str, str] = attrs.field(factory=lambda: dict(DEFAULT_NAMES))
    required: frozenset[str] = DEFAULT_REQUIRED
    rotation_interval: float = 3600.0
    #: Up to this many seconds are added to each interval, so a fleet does not poll in step.
    rotation_jitter: float = 300.0
    fetch_timeout: float = 10.0
    retry_initial_delay: float = 5.0
    retry_max_delay: float = 600.0
    #: Retries inside the Azure SDK per fetch; the rotator's own backoff comes on top.
    sdk_retries: int = 2
    #: TEST-ONLY when False: lets a vault on 127.0.0.1 answer the bearer challenge.
    verify_challenge_resource: bool = True
    github_host: str = "github.com"
    github_user: str | None = None
    git_user_name: str | None = None
    git_user_email: str | None = None
    #: Where the custom env vars go, relative to the workspace home.
    env_file: str = ".config/dev8/secrets.env"
    #: A ``profile.d`` directory to drop a loader into, so login shells see the env file.
    profile_dir: str | None = "/etc/profile.d"

    def resolved_names(self) -> dict[str, str]:
        """role -> concrete secret name, with the placeholders filled in."""
        values = {"userId": self.user_id or "", "environmentId": self.environment_id or ""}
        return {role: pattern.format_map(values) for role, pattern in self.names.items()}


def secrets_config_from(
    data: Mapping[str, Any] | None, environ: Mapping[str, str]
) -> SecretsConfig:
    """Build and validate a :class:`SecretsConfig`; :class:`SecretsConfigError` if unusable."""
    data = dict(data or {})
    unknown = sorted(_shown(key) for key in set(data) - _KEYS)  # YAML keys: 1, true, null...
    if unknown:
        raise SecretsConfigError(f"secrets: unknown key(s): {', '.join(unknown)}")

    vault_url = _vault_url(data, environ)
    directory = _opt_str(data, "directory", environ.get("DEV8_SECRETS_DIR"))
    kind = _provider_kind(data, environ, vault_url, directory)

    names = dict(DEFAULT_NAMES)
    raw_names = data.get("names") or {}
    if not isinstance(raw_names, Mapping):
        raise SecretsConfigError("secrets.names must be a mapping of role to name pattern")
    for role, pattern in raw_names.items():
        if role not in ROLES:
            raise SecretsConfigError(f"secrets.names: unknown role {role!r}")
        if not isinstance(pattern, str) or not pattern:
            raise SecretsConfigError(f"secrets.names.{role} must be a non-empty string")
        names[role] = pattern
    required = _required(data.get("required"))

    verify = _bool(data, "verify_challenge_resource", default=True)
    if environ.get(SKIP_CHALLENGE_CHECK_ENV, "").strip() in {"1", "true", "yes"}:
        verify = False
    if not verify and (vault_url is None or not _is_loopback(vault_url)):
        raise SecretsConfigError(
            "secrets.verify_challenge_resource may only be turned off (a test-only switch) "
            "for a vault on a loopback address"
        )

    config = SecretsConfig(
        provider=cast(ProviderKind, kind),
        vault_url=vault_url,
        directory=directory,
        user_id=_opt_str(data, "user_id", environ.get("USER_ID")),
        environment_id=_opt_str(data, "environment_id", environ.get("ENVIRONMENT_ID")),
        names=names,
        required=required,
        rotation_interval=_positive(data, "rotation_interval", 3600.0),
        rotation_jitter=_positive(data, "rotation_jitter", 300.0, allow_zero=True),
        fetch_timeout=_positive(data, "fetch_timeout", 10.0),
        retry_initial_delay=_positive(data, "retry_initial_delay", 5.0),
        retry_max_delay=_positive(data, "retry_max_delay", 600.0),
        sdk_retries=int(_positive(data, "sdk_retries", 2, allow_zero=True)),
        verify_challenge_resource=verify,
        github_host=_opt_str(data, "github_host", None) or "github.com",
        github_user=_opt_str(data, "github_user", environ.get("GITHUB_USER")),
        git_user_name=_opt_str(data, "git_user_name", environ.get("GIT_USER_NAME")),
        git_user_email=_opt_str(data, "git_user_email", environ.get("GIT_USER_EMAIL")),
        env_file=_opt_str(data, "env_file", None) or ".config/dev8/secrets.env",
        profile_dir=_profile_dir(data),
    )
    _check_names(config)
    if config.retry_max_delay < config.retry_initial_delay:
        raise SecretsConfigError("secrets.retry_max_delay must be >= secrets.retry_initial_delay")
    if config.env_file.startswith("/") or ".." in config.env_file.split("/"):
        raise SecretsConfigError("secrets.env_file must be a path inside the workspace home")
    return config


def _vault_url(data: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    url = environ.get("AZURE_KEY_VAULT_URL") or None
    name = environ.get("AZURE_KEY_VAULT_NAME") or None
    if url is None and name is None:
        url = _opt_str(data, "vault_url", None)
        name = _opt_str(data, "vault_name", None)
    if url is None and name is not None:
        if not _VAULT_NAME_RE.match(name):
            raise SecretsConfigError(f"Key Vault name {name!r} is not a valid vault name")
        url = f"https://{name}.vault.azure.net"
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise SecretsConfigError(f"Key Vault URL must be https://HOST[:PORT]; got {url!r}")
    return url.rstrip("/")


def _provider_kind(
    data: Mapping[str, Any],
    environ: Mapping[str, str],
    vault_url: str | None,
    directory: str | None,
) -> str:
    kind = _opt_str(data, "provider", environ.get("DEV8_SECRETS_PROVIDER")) or "auto"
    if kind == "auto":
        kind = _auto_kind(vault_url, directory, environ)
    if kind not in PROVIDER_KINDS:
        raise SecretsConfigError(
            f"secrets.provider must be one of auto, {', '.join(PROVIDER_KINDS)}; got {kind!r}"
        )
    if kind == "keyvault" and vault_url is None:
        raise SecretsConfigError(
            "secrets.provider is keyvault but no vault is configured "
            "(set AZURE_KEY_VAULT_NAME, AZURE_KEY_VAULT_URL or secrets.vault_url)"
        )
    if kind == "directory" and not directory:
        raise SecretsConfigError("secrets.provider is directory but secrets.directory is unset")
    return kind


def _auto_kind(vault_url: str | None, directory: str | None, environ: Mapping[str, str]) -> str:
    if vault_url is not None:
        return "keyvault"
    if directory:
        return "directory"
    if any(key.startswith("DEV8_SECRET_") for key in environ):
        return "env"
    return "none"


def _shown(key: object) -> str:
    """A key as an error may show it: escaped unless printable (one line, no terminal codes)."""
    text = str(key)
    return text if text.isprintable() else ascii(text)


def _fields(role: str, pattern: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError:
        raise SecretsConfigError(
            f"secrets.names.{role}: a single '{{' or '}}'; placeholders are "
            "{userId} and {environmentId}"
        ) from None
    if any(spec or conversion for _, _, spec, conversion in parsed):
        raise SecretsConfigError(
            f"secrets.names.{role}: placeholders take no conversion or format ('!', ':')"
        )
    return {field for _, field, _, _ in parsed if field is not None}


def _check_names(config: SecretsConfig) -> None:
    for role, pattern in config.names.items():
        fields = _fields(role, pattern)
        if fields - _PLACEHOLDERS:
            bad = ", ".join(sorted(fields - _PLACEHOLDERS))
            raise SecretsConfigError(f"secrets.names.{role}: unknown placeholder(s) {bad}")
        if config.provider == "none":
            continue
        if "userId" in fields and not config.user_id:
            raise SecretsConfigError(f"secrets.names.{role} needs {{userId}}: set USER_ID")
        if "environmentId" in fields and not config.environment_id:
            raise SecretsConfigError(
                f"secrets.names.{role} needs {{environmentId}}: set ENVIRONMENT_ID"
            )
    if config.provider == "none":
        return
    for role, name in config.resolved_names().items():
        if not SECRET_NAME_RE.match(name):
            raise SecretsConfigError(
                f"secrets.names.{role} gives {name!r}: names are 1-127 letters, digits or '-'"
            )


def _required(raw: Any) -> frozenset[str]:
    if raw is None:
        return DEFAULT_REQUIRED
    if isinstance(raw, str) or not isinstance(raw, list | tuple | set | frozenset):
        raise SecretsConfigError("secrets.required must be a list of roles")
    unknown = sorted(_shown(r) for r in raw if r not in ROLES)
    if unknown:
        raise SecretsConfigError(f"secrets.required: unknown role(s) {', '.join(unknown)}")
    return frozenset(cast("list[str]", list(raw)))


def _opt_str(data: Mapping[str, Any], key: str, env_value: str | None) -> str | None:
    if env_value:
        return env_value
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SecretsConfigError(f"secrets.{key} must be a string")
    return value


def _profile_dir(data: Mapping[str, Any]) -> str | None:
    value = data.get("profile_dir", "/etc/profile.d")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise SecretsConfigError("secrets.profile_dir must be an absolute path or null")
    return value


def _bool(data: Mapping[str, Any], key: str, *, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise SecretsConfigError(f"secrets.{key} must be true or false")
    return value


def _positive(
    data: Mapping[str, Any], key: str, default: float, *, allow_zero: bool = False
) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SecretsConfigError(f"secrets.{key} must be a number")
    try:
        number = float(value)
    except OverflowError:
        raise SecretsConfigError(f"secrets.{key} must be a number of a sensible size") from None
    if not math.isfinite(number):
        raise SecretsConfigError(f"secrets.{key} must be a finite number")
    if number < 0 or (number == 0 and not allow_zero):
        raise SecretsConfigError(f"secrets.{key} must be {'>= 0' if allow_zero else '> 0'}")
    return number


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
