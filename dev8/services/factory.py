"""From a service's config to its actors: one life of its process (a child of ``services``),
its process actor (a child of ``process-actors``, the service's address) and its prober.

Built-ins are expanded first (``dev8.services.builtins``); the process actor is gated by the
readiness probe, so "started" means "ready" and the supervisor's ``start_timeout`` covers a
service that never becomes ready. Services get the workspace's custom environment (from secrets)
at every start, so a restart picks up rotated values. Those values are the ones dev8 fetched and
checked (``Injector.custom_env``), never the user-editable ``secrets.env``, and only services
that run as the workspace user get them: the user controls them, so they never reach root's sshd
or a service of another user.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import signal
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from actors import (
    ActorError,
    ActorRef,
    Backoff,
    CallTimeout,
    ChildContext,
    ChildSpec,
    EventBus,
    Intensity,
    Registry,
    Restart,
    Supervisor,
)
from dev8.config import RESTART_DELAY_FLOOR, BackoffConfig, Config, IntensityConfig, ServiceConfig
from dev8.health.probers import HealthBoard, ServiceHearing, make_prober_spec
from dev8.health.probes import start_when_ready
from dev8.pid1.reaper import OwnPids
from dev8.resources.cgroups import CgroupFiles
from dev8.services.builtins import SecretGetter, expand
from dev8.services.process import (
    START_CALL_TIMEOUT,
    Limits,
    NotRunning,
    OutputRing,
    ProcessActor,
    ProcessSettings,
    Signal,
    actor_child,
    actor_path,
    run_process,
)
from dev8.services.process import Restart as RestartService
from dev8.services.sshd_log import FailedAuthCounter, SshdOutput
from dev8.services.storage import Placement

#: A signal is sent at once by a live actor: anything longer is a busy or dead one.
SIGNAL_CALL_TIMEOUT = 10.0


def backoff_of(config: BackoffConfig) -> Backoff:
    return Backoff(**attrs.asdict(config), floor=RESTART_DELAY_FLOOR)


def intensity_of(config: IntensityConfig) -> Intensity:
    return Intensity(max_restarts=config.max_restarts, window=config.window)


@attrs.define
class ServiceFactory:
    """Builds the actors of each service from the config in force."""

    own: OwnPids
    health: HealthBoard
    #: Where the process actors are found by path (``dev8/services/<name>``).
    registry: Registry
    bus: EventBus
    get_secret: SecretGetter | None = None
    #: The custom environment variables the secrets rotator holds, checked (None: no secrets).
    custom_env: Callable[[], Mapping[str, str]] | None = None
    #: Where files that need strict modes live (dev8.services.storage); None: all in the workspace.
    placement: Placement | None = None
    #: Failed SSH authentications, counted from the output of every sshd service.
    ssh_failed_auth: FailedAuthCounter = attrs.field(factory=FailedAuthCounter)
    #: Each service's process actor, as last built (a reload that changes a service builds a
    #: new one: an operator's stop does not outlive a change of the service).
    actors: dict[str, ProcessActor] = attrs.field(factory=dict)
    #: The path of the supervisor of the process lives (the actors' addresses are under it).
    services_path: str = "dev8/services"

    def ref(self, name: str) -> ActorRef:
        """The address of a service's process actor."""
        return ActorRef(self.registry, actor_path(self.services_path, name))

    #: dev8's cgroup: services with memory/cpu limits get a sub-group there (None: rlimits only).
    cgroup: CgroupFiles | None = None
    #: This run's group under dev8's cgroup, holding the services' sub-groups.
    cgroup_parent: str | None = None

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
        custom_env = self.custom_env if _runs_as_workspace_user(user, config) else None
        limits = limits_of(service, self.cgroup, parent=self.cgroup_parent)

        async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
            actor = self.actors[name]  # built with the supervisor (``actor_spec``)
            if actor.held:
                await _stay_stopped(actor, task_status)
                return
            extra = await builtin.prepare()
            custom = custom_env() if custom_env is not None else {}
            settings = ProcessSettings(
                command=service.command,
                env={**custom, **service.env, **extra},
                cwd=service.cwd,
                user=user,
                stop_signal=service.stop_signal,
                stop_timeout=service.stop_timeout,
                limits=limits,
            )
            run = functools.partial(
                run_process, ctx, settings, own=self.own, output=actor.output, live=actor.live
            )
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
            critical=service.critical,
        )

    def actor_spec(self, name: str, config: Config, services: Supervisor) -> ChildSpec:
        """A new process actor for the service, as a child of ``process-actors``, acting through
        ``services``, the supervisor of the process lives (its output is kept across a reload;
        sshd's counts failed logins)."""
        service = self.effective(name, config)
        sshd = service.builtin == "sshd"
        previous = self.actors.get(name)
        ring = previous.output if previous is not None else None
        if ring is None or sshd != isinstance(ring, SshdOutput):
            ring = SshdOutput(self.ssh_failed_auth) if sshd else OutputRing()
        actor = ProcessActor(
            self.registry,
            name=name,
            path=actor_path(self.services_path, name),
            services=services,
            bus=self.bus,
            output=ring,
            policy=Restart(service.restart.value),
        )
        self.actors[name] = actor
        return ChildSpec(name=actor_child(name), start=actor.run, shutdown_timeout=1.0)

    def forget(self, name: str) -> None:
        """The service was removed from the config."""
        self.actors.pop(name, None)

    def prober_spec(self, name: str, config: Config, hearing: ServiceHearing) -> ChildSpec | None:
        """The service's prober (None: it has no probes), hearing its starts and exits."""
        probes = self.effective(name, config).probes
        if probes.readiness is None and probes.liveness is None:
            return None
        return make_prober_spec(
            name,
            probes,
            self.health,
            restart=self._restart_for_probe,
            registry=self.registry,
            hearing=hearing,
        )

    async def _restart_for_probe(self, name: str) -> object:
        """Through the process actor: a service stopped on purpose is left alone there."""
        with contextlib.suppress(ActorError):  # between restarts: the next failures ask again
            return await self.ref(name).call(
                RestartService(reason="probe"), timeout=START_CALL_TIMEOUT
            )
        return None


