"""The secrets part of a running dev8: provider, injector and rotator, as one child of the tree.

They are imported by ``Secrets.build`` once a provider is configured: a local run without one
does not pay for them before its API answers.

The rotator is an actor at ``ROTATOR_PATH``; what the API asks of it (``POST /secrets/refresh``)
goes to that address as a ``Refresh`` message, and what it shows (``/status``, ``/metrics``) is
read from the rotator's own snapshot.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from actors import (
    ActorError,
    ActorRef,
    Backoff,
    CallTimeout,
    ChildContext,
    ChildSpec,
    Event,
    Intensity,
    Registry,
    Restart,
)
from dev8.secrets.errors import SecretsRefreshFailed

if TYPE_CHECKING:
    from dev8.config import Config
    from dev8.secrets.injector import Injector
    from dev8.secrets.providers import SecretProvider
    from dev8.secrets.rotator import RefreshResult, Rotator, RotatorStats

#: How long ``POST /secrets/refresh`` waits for a pass.
REFRESH_TIMEOUT = 60.0
#: The rotator's place in the tree (``/status``'s ``tree``): the address it registers at.
ROTATOR_PATH = "dev8/secrets"


@attrs.define
class Secrets:
    """Fetches into the workspace home; the tree runs ``child_spec()`` before the services."""

    provider: SecretProvider
    injector: Injector
    rotator: Rotator
    provider_kind: str

    @property
    def address(self) -> ActorRef:
        """Where ``Refresh`` and ``Status`` go."""
        return self.rotator.ref

    @classmethod
    def build(
        cls,
        config: Config,
        *,
        publish: Callable[[Event], object],
        home: Path | None = None,
        registry: Registry | None = None,
    ) -> Secrets | None:
        """None when no provider is configured (a local run).

        `home`: where the credential files go, by default the workspace (the user's home);
        /run/dev8/home on storage that keeps no modes (dev8.services.storage).
        """
        settings = config.secrets
        if settings.provider == "none":
            return None
        from dev8.secrets.atomic import Owner  # noqa: PLC0415 - see the module's docstring
        from dev8.secrets.injector import Injector  # noqa: PLC0415
        from dev8.secrets.providers import build_provider  # noqa: PLC0415
        from dev8.secrets.rotator import Rotator  # noqa: PLC0415

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
            settings,
            provider=provider,
            injector=injector,
            publish=publish,
            source=ROTATOR_PATH,
            registry=registry,
            path=ROTATOR_PATH,
        )
        return cls(provider, injector, rotator, settings.provider)

    def child_spec(self) -> ChildSpec:
        async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
            await self.rotator.run(ctx, task_status=task_status)

        # The rotator does not fail because the store is down or a secret is missing: it retries
        # with backoff while the services wait (``rotator.ready``). Should it crash all the same,
        # it is restarted; were it to give up, the workspace keeps running on its last files.
        return ChildSpec(
            name="secrets",
            start=start,
            restart=Restart.PERMANENT,
            shutdown_timeout=5.0,
            backoff=Backoff(initial_delay=1.0, min_delay=2.0, max_delay=60.0, reset_after=60.0),
            intensity=Intensity(max_restarts=5, window=600.0),
            critical=False,
        )

    async def get(self, name: str) -> str | None:
        """One secret's current value, for a service that needs it at start (a password)."""
        value = await self.provider.get(name)
        return None if value is None else value.value

    async def refresh(self) -> dict[str, Any]:
        """``Refresh`` through the rotator's address. Only a pass without any failure answers
        ``ok: true``; otherwise :class:`SecretsRefreshFailed` says what changed and what failed
        (names, never values), or why the rotator did not answer."""
        from dev8.secrets.rotator import Refresh  # noqa: PLC0415 - loaded by build() already

        try:
            result: RefreshResult = await self.address.call(Refresh(), timeout=REFRESH_TIMEOUT)
        except CallTimeout:
            raise SecretsRefreshFailed(
                503,
                "secrets_timeout",
                f"no refresh pass finished within {REFRESH_TIMEOUT:g} s",
                {"ok": False, "waitingFor": self.waiting_for()},
            ) from None
        except ActorError as error:  # it crashed mid-pass, is between restarts, or is flooded
            raise SecretsRefreshFailed(
                503,
                "actor_unavailable",
                f"the secret rotator did not answer: {error}",
                {"ok": False, "waitingFor": self.waiting_for()},
            ) from None
        reply = refresh_reply(result)
        if result.ok:
            return reply
        raise refresh_failure(result, reply)

    def stats(self) -> RotatorStats:
        return self.rotator.stats

    def waiting_for(self) -> list[dict[str, Any]]:
        """Required secrets the services are still waiting for, each with why."""
        from dev8.secrets.rotator import failure_document  # noqa: PLC0415 - see refresh()

        return [failure_document(f) for f in self.rotator.waiting_for()]

    def status(self) -> dict[str, Any]:
        """The rotator's snapshot, as its ``Status`` message answers it."""
        return self.rotator.status()


def refresh_reply(result: RefreshResult) -> dict[str, Any]:
    """What a refresh answers: this pass's versions, what changed, what failed (no values)."""
    from dev8.secrets.rotator import failure_document  # noqa: PLC0415 - see Secrets.refresh()

    injection_failed = result.injection.failed if result.injection is not None else ()
    return {
        "ok": result.ok,
        "versions": dict(result.versions),
        "changed": list(result.changed),
        "missing": list(result.missing),
        "failed": {role: failure_document(f) for role, f in sorted(result.failed.items())},
        "notWritten": sorted(f"{path}: {error}" for path, error in injection_failed),
        "retryAfter": result.retry_after,
        "duration": round(result.duration, 6),
    }


def refresh_failure(result: RefreshResult, reply: dict[str, Any]) -> SecretsRefreshFailed:
    """409 when the workspace's state is at fault (a required secret does not exist, a file
    could not be written), else 503 (the store is down, throttling, refusing us, too slow)."""
    missing = sorted(f.name for f in result.failed.values() if f.reason == "missing")
    others = sorted(
        f"{f.name}: {f.reason}" + (f" (HTTP {f.status})" if f.status is not None else "")
        for f in result.failed.values()
        if f.reason != "missing"
    )
    if missing:
        status, code = 409, "secret_missing"
        message = "required secret(s) missing: " + ", ".join(missing)
    elif others:
        status, code = 503, "secrets_unavailable"
        message = "fetching failed for " + "; ".join(others)
    else:
        status, code = 409, "secrets_not_written"
        message = "could not write: " + ", ".join(reply["notWritten"])
    if missing and others:
        message += "; fetching failed for " + "; ".join(others)
    if result.retry_after is not None:
        message += f"; retry after {result.retry_after:g} s"
    return SecretsRefreshFailed(status, code, message, reply)
