"""Secrets: fetch from a store (Azure Key Vault, a directory, the environment), inject them into
the workspace user's home atomically, and rotate them without a restart.

Values never leave this package except into the files written for the workspace user: every
repr, log line, event and error carries names and versions only.

The names below are imported on first use (PEP 562): a run without a secrets provider never
loads the injector, the rotator or the providers (their imports are a part of `dev8 run`'s
start-up), while `dev8.config` needs `dev8.secrets.settings`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dev8.secrets.atomic import Owner as Owner
    from dev8.secrets.atomic import atomic_write as atomic_write
    from dev8.secrets.custom_env import CustomEnv as CustomEnv
    from dev8.secrets.custom_env import RefusedVariable as RefusedVariable
    from dev8.secrets.custom_env import parse_custom_env as parse_custom_env
    from dev8.secrets.errors import MissingSecretError as MissingSecretError
    from dev8.secrets.errors import SecretFetchError as SecretFetchError
    from dev8.secrets.errors import SecretInputError as SecretInputError
    from dev8.secrets.errors import SecretsConfigError as SecretsConfigError
    from dev8.secrets.errors import SecretsError as SecretsError
    from dev8.secrets.events import SecretFetched as SecretFetched
    from dev8.secrets.events import SecretFetchFailed as SecretFetchFailed
    from dev8.secrets.events import SecretInputRefused as SecretInputRefused
    from dev8.secrets.events import SecretRotated as SecretRotated
    from dev8.secrets.events import SecretsInjected as SecretsInjected
    from dev8.secrets.injector import InjectionResult as InjectionResult
    from dev8.secrets.injector import Injector as Injector
    from dev8.secrets.providers import DirectoryProvider as DirectoryProvider
    from dev8.secrets.providers import EnvProvider as EnvProvider
    from dev8.secrets.providers import NullProvider as NullProvider
    from dev8.secrets.providers import SecretProvider as SecretProvider
    from dev8.secrets.providers import SecretValue as SecretValue
    from dev8.secrets.providers import build_provider as build_provider
    from dev8.secrets.rotator import FetchFailure as FetchFailure
    from dev8.secrets.rotator import RefreshResult as RefreshResult
    from dev8.secrets.rotator import Rotator as Rotator
    from dev8.secrets.rotator import RotatorStats as RotatorStats
    from dev8.secrets.settings import ROLES as ROLES
    from dev8.secrets.settings import SecretsConfig as SecretsConfig
    from dev8.secrets.settings import secrets_config_from as secrets_config_from

#: Each public name -> the module of this package that defines it.
_EXPORTS = {
    "Owner": "atomic",
    "atomic_write": "atomic",
    "CustomEnv": "custom_env",
    "RefusedVariable": "custom_env",
    "parse_custom_env": "custom_env",
    "MissingSecretError": "errors",
    "SecretFetchError": "errors",
    "SecretInputError": "errors",
    "SecretsConfigError": "errors",
    "SecretsError": "errors",
    "SecretFetched": "events",
    "SecretFetchFailed": "events",
    "SecretInputRefused": "events",
    "SecretRotated": "events",
    "SecretsInjected": "events",
    "InjectionResult": "injector",
    "Injector": "injector",
    "DirectoryProvider": "providers",
    "EnvProvider": "providers",
    "NullProvider": "providers",
    "SecretProvider": "providers",
    "SecretValue": "providers",
    "build_provider": "providers",
    "FetchFailure": "rotator",
    "RefreshResult": "rotator",
    "Rotator": "rotator",
    "RotatorStats": "rotator",
    "ROLES": "settings",
    "SecretsConfig": "settings",
    "secrets_config_from": "settings",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
