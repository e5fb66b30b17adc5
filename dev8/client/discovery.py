"""Finding the API and its token: option, environment, config file, default."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping

from dev8.client.endpoint import Endpoint, Target
from dev8.client.errors import UsageError, strerror
from dev8.config import DEFAULT_CONFIG_PATH, Bind, Config, ConfigError, TcpBind, load_config

API_ENV = "DEV8_API"
TOKEN_ENV = "DEV8_API_TOKEN"
CONFIG_ENV = "DEV8_CONFIG"
DEFAULT_API = "http://127.0.0.1:9000"


def parse_endpoint(text: str) -> Endpoint:
    """``unix:/PATH``, ``http://HOST:PORT`` or ``HOST:PORT``."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise UsageError(f"bad API address {text!r}: the socket path must be absolute")
        return Endpoint("http://localhost", uds=path)
    url = text if "://" in text else f"http://{text}"
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
        parts = parts._replace(netloc="")
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise UsageError(
            f"bad API address {text!r}: expected http://HOST:PORT, HOST:PORT or unix:/PATH"
        )
    return Endpoint(f"http://{parts.netloc}")


def endpoint_from_bind(bind: Bind) -> Endpoint:
    """The address to dial for a server bound to ``bind`` (a wildcard becomes loopback)."""
    if not isinstance(bind, TcpBind):
        return Endpoint("http://localhost", uds=bind.path)
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - dialled, not bound
    host = wildcard.get(bind.host, bind.host)
    netloc = f"[{host}]:{bind.port}" if ":" in host else f"{host}:{bind.port}"
    return Endpoint(f"http://{netloc}")


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as error:
        raise UsageError(f"cannot read the token file {path}: {strerror(error).lower()}") from None


def locate(
    *,
    api: str | None = None,
    config: str | None = None,
    token_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """Find the API and its token.

    Address: ``api``, else ``$DEV8_API``, else the config file's ``api.bind`` (``config``, else
    ``$DEV8_CONFIG``, else /etc/dev8/supervisor.yaml when readable), else 127.0.0.1:9000.
    Token: ``token_file``, else ``$DEV8_API_TOKEN``, else the config's ``api.token_file``.
    """
    environ = os.environ if environ is None else environ
    config_path = config or environ.get(CONFIG_ENV) or None
    if config_path is None and os.access(DEFAULT_CONFIG_PATH, os.R_OK):
        config_path = DEFAULT_CONFIG_PATH
    loaded: list[Config] = []

    def the_config() -> Config | None:
        if config_path is None:
            return None
        if not loaded:
            # The CLI's own variables are not config overrides (see dev8.config).
            own = {API_ENV, TOKEN_ENV}
            env = {k: v for k, v in environ.items() if k not in own}
            try:
                loaded.append(load_config(config_path, env))
            except ConfigError as error:
                raise UsageError(str(error)) from None
        return loaded[0]

    address = api or environ.get(API_ENV)
    if address:
        endpoint = parse_endpoint(address)
    else:
        found = the_config()
        endpoint = endpoint_from_bind(found.api.bind) if found else parse_endpoint(DEFAULT_API)

    if token_file:
        return Target(endpoint, _read_token(token_file) or None)
    if environ.get(TOKEN_ENV, "").strip():
        return Target(endpoint, environ[TOKEN_ENV].strip())
    found = the_config()
    if found is None or found.api.token_file is None:
        return Target(endpoint)
    try:
        return Target(endpoint, _read_token(found.api.token_file) or None)
    except UsageError as error:
        # Reads need no token: only say so if a change is refused.
        return Target(endpoint, None, token_note=str(error))
