"""The secrets part of a running dev8: provider, injector and rotator, as one child of the tree."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from actors import Backoff, ChildContext, ChildSpec, Event, Intensity, Restart

from .atomic import Owner
from .injector import Injector
from .providers import SecretProvider, build_provider
from .rotator import Rotator

if TYPE_CHECKING:
    from ..config import Config

#: How long ``POST /secrets/refresh`` waits for a pass.
REFRESH_TIMEOUT = 60.0


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


@attrs.define
class Secrets:
    """Fetches into the workspace home; the tree runs ``child_spec()`` before the services."""

    provider: SecretProvider
    injector: Injector
    rotator: Rotator
    provider_kind: str

    @classmethod
    def build(
        cls,
        config: Config,
        *,
        publish: Callable[[Event], object],
        home: Path | None = None,
    ) -> Secrets | None:
        """None when no provider is configured (a local run).

        `home`: where the credential files go, by default the workspace (the user's home);
        /run/dev8/home on storage that keeps no modes (dev8.storage).
        """
        settings = config.secrets
        if settings.provider == "none":
            return None
        owner = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(config.workspace.user)
            except KeyError:
                entry = None
            if entry is not None:
                owner = Owner(entry.pw_uid, entry.pw_gid)
        # The workspace directory is the workspace user's home: git, gh, ssh look there.
        injector = Injector.from_config(
            settings,
            home=Path(config.workspace.dir) if home is None else home,
            owner=owner,
            publish=publish,
        )
        provider = build_provider(settings)
        rotator = Rotator.from_config(
            settings, provider=provider, injector=injector, publish=publish, source="dev8/secrets"
        )
        return cls(provider, injector, rotator, settings.provider)

    def child_spec(self) -> ChildSpec:
        async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
            await self.rotator.run(task_status=task_status)

        # A required secret that is missing fails the start; after a few tries over some minutes
        # dev8 gives up (exit code 3), naming the secret in the log.
        return ChildSpec(
            name="secrets",
            start=start,
            restart=Restart.PERMANENT,
            shutdown_timeout=5.0,
            backoff=Backoff(initial_delay=1.0, min_delay=2.0, max_delay=60.0, reset_after=60.0),
            intensity=Intensity(max_restarts=5, window=600.0),
            significant=True,
        )

    async def get(self, name: str) -> str | None:
        """One secret's current value, for a service that needs it at start (a password)."""
        value = await self.provider.get(name)
        return None if value is None else value.value

    async def refresh(self) -> dict[str, Any]:
        with trio.fail_after(REFRESH_TIMEOUT):
            result = await self.rotator.refresh()
        return {
            "ok": result.ok,
            "versions": dict(result.versions),
            "changed": list(result.changed),
            "missing": list(result.missing),
            "failed": {role: attrs.asdict(failure) for role, failure in result.failed.items()},
            "duration": round(result.duration, 6),
        }

    def status(self) -> dict[str, Any]:
        last = self.rotator.last_result
        stats = attrs.asdict(self.rotator.stats)
        return {
            "provider": self.provider_kind,
            "versions": dict(self.rotator.versions),
            "last_fetch": _iso(self.rotator.last_pass_at),
            "next_check": _iso(self.rotator.next_check_at),
            "last_pass_ok": None if last is None else last.ok,
            "failed": [] if last is None else sorted(last.failed),
            "missing": [] if last is None else list(last.missing),
            "stats": stats,
        }
