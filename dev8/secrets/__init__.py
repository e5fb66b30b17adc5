"""Secrets: fetch from a store (Azure Key Vault, a directory, the environment), inject them into
the workspace user's home atomically, and rotate them without a restart.

Values never leave this package except into the files written for the workspace user: every
repr, log line, event and error carries names and versions only.
"""

from .atomic import Owner as Owner
from .atomic import atomic_write as atomic_write
from .custom_env import CustomEnv as CustomEnv
from .custom_env import RefusedVariable as RefusedVariable
from .custom_env import parse_custom_env as parse_custom_env
from .errors import MissingSecretError as MissingSecretError
from .errors import SecretFetchError as SecretFetchError
from .errors import SecretInputError as SecretInputError
from .errors import SecretsConfigError as SecretsConfigError
from .errors import SecretsError as SecretsError
from .events import SecretFetched as SecretFetched
from .events import SecretFetchFailed as SecretFetchFailed
from .events import SecretInputRefused as SecretInputRefused
from .events import SecretRotated as SecretRotated
from .events import SecretsInjected as SecretsInjected
from .injector import InjectionResult as InjectionResult
from .injector import Injector as Injector
from .providers import DirectoryProvider as DirectoryProvider
from .providers import EnvProvider as EnvProvider
from .providers import NullProvider as NullProvider
from .providers import SecretProvider as SecretProvider
from .providers import SecretValue as SecretValue
from .providers import build_provider as build_provider
from .rotator import FetchFailure as FetchFailure
from .rotator import RefreshResult as RefreshResult
from .rotator import Rotator as Rotator
from .rotator import RotatorStats as RotatorStats
from .settings import ROLES as ROLES
from .settings import SecretsConfig as SecretsConfig
from .settings import secrets_config_from as secrets_config_from
