"""Secrets: fetch from a store (Azure Key Vault, a directory, the environment), inject them into
the workspace user's home atomically, and rotate them without a restart.

Values never leave this package except into the files written for the workspace user: every
repr, log line, event and error carries names and versions only.
"""

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
