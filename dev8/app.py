"""Composition: build the supervision tree from the config and run dev8 as a container's init.

    dev8 (root, one_for_one; children start in this order, stop in reverse)
    ├── process-actors   supervisor: one process actor per service, at dev8/services/<name>
    ├── api              the Quart-Trio app on Hypercorn
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

Around the tree, outside it, the init duties: the orphan reaper, acting on the signals the
catcher holds (shutdown, reload, ignore; none is forwarded), and the shutdown sequence (stop the
tree in reverse order, sweep what is left, exit with a code: ExitCode).
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import os
import random
from typing import Any

import attrs
import structlog
import trio

from actors import (
    ActorError,
    CallTimeout,
    ChildContext,
    ChildExists,
    ChildSpec,
    ChildState,
    Envelope,
    Escalation,
    EventBus,
    Intensity,
    Mailbox,
    Registry,
    Supervisor,
    UnknownChild,
)
from dev8.config import (
    Config,
    ConfigError,
    TcpBind,
    UnixBind,
)
from dev8.config.binds import LOOPBACK_HOSTS
from dev8.connections.idle import make_idle_spec
from dev8.connections.tracker import ConnectionTracker, set_watched_ports
from dev8.control import Control, Hooks
from dev8.health.probers import HealthBoard, ServiceHearing
from dev8.monitoring.alerts import make_alerts_spec
from dev8.monitoring.logs import LineWriter, log_event
from dev8.monitoring.webhooks import WebhookNotifier, make_webhooks_spec
from dev8.pid1.exit_codes import ExitCode
from dev8.pid1.reaper import (
    OwnPids,
    become_subreaper,
    final_sweep,
    is_pid1,
    raise_fd_limit,
    run_reaper,
)
from dev8.pid1.signals import (
    RELOAD_SIGNALS,
    SHUTDOWN_SIGNALS,
    SignalCatcher,
    signal_name,
)
from dev8.reload import Reloader, ReloadPlan
from dev8.resources.cgroups import CgroupFiles
from dev8.resources.sampler import OomKilled, ResourceBoard, SampleNow, make_sampler_spec
from dev8.secrets.runtime import Secrets
from dev8.services.factory import ServiceFactory, intensity_of, send_signal_to_service
from dev8.services.process import Restart as RestartService
from dev8.services.process import actor_child
from dev8.services.storage import placement, prepare_strict_home

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


def api_is_private(config: Config) -> bool:
    """Loopback or a Unix socket: changes may be made without a token."""
    bind = config.api.bind
    if isinstance(bind, UnixBind):
        return True
    assert isinstance(bind, TcpBind)
    if bind.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.host).is_loopback
    except ValueError:
        return False


def read_token(config: Config) -> str | None:
    if config.api.token_file is None:
        return None
    with open(config.api.token_file, encoding="utf-8") as handle:
        token = handle.read().strip()
    return token or None


def api_auth_problem(config: Config) -> str | None:
    """Why dev8 must not start with this API setting (one line), or None.

    Beyond loopback, the API needs a token unless ``api.insecure_no_auth`` says otherwise.
    """
    try:
        token = read_token(config)
    except OSError as error:
        return f"api.token_file: cannot read {config.api.token_file}: {error.strerror}"
    if token is None and not api_is_private(config) and not config.api.insecure_no_auth:
        return (
            f"api.bind {config.api.bind} listens beyond loopback without a token: set "
            "api.token_file (a file holding the token), or api.insecure_no_auth: true "
            "to serve everyone on that network"
        )
    return None


def api_allowed_hosts(config: Config) -> frozenset[str] | None:
    """The Host names the API answers to (None: any); see ``ApiConfig.allowed_hosts``."""
    extra = {host.lower() for host in config.api.allowed_hosts}
    if "*" in extra or (not extra and not api_is_private(config)):
        return None
    return LOOPBACK_HOSTS | extra


#: dev8's own OOM score as PID 1: the last the kernel picks (-1000 would make it unkillable,
#: and a leak in dev8 would then take every other process instead).
DEV8_OOM_SCORE_ADJ = -999


def protect_from_oom_killer(log: Any) -> None:
    """Under memory pressure the kernel kills the user's processes before dev8 (see
    ``services.BUILTIN_OOM_SCORE_ADJ``); services get their own scores through ``choom``."""
    try:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as handle:
            handle.write(str(DEV8_OOM_SCORE_ADJ))
    except OSError as error:
        log.warning("oom_score_adj_unset", error=error.strerror)


class Dev8:
    """One run of dev8: the tree, the bus and the init duties around them."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        rng: random.Random | None = None,
        signals: SignalCatcher | None = None,
        log_output: LineWriter | None = None,
    ) -> None:
        """`signals`: a catcher installed before the imports (`dev8 run`); else run() installs
        one for its own duration."""
        self.config = config
        self._signals = signals
        self._log_output = log_output
        self.config_path = config_path
        self.bus = EventBus(history=2000)
        self.bus.add_listener(log_event)
        self.own = OwnPids()
        self.rng = rng or random.Random()  # noqa: S311 - backoff jitter
        self.log = structlog.get_logger("dev8")
        self.shutdown_requested = trio.Event()
        self.force = trio.Event()
        self.exit_code = ExitCode.OK
        self._app: Any = None
        self._api_sockets: Any = None  # BoundApi, once run() bound them
        self.control: Control | None = None

        # Blocking (a probe file), so here, before trio runs.
        self.placement = placement(config.workspace.dir, as_root=os.geteuid() == 0)
        self._storage_error: str | None = None
        if self.placement.relocated:
            try:
                prepare_strict_home(
                    self.placement, config.workspace.user, config.secrets.github_host
                )
            except (OSError, KeyError) as e:
                self._storage_error = f"{type(e).__name__}: {e}"
        #: Live actors by path (``dev8/services/<name>``, ``dev8/secrets``, ``dev8/reloader``…):
        #: callers hold addresses, not objects.
        self.registry = Registry()
        self.secrets = Secrets.build(
            config,
            publish=self.bus.publish,
            home=self.placement.credentials_home,
            registry=self.registry,
        )
        self.health = HealthBoard()
        # Blocking (reads /proc/self), so here, before trio runs.
        self.cgroup = CgroupFiles.detect()
        self.factory = ServiceFactory(
            own=self.own,
            health=self.health,
            registry=self.registry,
            bus=self.bus,
            services_path="dev8/services",
            get_secret=self.secrets.get if self.secrets else None,
            custom_env=self.secrets.injector.custom_env if self.secrets else None,
            placement=self.placement,
            cgroup=self.cgroup,
            cgroup_parent=f"dev8-{os.getpid()}-{os.urandom(4).hex()}",
        )
        enabled = [name for name, service in config.services.items() if service.enabled]
        self.services, self.process_actors, self.probers = self._service_branches(config, enabled)
        self.tracker = ConnectionTracker(
            self.registry,
            {name: self.factory.effective(name, config).ports for name in enabled},
            path=TRACKER_PATH,
            interval=config.connections.interval,
            websocket_clients=lambda: self.control.websocket_clients if self.control else 0,
        )
        self.resources = ResourceBoard(
            memory_threshold=config.resources.memory_threshold,
            cpu_threshold=config.resources.cpu_threshold,
        )
        self._set_resource_limits(config)
        self.resources_mailbox = Mailbox[SampleNow]("resources", capacity=16)
        self.bus.add_listener(self._count_oom_kills)
        children = [
            # First: the services' addresses exist before anything can call them (its boot
            # spawns nothing), and the services' supervisor starts as early as before.
            self.process_actors.child_spec(),
            ChildSpec(name="api", start=self._start_api, shutdown_timeout=3.0, start_timeout=10.0),
        ]
        children += self._alert_specs(config)
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
            bus=self.bus,
            intensity=Intensity(max_restarts=10, window=60.0),
            rng=self.rng,
        )

    def _alert_specs(self, config: Config) -> list[ChildSpec]:
        """Alerts, webhooks and idle: before what they watch, so they see it from its first event.

        The webhooks' key files were checked by the pre-flight (dev8.services.preflight); read here,
        before trio runs.
        """
        self.webhooks = WebhookNotifier.from_config(
            config.alerts.webhooks, environment_id=config.environment_id
        )
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

    def _set_resource_limits(self, config: Config) -> None:
        enabled = {n: s for n, s in config.services.items() if s.enabled}
        self.resources.set_limits(
            {n: s.limits.memory for n, s in enabled.items()},
            {n: s.limits.cpu for n, s in enabled.items()},
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

    def _service_branches(
        self, config: Config, enabled: list[str]
    ) -> tuple[Supervisor, Supervisor, Supervisor]:
        """The services' supervisor, their process actors' and their probers'."""
        services = Supervisor(
            "services",
            [self.factory.process_spec(name, config) for name in enabled],
            bus=self.bus,
            intensity=intensity_of(config.supervisor.intensity),
            rng=self.rng,
            # Services do not depend on each other: stopping them one by one only adds up
            # their stop timeouts.
            parallel_shutdown=True,
        )
        self.factory.services = services
        self.factory.hearing = ServiceHearing(self.bus, services)
        process_actors = Supervisor(
            "process-actors",
            [self.factory.actor_spec(name, config) for name in enabled],
            bus=self.bus,
            intensity=intensity_of(config.supervisor.intensity),
            rng=self.rng,
            parallel_shutdown=True,
        )
        probers = [self.factory.prober_spec(name, config) for name in enabled]
        probers_supervisor = Supervisor(
            "health", [spec for spec in probers if spec is not None], bus=self.bus, rng=self.rng
        )
        return services, process_actors, probers_supervisor

    def _count_oom_kills(self, envelope: Envelope) -> None:
        event = envelope.event
        if isinstance(event, OomKilled) and event.service is not None:
            self.resources.count_oom_kill(event.service)

    async def _start_api(self, ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        from dev8.api import serve_api  # noqa: PLC0415 - see run()

        assert self._api_sockets is not None
        await serve_api(ctx, self._app, self._api_sockets, task_status=task_status)

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

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> int:
        pid1 = is_pid1()
        subreaper = False if pid1 else become_subreaper()
        fds_before, fds = raise_fd_limit()
        if pid1:
            protect_from_oom_killer(self.log)
        self.log.info("dev8_starting", pid=os.getpid(), pid1=pid1, subreaper=subreaper, max_fds=fds)
        if fds_before != fds:
            self.log.info("fd_limit_raised", soft_before=fds_before, soft=fds)
        storage = self.placement.storage.to_status()
        if self.placement.relocated:
            storage["strictFilesIn"] = str(self.placement.credentials_home.parent)
        self.log.info("storage_detected", storage=storage)
        if self._storage_error is not None:
            self.log.error("storage_prepare_failed", error=self._storage_error)
        control = Control(
            bus=self.bus,
            root=self.root,
            services=self.services,
            environment_id=self.config.environment_id,
            user_id=self.config.user_id,
            registry=self.registry,
            hooks=Hooks(
                reload=self.reload if self.reloader is not None else None,
                refresh_secrets=self.secrets.refresh if self.secrets else None,
                readiness=self.health.readiness,
                service_details=self.health.details,
                connections=self.tracker.snapshot,
                secrets=self.secrets.status if self.secrets else None,
                log_output=self._log_output.stats if self._log_output else None,
                storage=lambda: storage,
                resources=self.resources.snapshot,
                resources_interval=self.config.resources.interval,
                secrets_waiting=self.secrets.waiting_for if self.secrets else None,
                secrets_stats=self.secrets.stats if self.secrets else None,
                probe_stats=self.health.probe_stats,
                ssh_failed_auth=lambda: self.factory.ssh_failed_auth.count,
                vscode_sessions=self._vscode_sessions,
                webhook_stats=lambda: self.webhooks.stats,
            ),
            supervisors=[self.root, self.process_actors, self.services, self.probers],
        )
        self.control = control
        # The web stack (Quart, Hypercorn: about half of start-up's imports) is loaded here, by
        # `dev8 run` only: operator commands and `dev8 config check` never pay for it.
        from dev8.api import bind_api, create_app  # noqa: PLC0415

        token = read_token(self.config)
        self._app = create_app(
            control,
            token=token,
            open_changes=api_is_private(self.config) or self.config.api.insecure_no_auth,
            chaos=self.config.chaos.enabled,
            allowed_hosts=api_allowed_hosts(self.config),
            allowed_origins=self.config.api.allowed_origins,
        )
        root_ctx = ChildContext(name="dev8", path="dev8", attempt=0, publish=self.bus.publish)
        tree_done = trio.Event()
        own_catcher = self._signals is None
        catcher = self._signals or SignalCatcher().install()
        try:
            # Bound before the tree starts: a port in use is one error (ApiBindError), raised here.
            probe_bind = self.config.api.probe_bind
            self._api_sockets = await bind_api(
                str(self.config.api.bind), None if probe_bind is None else str(probe_bind)
            )
            return await self._run(root_ctx, tree_done, catcher, task_status)
        finally:
            if self._api_sockets is not None:
                self._api_sockets.close()
            catcher.attach(None)
            if own_catcher:
                catcher.restore()

    async def _run(
        self,
        root_ctx: ChildContext,
        tree_done: trio.Event,
        catcher: SignalCatcher,
        task_status: trio.TaskStatus[Any],
    ) -> int:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_reaper, self.own)
            # Signals that arrived during the start-up are acted on before the tree starts.
            await nursery.start(self._watch_signals, nursery, catcher)
            tree_scope = trio.CancelScope()

            async def run_tree(*, task_status: trio.TaskStatus[None]) -> None:
                try:
                    with tree_scope:
                        await self.root.run(root_ctx, task_status=task_status)
                except Escalation as escalation:
                    self.exit_code = (
                        ExitCode.CRITICAL_SERVICE_FAILED
                        if escalation.final
                        else ExitCode.RESTART_INTENSITY_EXCEEDED
                    )
                    self.log.error("dev8_tree_failed", reason=str(escalation))
                finally:
                    tree_done.set()
                    self.shutdown_requested.set()

            if self.shutdown_requested.is_set():
                tree_done.set()  # asked to stop before anything started: nothing to start
            else:
                await nursery.start(run_tree)
            # What exists now (modules, classes, the tree) lives as long as dev8: keep it out
            # of the garbage collector's full passes, which otherwise stall the loop for ms.
            gc.collect()
            gc.freeze()
            self.log.info(
                "dev8_ready", api=str(self.config.api.bind), services=self.services_names()
            )
            task_status.started()
            await self.shutdown_requested.wait()
            await self._shutdown(tree_scope, tree_done, root_ctx)
            nursery.cancel_scope.cancel()
        self.log.info("dev8_exit", exit_code=int(self.exit_code))
        return int(self.exit_code)

    async def _shutdown(
        self, tree_scope: trio.CancelScope, tree_done: trio.Event, root_ctx: ChildContext
    ) -> None:
        """Stop the tree in reverse order within the deadline, then sweep what is left."""
        deadline = self.config.shutdown.timeout
        self.log.info("dev8_shutdown", deadline=deadline)
        with trio.move_on_after(deadline) as graceful:
            tree_scope.cancel()
            async with trio.open_nursery() as waiters:

                async def forced() -> None:
                    await self.force.wait()
                    graceful.cancel()

                waiters.start_soon(forced)
                await tree_done.wait()
                waiters.cancel_scope.cancel()
        forced_now = not tree_done.is_set()
        if forced_now:
            self.log.warning("dev8_shutdown_forced", deadline_passed=graceful.cancelled_caught)
            root_ctx.kill_cleanup()
        grace = 0.0 if forced_now else self.config.shutdown.kill_grace
        swept = await final_sweep(grace=grace, own=self.own)
        if swept:
            self.log.info("dev8_swept", processes=swept)
        with trio.move_on_after(5.0):
            await tree_done.wait()

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
            {
                name: self.factory.effective(name, new).ports
                for name, service in new.services.items()
                if service.enabled
            },
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
        await self.process_actors.add_child(self.factory.actor_spec(name, config), timeout=timeout)
        await self.services.add_child(self.factory.process_spec(name, config), timeout=timeout)
        prober = self.factory.prober_spec(name, config)
        if prober is not None:
            with contextlib.suppress(ChildExists):
                await self.probers.add_child(prober, timeout=timeout)

    def _vscode_sessions(self) -> int:
        """Established client connections to the code-server services (dev8's probes left out)."""
        return sum(
            self.tracker.published.count(name)
            for name, service in self.config.services.items()
            if service.enabled and service.builtin == "code-server"
        )

    def services_names(self) -> list[str]:
        return [node.name for node in self.services.children()]

    async def _reload_on_signal(self) -> None:
        if self.reloader is None:
            self.log.warning("reload_unavailable", why="dev8 was not started from a config file")
            return
        try:
            await self.reload()
        except ConfigError as error:
            self.log.error("reload_rejected", error=str(error))
        except CallTimeout as error:  # its mailbox stayed full: this one signal is dropped
            self.log.error("reload_dropped", error=str(error))
        except Exception as error:  # PID 1 never ends because a reload failed
            self.log.exception("reload_dropped", error=f"{type(error).__name__}: {error}")

    async def _watch_signals(
        self,
        nursery: trio.Nursery,
        catcher: SignalCatcher,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Act on every delivery, in order: two SIGTERMs are two, however close together."""
        token = trio.lowlevel.current_trio_token()
        arrived = trio.Event()

        def wake() -> None:
            arrived.set()

        def notify() -> None:  # in the signal handler: only hand over to the trio thread
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(wake)

        catcher.attach(notify)
        for number in catcher.take():
            self._act_on_signal(number, nursery, early=True)
        task_status.started()
        while True:
            arrived = trio.Event()
            for number in catcher.take():
                self._act_on_signal(number, nursery)
            await arrived.wait()

    def _act_on_signal(self, number: int, nursery: trio.Nursery, *, early: bool = False) -> None:
        name = signal_name(number)
        extra = {"early": True} if early else {}
        if number in RELOAD_SIGNALS:
            self.log.info("signal_received", signal=name, action="reload", **extra)
            nursery.start_soon(self._reload_on_signal)
        elif number not in SHUTDOWN_SIGNALS:
            self.log.info("signal_received", signal=name, action="ignored", **extra)
        elif not self.shutdown_requested.is_set():
            self.log.info("signal_received", signal=name, action="shutdown", **extra)
            self.shutdown_requested.set()
        else:
            self.log.warning("signal_received", signal=name, action="kill", **extra)
            self.force.set()
