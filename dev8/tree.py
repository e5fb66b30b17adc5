"""The supervision tree, composed from the config; and its reconfiguration by a reload.

    dev8 (root, one_for_one; children start in this order, stop in reverse)
    ├── process-actors   supervisor: one process actor per service, at dev8/services/<name>
    ├── api              the Quart-Trio app on Hypercorn (its start is given: dev8.app)
    ├── alerts           events -> alerts (alert_fired / alert_resolved)
    ├── webhooks         delivers alerts (only with alerts.webhooks)
    ├── idle             workspace_idle / workspace_active (only with idle.after)
    ├── secrets          the rotator (only with a secrets provider)
    ├── services         supervisor (one_for_one): one life of each service's process
    ├── health           supervisor: one prober per probed service
    ├── connections      the connection tracker
    ├── resources        the resource sampler (/proc per service tree, the cgroup)
    ├── secret-watch     applies on_secret_change
    └── reloader         config reloads as messages (only with a config file)

Each part is built in dependency order and handed what it needs when it is made. What must be
read before trio runs (files, /proc, the user database) is read first, into ``TreeInputs``.
The init duties around the tree (signals, reaper, shutdown, exit code) are ``dev8.app``'s.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from typing import Any

import attrs
import structlog
import trio

from actors import (
    ActorError,
    ChildContext,
    ChildExists,
    ChildSpec,
    ChildState,
    Envelope,
    EventBus,
    Intensity,
    Mailbox,
    Registry,
    StartFunction,
    Supervisor,
    UnknownChild,
)
from dev8.config import Config
from dev8.connections.idle import make_idle_spec
from dev8.connections.tracker import ConnectionTracker, set_watched_ports
from dev8.health.probers import HealthBoard, ServiceHearing
from dev8.monitoring.alerts import make_alerts_spec
from dev8.monitoring.webhooks import WebhookNotifier, make_webhooks_spec
from dev8.pid1.reaper import OwnPids
from dev8.reload import Reloader, ReloadPlan
from dev8.resources.cgroups import CgroupFiles
from dev8.resources.sampler import OomKilled, ResourceBoard, SampleNow, make_sampler_spec
from dev8.secrets.runtime import Secrets
from dev8.services.factory import ServiceFactory, intensity_of, send_signal_to_service
from dev8.services.process import Restart as RestartService
from dev8.services.process import actor_child
from dev8.services.storage import Placement, placement, prepare_strict_home

#: How long a secret change's restart of one service may take (until its new life settled).
SECRET_RESTART_TIMEOUT = 300.0
#: How long a reload may wait for the reloader's answer (it reads and checks the file only).
RELOAD_ANSWER_TIMEOUT = 30.0
#: The connection tracker's address; how long a reload waits for it to take the new ports.
TRACKER_PATH = "dev8/connections"
TRACKER_CALL_TIMEOUT = 30.0


def _step_timeout(config: Config, name: str) -> float:
    """A bound on one step of a reload pass: the service's stop ladder (twice: leader, then
    leftovers) or its start, and time to wait for the supervisor to take the command."""
    service = config.services.get(name)
    if service is None:
        return 300.0
    return 2 * service.stop_timeout + service.start_timeout + 300.0


def enabled_services(config: Config) -> list[str]:
    return [name for name, service in config.services.items() if service.enabled]


@attrs.frozen(kw_only=True)
class TreeInputs:
    """What the tree is built on that is read before trio runs (blocking: files, /proc, the
    user database), and the registry where its actors are found by path."""

    placement: Placement
    #: Why the strict-mode files could not be prepared (logged at the start), or None.
    storage_error: str | None
    cgroup: CgroupFiles
    #: Live actors by path (``dev8/services/<name>``, ``dev8/secrets``, ``dev8/reloader``…):
    #: callers hold addresses, not objects.
    registry: Registry
    secrets: Secrets | None
    #: The webhooks' key files were checked by the pre-flight (dev8.services.preflight).
    webhooks: WebhookNotifier

    @classmethod
    def read(cls, config: Config, bus: EventBus) -> TreeInputs:
        where = placement(config.workspace.dir, as_root=os.geteuid() == 0)
        storage_error = None
        if where.relocated:
            try:
                prepare_strict_home(where, config.workspace.user, config.secrets.github_host)
            except (OSError, KeyError) as e:
                storage_error = f"{type(e).__name__}: {e}"
        registry = Registry()
        return cls(
            placement=where,
            storage_error=storage_error,
            cgroup=CgroupFiles.detect(),
            registry=registry,
            secrets=Secrets.build(
                config, publish=bus.publish, home=where.credentials_home, registry=registry
            ),
            webhooks=WebhookNotifier.from_config(
                config.alerts.webhooks, environment_id=config.environment_id
            ),
        )


class Tree:
    """dev8's supervision tree (``root``) and the parts the API and the init duties need.

    Built whole by its constructor, in dependency order; ``api`` is the API child's start (the
    API serves this tree, so the composition that makes the app gives it). After a reload,
    ``config`` is the config in force; only the reloader's pass writes it.
    """

    def __init__(
        self,
        config: Config,
        inputs: TreeInputs,
        *,
        bus: EventBus,
        own: OwnPids,
        rng: random.Random,
        api: StartFunction,
        websocket_clients: Callable[[], int],
        config_path: str | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.log = structlog.get_logger("dev8")
        self.placement = inputs.placement
        self.cgroup = inputs.cgroup
        self.registry = inputs.registry
        self.secrets = inputs.secrets
        self.webhooks = inputs.webhooks
        self.health = HealthBoard()
        self.factory = ServiceFactory(
            own=own,
            health=self.health,
            registry=self.registry,
            bus=bus,
            services_path="dev8/services",
            get_secret=self.secrets.get if self.secrets else None,
            custom_env=self.secrets.injector.custom_env if self.secrets else None,
            placement=self.placement,
            cgroup=self.cgroup,
            cgroup_parent=f"dev8-{os.getpid()}-{os.urandom(4).hex()}",
        )
        enabled = enabled_services(config)
        self.services = Supervisor(
            "services",
            [self.factory.process_spec(name, config) for name in enabled],
            bus=bus,
            intensity=intensity_of(config.supervisor.intensity),
            rng=rng,
            # Services do not depend on each other: stopping them one by one only adds up
            # their stop timeouts.
            parallel_shutdown=True,
        )
        #: How probers hear their services start and exit.
        self.hearing = ServiceHearing(bus, self.services)
        self.process_actors = Supervisor(
            "process-actors",
            [self.factory.actor_spec(name, config, self.services) for name in enabled],
            bus=bus,
            intensity=intensity_of(config.supervisor.intensity),
            rng=rng,
            parallel_shutdown=True,
        )
        probers = [self.factory.prober_spec(name, config, self.hearing) for name in enabled]
        self.probers = Supervisor(
            "health", [spec for spec in probers if spec is not None], bus=bus, rng=rng
        )
        self.tracker = ConnectionTracker(
            self.registry,
            {name: self.factory.effective(name, config).ports for name in enabled},
            path=TRACKER_PATH,
            interval=config.connections.interval,
            websocket_clients=websocket_clients,
        )
        self.resources = ResourceBoard(
            memory_threshold=config.resources.memory_threshold,
            cpu_threshold=config.resources.cpu_threshold,
        )
        self._set_resource_limits(config)
        self.resources_mailbox = Mailbox[SampleNow]("resources", capacity=16)
        bus.add_listener(self._count_oom_kills)
        children = [
            # First: the services' addresses exist before anything can call them (its boot
            # spawns nothing), and the services' supervisor starts as early as before.
            self.process_actors.child_spec(),
            ChildSpec(name="api", start=api, shutdown_timeout=3.0, start_timeout=10.0),
            *self._alert_specs(config),
        ]
        if self.secrets is not None:
            children.append(self.secrets.child_spec())
        children += [
            attrs.evolve(self.services.child_spec(critical=True), start=self._start_services),
            self.probers.child_spec(),
            self.tracker.child_spec(),
            make_sampler_spec(
                self.resources,
                self.resources_mailbox,
                leaders=self._service_leaders,
                cgroup=self.cgroup,
                interval=config.resources.interval,
            ),
            ChildSpec(name="secret-watch", start=self._watch_secret_changes, shutdown_timeout=1.0),
        ]
        self.reloader: Reloader | None = None
        if config_path is not None:
            self.reloader = Reloader(
                config_path, config, apply=self._apply_config, registry=self.registry
            )
            # Last: stopped first at shutdown, so no reload pass outlives the services.
            children.append(
                ChildSpec(name="reloader", start=self.reloader.run, shutdown_timeout=1.0)
            )
        self.root = Supervisor(
            "dev8",
            children,
            bus=bus,
            intensity=Intensity(max_restarts=10, window=60.0),
            rng=rng,
        )

    def _alert_specs(self, config: Config) -> list[ChildSpec]:
        """Alerts, webhooks and idle: before what they watch, so they see it from its first
        event."""
        specs = [make_alerts_spec(self.bus, resolve_after=config.alerts.resolve_after)]
        if self.webhooks.receivers:
            specs.append(make_webhooks_spec(self.webhooks, self.bus))
        if config.idle.after is not None:
            specs.append(
                make_idle_spec(
                    self.bus,
                    self.tracker.snapshot,
                    after=config.idle.after,
                    count_api_clients=config.idle.api_clients,
                    poll_interval=config.connections.interval,
                    api_client_count=self.tracker.websocket_clients,
                )
            )
        return specs

    # -- what the rest reads -----------------------------------------------------------------------

    @property
    def supervisors(self) -> list[Supervisor]:
        """Every supervisor of the tree (for fault injection by actor path)."""
        return [self.root, self.process_actors, self.services, self.probers]

    def services_names(self) -> list[str]:
        return [node.name for node in self.services.children()]

    def vscode_sessions(self) -> int:
        """Established client connections to the code-server services (dev8's probes left out)."""
        return sum(
            self.tracker.published.count(name)
            for name, service in self.config.services.items()
            if service.enabled and service.builtin == "code-server"
        )

    def _service_leaders(self) -> dict[int, str]:
        """pid -> service, of each running service's process (its session and tree leader)."""
        leaders: dict[int, str] = {}
        for name, state, info in self.services.child_states():
            pid = info.get("pid")
            # Starting too: a service waiting for its readiness probe already uses resources.
            if state in (ChildState.STARTING, ChildState.RUNNING) and isinstance(pid, int):
                leaders[pid] = name
        return leaders

    def _set_resource_limits(self, config: Config) -> None:
        enabled = {n: s for n, s in config.services.items() if s.enabled}
        self.resources.set_limits(
            {n: s.limits.memory for n, s in enabled.items()},
            {n: s.limits.cpu for n, s in enabled.items()},
        )

    def _count_oom_kills(self, envelope: Envelope) -> None:
        event = envelope.event
        if isinstance(event, OomKilled) and event.service is not None:
            self.resources.count_oom_kill(event.service)

    # -- children that are the tree's own ----------------------------------------------------------

    async def _start_services(
        self, ctx: ChildContext, *, task_status: trio.TaskStatus[Any]
    ) -> None:
        """The services need the required secrets: until the rotator has them, they wait (shown
        as not ready, /health naming the missing secrets) while the rest of the tree runs."""
        ready = self.secrets.rotator.ready if self.secrets is not None else None
        if ready is None or ready.is_set():
            await self.services.run(ctx, task_status=task_status)
            return
        task_status.started()  # the tree (API, signals, secrets' retries) goes on meanwhile
        self.log.warning(
            "services_waiting_for_secrets",
            missing=[entry["name"] for entry in self.secrets.waiting_for()] if self.secrets else [],
        )
        await ready.wait()
        self.log.info("services_starting", why="required secrets available")
        await self.services.run(ctx)

    async def _watch_secret_changes(
        self, ctx: ChildContext, *, task_status: trio.TaskStatus[Any]
    ) -> None:
        """Apply each service's ``on_secret_change`` when the injector rewrote files."""
        with self.bus.subscribe(accept=lambda e: e.event.kind == "secrets_injected") as changes:
            task_status.started()
            async for _ in changes:
                if self.services.snapshot().state is not ChildState.RUNNING:
                    continue  # services still waiting or starting: they read the new files
                for name, service in self.config.services.items():
                    # A service an operator stopped is left alone by its process actor: it
                    # reads the new files at its start.
                    if service.on_secret_change == "restart":
                        # Not a crash: never counted toward the service's intensity.
                        restart = RestartService(reason="secret", planned=True)
                        with contextlib.suppress(UnknownChild, ActorError):
                            await self.factory.ref(name).call(
                                restart, timeout=SECRET_RESTART_TIMEOUT
                            )
                    elif service.on_secret_change == "reload":
                        await send_signal_to_service(self.factory.ref(name), service.reload_signal)

    # -- reconfiguration (the reloader's pass) -----------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Ask the reloader to re-read the config file: answered with the plan, applied after.

        A refused file raises ``ConfigError`` and changes nothing; the progress of the pass is
        published as ``reload_started``, then ``reload_finished`` or ``reload_failed``.
        """
        assert self.reloader is not None
        accepted = await self.reloader.reload(timeout=RELOAD_ANSWER_TIMEOUT)
        return {
            "reload": accepted.reload,
            "queued": accepted.queued,
            **accepted.plan.as_fields(),
        }

    async def _apply_config(self, old: Config, new: Config, plan: ReloadPlan) -> None:
        """Make the tree match ``new`` (the reloader's pass): added services start, removed ones
        stop, changed ones are replaced (stopped, then started with the new settings), unchanged
        ones keep running untouched. Each step may take a service's whole stop or start."""
        probed = {node.name for node in self.probers.children()}
        for name in plan.removed + plan.changed:
            if name in probed:
                with contextlib.suppress(UnknownChild):
                    await self.probers.remove_child(name, timeout=_step_timeout(old, name))
                self.health.remove(name)
            with contextlib.suppress(UnknownChild):  # gone already (a pass that failed midway)
                await self.services.remove_child(name, timeout=_step_timeout(old, name))
            # Its process actor goes too: a changed service gets a new one (an operator's stop
            # does not outlive the change: a reload that changes a service starts it).
            with contextlib.suppress(UnknownChild):
                await self.process_actors.remove_child(
                    actor_child(name), timeout=_step_timeout(old, name)
                )
        for name in plan.changed + plan.added:
            await self._add_service(name, new)
        for name in plan.removed:
            self.factory.forget(name)
        await set_watched_ports(
            self.tracker.ref,
            self.bus,
            {name: self.factory.effective(name, new).ports for name in enabled_services(new)},
            timeout=TRACKER_CALL_TIMEOUT,
        )
        self._set_resource_limits(new)
        self.config = new
        self.log.info("config_reloaded", **plan.as_fields())

    async def _add_service(self, name: str, config: Config) -> None:
        timeout = _step_timeout(config, name)
        if name in {node.name for node in self.services.children()}:
            # Left by a pass that failed midway: replaced, as a changed service is.
            await self.services.remove_child(name, timeout=timeout)
        if actor_child(name) in {node.name for node in self.process_actors.children()}:
            await self.process_actors.remove_child(actor_child(name), timeout=timeout)
        # The actor first: the process's life finds it at its start.
        await self.process_actors.add_child(
            self.factory.actor_spec(name, config, self.services), timeout=timeout
        )
        await self.services.add_child(self.factory.process_spec(name, config), timeout=timeout)
        prober = self.factory.prober_spec(name, config, self.hearing)
        if prober is not None:
            with contextlib.suppress(ChildExists):
                await self.probers.add_child(prober, timeout=timeout)
