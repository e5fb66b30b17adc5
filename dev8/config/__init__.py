"""dev8's configuration: one YAML file, overridable by `DEV8_*` variables, validated at load.

This is the only package that reads the configuration file. Shapes and types are checked by a
strict cattrs converter (no silent coercion: `"yes"` is not a boolean, `8000` is not a string);
value ranges by attrs validators, so a `Config` built in code is checked the same way. Every
failure becomes one `ConfigError` naming the file (or the variable) and the key path.

One module per part: `errors` (ConfigError, and cattrs' failures turned into one), `checks`
(shared validators), `binds`, `probes`, `services`, `alerts`, `schema` (`Config` and its small
sections), `convert` (the converter), `env` (`DEV8_*` overrides), `loading` (the file) and
`dump` (`dev8 config show`). Import from `dev8.config`; the modules are its parts.

See docs/configuration.md for the reference.
"""

from dev8.config.alerts import AlertsConfig, WebhookConfig
from dev8.config.binds import Bind, TcpBind, UnixBind, parse_bind
from dev8.config.dump import config_to_dict
from dev8.config.env import ENV_PREFIX, RESERVED_ENV_PREFIXES, RESERVED_ENV_VARS
from dev8.config.errors import REDACTED, SECRET_KEY_WORDS, ConfigError, shown_key
from dev8.config.loading import DEFAULT_CONFIG_PATH, MAX_CONFIG_BYTES, load_config, parse_config
from dev8.config.probes import ProbeConfig, ProbesConfig, ProbeType
from dev8.config.schema import (
    ApiConfig,
    ChaosConfig,
    Config,
    ConnectionsConfig,
    IdleConfig,
    LogConfig,
    LogLevel,
    ResourcesConfig,
    ShutdownConfig,
    SupervisorConfig,
    WorkspaceConfig,
)
from dev8.config.services import (
    RESTART_DELAY_FLOOR,
    BackoffConfig,
    BuiltinKind,
    ByteSize,
    CodeServerOptions,
    IntensityConfig,
    LimitsConfig,
    RestartType,
    SecretChangeAction,
    ServiceConfig,
    SshdOptions,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "MAX_CONFIG_BYTES",
    "REDACTED",
    "RESERVED_ENV_PREFIXES",
    "RESERVED_ENV_VARS",
    "RESTART_DELAY_FLOOR",
    "SECRET_KEY_WORDS",
    "AlertsConfig",
    "ApiConfig",
    "BackoffConfig",
    "Bind",
    "BuiltinKind",
    "ByteSize",
    "ChaosConfig",
    "CodeServerOptions",
    "Config",
    "ConfigError",
    "ConnectionsConfig",
    "IdleConfig",
    "IntensityConfig",
    "LimitsConfig",
    "LogConfig",
    "LogLevel",
    "ProbeConfig",
    "ProbeType",
    "ProbesConfig",
    "ResourcesConfig",
    "RestartType",
    "SecretChangeAction",
    "ServiceConfig",
    "ShutdownConfig",
    "SshdOptions",
    "SupervisorConfig",
    "TcpBind",
    "UnixBind",
    "WebhookConfig",
    "WorkspaceConfig",
    "config_to_dict",
    "load_config",
    "parse_bind",
    "parse_config",
    "shown_key",
]
