"""dev8 as a container's init: runs the supervision tree (``dev8.tree``) and the duties around it.

The tree is composed by ``dev8.tree`` (its docstring draws it); here it gets the API (the app on
sockets bound before the tree starts). Around the tree, outside it, the init duties: the orphan
reaper, acting on the signals the catcher holds (shutdown, reload, ignore; none is forwarded),
and the shutdown sequence (stop the tree in reverse order, sweep what is left, exit with a
code: ExitCode).
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import os
import random
from typing import TYPE_CHECKING, Any

import structlog
import trio

from actors import CallTimeout, ChildContext, Escalation, EventBus
from dev8.config import (
    Config,
    ConfigError,
    TcpBind,
    UnixBind,
)
from dev8.config.binds import LOOPBACK_HOSTS
from dev8.control import ClientCount, Control, Hooks
from dev8.monitoring.logs import LineWriter, log_event
from dev8.pid1.collector import restore_collector
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
from dev8.tree import Tree, TreeInputs

if TYPE_CHECKING:
    from dev8.api import BoundApi


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
    """One run of dev8: the bus, the tree (``dev8.tree``) and the init duties around them."""

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
        # Blocking (files, /proc, the user database), so here, before trio runs.
        self.tree_inputs = TreeInputs.read(config, self.bus)

    def _compose(
        self, api_sockets: BoundApi, *, token: str | None, storage: dict[str, Any]
    ) -> Tree:
        """The tree, the API's view of it (``Control``) and the app, in that order."""
        # The web stack (Quart, Hypercorn: about half of start-up's imports) is loaded here, by
        # `dev8 run` only: operator commands and `dev8 config check` never pay for it.
        from dev8.api import create_app, serve_api  # noqa: PLC0415

        async def serve(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
            # The API serves the tree it is a child of: `app` is made below from the tree,
            # before the tree runs.
            await serve_api(ctx, app, api_sockets, task_status=task_status)

        websocket_clients = ClientCount()
        tree = Tree(
            self.config,
            self.tree_inputs,
            bus=self.bus,
            own=self.own,
            rng=self.rng,
            api=serve,
            websocket_clients=websocket_clients,
            config_path=self.config_path,
        )
        secrets, webhooks = tree.secrets, tree.webhooks
        control = Control(
            bus=self.bus,
            root=tree.root,
            services=tree.services,
            environment_id=self.config.environment_id,
            user_id=self.config.user_id,
            registry=tree.registry,
            hooks=Hooks(
                reload=tree.reload if tree.reloader is not None else None,
                refresh_secrets=secrets.refresh if secrets else None,
                readiness=tree.health.readiness,
                service_details=tree.health.details,
                connections=tree.tracker.snapshot,
                secrets=secrets.status if secrets else None,
                log_output=self._log_output.stats if self._log_output else None,
                storage=lambda: storage,
                resources=tree.resources.snapshot,
                resources_interval=self.config.resources.interval,
                secrets_waiting=secrets.waiting_for if secrets else None,
                secrets_stats=secrets.stats if secrets else None,
                probe_stats=tree.health.probe_stats,
                ssh_failed_auth=lambda: tree.factory.ssh_failed_auth.count,
                vscode_sessions=tree.vscode_sessions,
                webhook_stats=lambda: webhooks.stats,
            ),
            supervisors=tree.supervisors,
            websocket_clients=websocket_clients,
        )
        app = create_app(
            control,
            token=token,
            open_changes=api_is_private(self.config) or self.config.api.insecure_no_auth,
            chaos=self.config.chaos.enabled,
            allowed_hosts=api_allowed_hosts(self.config),
            allowed_origins=self.config.api.allowed_origins,
        )
        return tree

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> int:
        pid1 = is_pid1()
        subreaper = False if pid1 else become_subreaper()
        fds_before, fds = raise_fd_limit()
        if pid1:
            protect_from_oom_killer(self.log)
        self.log.info("dev8_starting", pid=os.getpid(), pid1=pid1, subreaper=subreaper, max_fds=fds)
        if fds_before != fds:
            self.log.info("fd_limit_raised", soft_before=fds_before, soft=fds)
        placed = self.tree_inputs.placement
        storage = placed.storage.to_status()
        if placed.relocated:
            storage["strictFilesIn"] = str(placed.credentials_home.parent)
        self.log.info("storage_detected", storage=storage)
        if self.tree_inputs.storage_error is not None:
            self.log.error("storage_prepare_failed", error=self.tree_inputs.storage_error)
        from dev8.api import bind_api  # noqa: PLC0415 - see _compose()

        token = read_token(self.config)
        root_ctx = ChildContext(name="dev8", path="dev8", attempt=0, publish=self.bus.publish)
        tree_done = trio.Event()
        own_catcher = self._signals is None
        catcher = self._signals or SignalCatcher().install()
        api_sockets: BoundApi | None = None
        try:
            # Bound before the tree starts: a port in use is one error (ApiBindError), raised here.
            probe_bind = self.config.api.probe_bind
            api_sockets = await bind_api(
                str(self.config.api.bind), None if probe_bind is None else str(probe_bind)
            )
            tree = self._compose(api_sockets, token=token, storage=storage)
            return await self._run(tree, root_ctx, tree_done, catcher, task_status)
        finally:
            if api_sockets is not None:
                api_sockets.close()
            catcher.attach(None)
            if own_catcher:
                catcher.restore()

    async def _run(
        self,
        tree: Tree,
        root_ctx: ChildContext,
        tree_done: trio.Event,
        catcher: SignalCatcher,
        task_status: trio.TaskStatus[Any],
    ) -> int:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_reaper, self.own)
            # Signals that arrived during the start-up are acted on before the tree starts.
            await nursery.start(self._watch_signals, nursery, catcher, tree)
            tree_scope = trio.CancelScope()

            async def run_tree(*, task_status: trio.TaskStatus[None]) -> None:
                try:
                    with tree_scope:
                        await tree.root.run(root_ctx, task_status=task_status)
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
            restore_collector()  # dev8.__main__ deferred the old generations until now
            self.log.info(
                "dev8_ready", api=str(self.config.api.bind), services=tree.services_names()
            )
            task_status.started()
            await self.shutdown_requested.wait()
            # The shutdown section of the config in force (a reload may have changed it).
            await self._shutdown(tree.config, tree_scope, tree_done, root_ctx)
            nursery.cancel_scope.cancel()
        self.log.info("dev8_exit", exit_code=int(self.exit_code))
        return int(self.exit_code)

    async def _shutdown(
        self,
        config: Config,
        tree_scope: trio.CancelScope,
        tree_done: trio.Event,
        root_ctx: ChildContext,
    ) -> None:
        """Stop the tree in reverse order within the deadline, then sweep what is left."""
        deadline = config.shutdown.timeout
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
        grace = 0.0 if forced_now else config.shutdown.kill_grace
        swept = await final_sweep(grace=grace, own=self.own)
        if swept:
            self.log.info("dev8_swept", processes=swept)
        with trio.move_on_after(5.0):
            await tree_done.wait()

    async def _reload_on_signal(self, tree: Tree) -> None:
        if tree.reloader is None:
            self.log.warning("reload_unavailable", why="dev8 was not started from a config file")
            return
        try:
            await tree.reload()
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
        tree: Tree,
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
            self._act_on_signal(number, nursery, tree, early=True)
        task_status.started()
        while True:
            arrived = trio.Event()
            for number in catcher.take():
                self._act_on_signal(number, nursery, tree)
            await arrived.wait()

    def _act_on_signal(
        self, number: int, nursery: trio.Nursery, tree: Tree, *, early: bool = False
    ) -> None:
        name = signal_name(number)
        extra = {"early": True} if early else {}
        if number in RELOAD_SIGNALS:
            self.log.info("signal_received", signal=name, action="reload", **extra)
            nursery.start_soon(self._reload_on_signal, tree)
        elif number not in SHUTDOWN_SIGNALS:
            self.log.info("signal_received", signal=name, action="ignored", **extra)
        elif not self.shutdown_requested.is_set():
            self.log.info("signal_received", signal=name, action="shutdown", **extra)
            self.shutdown_requested.set()
        else:
            self.log.warning("signal_received", signal=name, action="kill", **extra)
            self.force.set()
