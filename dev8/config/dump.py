"""Plain data for `dev8 config show`, secret-looking values hidden."""

import urllib.parse
from typing import Any

from dev8.config.convert import converter
from dev8.config.errors import REDACTED, looks_secret
from dev8.config.schema import Config


def _redacted_url(url: str) -> str:
    """A webhook URL without what often holds its token (path, query, user info)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    hidden = parts.path not in ("", "/") or parts.query or parts.username
    return f"{parts.scheme}://{host}{port}/{REDACTED if hidden else ''}"


def config_to_dict(config: Config, *, redact: bool = True) -> dict[str, Any]:
    """Plain data (YAML/JSON-ready) for `dev8 config show`; secret-looking env values hidden."""
    data: dict[str, Any] = converter.unstructure(config)
    if redact:
        for service in data["services"].values():
            service["env"] = {
                k: REDACTED if looks_secret(k) else v for k, v in service["env"].items()
            }
        for hook in data["alerts"]["webhooks"]:
            hook["url"] = _redacted_url(hook["url"])
    return data