async def _stay_stopped(actor: ProcessActor, task_status: trio.TaskStatus[Any]) -> None:
    """Started while an operator holds it stopped (a restart already due when the stop came, or
    its supervisor restarted): spawn nothing and have the supervisor stop it."""
    task_status.started({"pid": None})
    # The supervisor takes this after the start it is finishing; it cancels this task.
    with contextlib.suppress(CallTimeout):
        await actor.services.stop_child(actor.name, timeout=60.0)
    await trio.sleep_forever()


#: OOM scores (/proc/PID/oom_score_adj) under memory pressure: the user's services go first
#: (the kernel's default score), then code-server, then sshd (the way in to fix things); dev8
#: itself sets -999 as PID 1. A service whose score is dev8's needs no ``choom`` at its spawn.
DEFAULT_OOM_SCORE_ADJ = 0
BUILTIN_OOM_SCORE_ADJ: Mapping[str, int] = {"sshd": -900, "code-server": -500}


def limits_of(
    service: ServiceConfig, cgroup: CgroupFiles | None, *, parent: str | None = None
) -> Limits:
    """The process actor's limits for a service's config."""
    score = service.oom_score_adj
    if score is None:
        score = BUILTIN_OOM_SCORE_ADJ.get(service.builtin or "", DEFAULT_OOM_SCORE_ADJ)
    return Limits(
        memory=service.limits.memory,
        nofile=service.limits.nofile,
        nproc=service.limits.nproc,
        cpu=service.limits.cpu,
        oom_score_adj=score,
        hierarchy=cgroup.hierarchy if cgroup is not None and os.geteuid() == 0 else None,
        container_oom_kills=cgroup.oom_kills if cgroup is not None else None,
        cgroup_parent=parent,
    )


def _uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _runs_as_workspace_user(user: str | None, config: Config) -> bool:
    """Whether a service running as ``user`` (None: as dev8 itself) is the workspace user's.

    As root, the workspace user is ``workspace.user``; otherwise dev8 runs as that user already
    and services run as it too. Decided by uid, so an alias of root is root.
    """
    target = os.geteuid() if user is None else _uid_of(user)
    if os.geteuid() != 0:
        return target == os.geteuid()
    workspace = _uid_of(config.workspace.user)
    return target is not None and target == workspace


async def send_signal_to_service(ref: ActorRef, signum: int) -> bool:
    """Have a running service's process actor signal its group (``on_secret_change: reload``);
    False when there is no process to signal, or no actor to ask."""
    try:
        await ref.call(Signal(signal.Signals(signum)), timeout=SIGNAL_CALL_TIMEOUT)
    except (NotRunning, ActorError):
        return False
    return True
