"""From a service's config to its actors: the process actor and its prober.

Built-ins are expanded first (``dev8.builtins``); the process actor is gated by the readiness
probe, so "started" means "ready" and the supervisor's ``start_timeout`` covers a service that
never becomes ready. Services get the workspace's custom environment (from secrets) at every
start, so a restart picks up rotated values.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from actors import Backoff, ChildContext, ChildSpec, ChildState, Intensity, Restart, Supervisor

from .builtins import SecretGetter, expand
from .config import BackoffConfig, Config, IntensityConfig, ServiceConfig
from .health import HealthBoard, make_prober_spec
from .init import OwnPids
from .probes import start_when_ready
from .process import OutputRing, ProcessSettings, run_process
from .secrets import load_env_file
from .storage import Placement


def backoff_of(config: BackoffConfig) -> Backoff:
    return Backoff(**attrs.asdict(config))


def intensity_of(config: IntensityConfig) -> Intensity:
    return Intensity(max_restarts=config.max_restarts, window=config.window)


@attrs.define
class ServiceFactory:
    """Builds the actors of each service from the config in force."""

    own: OwnPids
    health: HealthBoard
    get_secret: SecretGetter | None = None
    #: The custom environment file written by the secret injector, if any.
    env_file: Path | None = None
    outputs: dict[str, OutputRing] = attrs.field(factory=dict)
    #: The supervisor of the process actors (set once it exists: probers restart through it).
    services: Supervisor | None = None
    #: Where files that need strict modes live (dev8.storage); None: all in the workspace.
    placement: Placement | None = None

    def effective(self, name: str, config: Config) -> ServiceConfig:
        """The service's config with its built-in defaults filled in."""
        return expand(
            name, config.services[name], config, own=self.own, placement=self.placement
        ).service

    def process_spec(self, name: str, config: Config) -> ChildSpec:
        builtin = expand(
            name,
            config.services[name],
            config,
            own=self.own,
            get_secret=self.get_secret,
            placement=self.placement,
        )
        service = builtin.service
        as_root = os.geteuid() == 0
        user = (
            service.user
            if service.user is not None
            else (config.workspace.user if as_root else None)
        )
        output = self.outputs.setdefault(name, OutputRing())
        env_file = self.env_file

        async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
            extra = await builtin.prepare()
            custom = load_env_file(env_file) if env_file is not None else {}
            settings = ProcessSettings(
                command=service.command,
                env={**custom, **service.env, **extra},
                cwd=service.cwd,
                user=user,
                stop_signal=service.stop_signal,
                stop_timeout=service.stop_timeout,
            )
            run = functools.partial(run_process, ctx, settings, own=self.own, output=output)
            await start_when_ready(
                run,
                service.probes.readiness,
                pid_getter=lambda: ctx.info.get("pid"),
                task_status=task_status,
            )

        return ChildSpec(
            name=name,
            start=start,
            restart=Restart(service.restart.value),
            shutdown_timeout=service.stop_timeout + 5.0,
            start_timeout=service.start_timeout,
            backoff=backoff_of(service.backoff),
            intensity=intensity_of(service.intensity),
            significant=service.critical,
        )

    def prober_spec(self, name: str, config: Config) -> ChildSpec | None:
        probes = self.effective(name, config).probes
        if probes.readiness is None and probes.liveness is None:
            return None
        return make_prober_spec(
            name, probes, self.health, restart=self._restart_for_probe, pid_of=self._pid_of(name)
        )

    async def _restart_for_probe(self, name: str) -> object:
        assert self.services is not None
        return await self.services.restart_child(name, reason="probe")

    def _pid_of(self, name: str) -> Callable[[], int | None]:
        def pid_of() -> int | None:
            assert self.services is not None
            for node in self.services.children():
                if node.name == name and node.state is ChildState.RUNNING:
                    pid = node.info.get("pid")
                    return pid if isinstance(pid, int) else None
            return None

        return pid_of


async def send_signal_to_service(services: Supervisor, name: str, signum: int) -> bool:
    """Signal a running service's process group (``on_secret_change: reload``)."""
    for node in services.children():
        if node.name == name and node.state is ChildState.RUNNING:
            pid = node.info.get("pid")
            if isinstance(pid, int):
                try:
                    os.killpg(pid, signum)
                except ProcessLookupError:
                    return False
                return True
    await trio.lowlevel.checkpoint()
    return False
