"""The narrow interface through which the API reads and acts on the workspace.

The API never touches actors directly: it reads snapshots and the bus, and acts on a service by
messages to its process actor's address (``dev8/services/<name>``, see
``dev8.services.process``); what is left here is the API's own business (which services
exist, whether they may take commands yet).
The composition (``dev8.app``, over ``dev8.tree``) fills in the hooks that need more than the
tree (reload, secrets).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import attrs
import trio

import dev8
from actors import (
    ActorError,
    ActorRef,
    ChildState,
    EventBus,
    NodeStatus,
    Registry,
    Supervisor,
    UnknownChild,
)
from dev8 import documents
from dev8.secrets.errors import SecretsRefreshFailed
from dev8.services.process import Restart, Signal, Start, Stop, Tail, actor_path


class UnknownService(LookupError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown service {name!r}")
        self.name = name
        self.known = sorted(known)


class NotAvailable(Exception):
    """The feature asked for is not configured in this workspace."""


class ActionFailed(Exception):
    """An action ran and did not succeed: answered with ``status`` and ``document`` (an error
    document of dev8.documents, JSON-ready, holding no secret value), never a 500."""

    def __init__(self, status: int, document: Any) -> None:
        super().__init__(document.error.message)
        self.status = status
        self.document = document


#: How long an operator's stop, start or restart may take: the process actor takes them one
#: after another, each until its supervisor is done (a stop ladder, a start until ready).
ACTION_TIMEOUT = 900.0
#: How long a read from a process actor may take: it answers at once unless it is wedged.
READ_TIMEOUT = 10.0


#: Supervisor states in which the tree is alive (starting up or shutting down included).
_ALIVE = frozenset({ChildState.STARTING, ChildState.RUNNING, ChildState.STOPPING})


def _stopped_on_purpose(node: NodeStatus) -> bool:
    """Stopped after it ran (``stop``), not yet to be started (that one is not healthy yet)."""
    return node.state is ChildState.STOPPED and node.last_exit is not None


def format_uptime(seconds: float) -> str:
    """``2h30m15s``, the seed's shape; days are folded into hours."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@attrs.define
class Hooks:
    """What the composition provides beyond the tree; each may be absent."""

    reload: Callable[[], Awaitable[dict[str, Any]]] | None = None
    refresh_secrets: Callable[[], Awaitable[dict[str, Any]]] | None = None
    #: service name -> readiness; a service missing from it is ready when running.
    readiness: Callable[[], Mapping[str, bool]] | None = None
    #: extra per-service status (probe results, ...), merged into /status.
    service_details: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None
    connections: Callable[[], dict[str, Any]] | None = None
    secrets: Callable[[], dict[str, Any]] | None = None
    #: dev8's own stdout: lines written, dropped (a stalled or closed reader), last error.
    log_output: Callable[[], dict[str, Any]] | None = None
    #: the workspace's storage (dev8.services.storage): its kind and whether file modes hold.
    storage: Callable[[], dict[str, Any]] | None = None
    #: Required secrets the services still wait for ({name, reason, ...} each); [] once ready.
    secrets_waiting: Callable[[], list[dict[str, Any]]] | None = None
    #: The rotator's counters (a ``RotatorStats``), for /metrics.
    secrets_stats: Callable[[], Any] | None = None
    #: names of the services the workspace cannot take users without (/readyz); all when empty.
    critical: Callable[[], Collection[str]] | None = None
    #: Each probe's counters and durations (``dev8.health.probers.ProbeStats``), for /metrics.
    probe_stats: Callable[[], Iterable[Any]] | None = None
    #: Failed SSH authentications counted from sshd's log lines, for /metrics.
    ssh_failed_auth: Callable[[], int] | None = None
    #: Client connections to code-server (the connection tracker's), for /metrics.
    vscode_sessions: Callable[[], int] | None = None
    #: The webhook notifier's counters (a ``WebhookStats``), for /metrics.
    webhook_stats: Callable[[], Any] | None = None
    #: The resource sampler's figures (``ResourceBoard.snapshot``) and its interval.
    resources: Callable[[], dict[str, Any]] | None = None
    resources_interval: float = 10.0


@attrs.define
class ClientCount:
    """Connected event-stream websocket clients: counted by the API (``Control``), read by the
    connection tracker. Made before both, so each is given it whole."""

    value: int = 0

    def __call__(self) -> int:
        return self.value


class Control:
    """What the API may see and do."""

    def __init__(
        self,
        *,
        bus: EventBus,
        root: Supervisor,
        services: Supervisor,
        environment_id: str,
        user_id: str,
        registry: Registry | None = None,
        hooks: Hooks | None = None,
        supervisors: Sequence[Supervisor] = (),
        websocket_clients: ClientCount | None = None,
    ) -> None:
        """``registry``: where the services' process actors are found by path;
        ``websocket_clients``: the count the API keeps (shared with whoever reads it)."""
        self.bus = bus
        self.registry = registry if registry is not None else Registry()
        self.root = root
        self.services = services
        self.environment_id = environment_id
        self.user_id = user_id
        self.hooks = hooks or Hooks()
        self._websocket_clients = (
            websocket_clients if websocket_clients is not None else ClientCount()
        )
        #: Every supervisor of the tree (for fault injection by actor path).
        self.supervisors = list(supervisors) or [root, services]
        self.started_wall = time.time()
        self.started_clock = trio.current_time()

    # -- reading --------------------------------------------------------------------------

    @property
    def websocket_clients(self) -> int:
        """Connected event-stream websocket clients (the API counts them)."""
        return self._websocket_clients.value

    @websocket_clients.setter
    def websocket_clients(self, count: int) -> None:
        self._websocket_clients.value = count

    @property
    def boot_id(self) -> str:
        """New at every start of dev8 (the bus's): a client resuming across a restart resyncs."""
        return self.bus.boot_id

    def uptime(self) -> float:
        return trio.current_time() - self.started_clock

    def service_nodes(self) -> Mapping[str, NodeStatus]:
        return {node.name: node for node in self.services.children()}

    def service_names(self) -> list[str]:
        return list(self.service_nodes())

    def _node(self, name: str) -> NodeStatus:
        nodes = self.service_nodes()
        if name not in nodes:
            raise UnknownService(name, list(nodes))
        return nodes[name]

    def readiness(self) -> dict[str, bool]:
        probed = self.hooks.readiness() if self.hooks.readiness else {}
        return {
            name: node.state is ChildState.RUNNING and probed.get(name, True)
            for name, node in self.service_nodes().items()
        }

    def secrets_waiting(self) -> list[dict[str, Any]]:
        return self.hooks.secrets_waiting() if self.hooks.secrets_waiting else []

    def health(self) -> tuple[bool, dict[str, Any]]:
        """The seed's /health: a service stopped on purpose is ``"stopped"``, not unhealthy."""
        nodes = self.service_nodes()
        ready = self.readiness()
        waiting = self.secrets_waiting()
        healthy = not waiting and all(
            ready[name] for name, node in nodes.items() if not _stopped_on_purpose(node)
        )
        uptime = self.uptime()
        document = documents.HealthDocument(
            healthy=healthy,
            last_check=documents.timestamp_now(),
            services={name: node.state.value for name, node in nodes.items()},
            uptime=format_uptime(uptime),
            uptime_seconds=round(uptime, 3),
            waiting_for_secrets=documents.waiting_secrets(waiting),
        )
        return healthy, documents.to_jsonable(document)

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """/livez: dev8 and its tree are alive; a service's state never matters here.

        It fails only when a supervisor of the tree is no longer running (the tree gave up or
        is wedged): restarting the container is then the only way out.
        """
        # Services that wait for their required secrets have not started yet: that is a wait
        # with its own retries (/health names the secrets), not a wedged tree.
        waiting = bool(self.secrets_waiting())
        down = [
            supervisor.path
            for supervisor in self.supervisors
            if supervisor.snapshot().state not in _ALIVE
            and not (waiting and supervisor is self.services)
        ]
        document = documents.LivenessDocument(
            status="wedged" if down else "alive",
            boot_id=self.boot_id,
            reason="supervisor not running: " + ", ".join(down) if down else None,
        )
        return not down, documents.to_jsonable(document)

    def readyz(self) -> tuple[bool, dict[str, Any]]:
        """/readyz: the workspace can take users (its critical services, else all, are ready)."""
        ready = self.readiness()
        critical = set(self.hooks.critical()) if self.hooks.critical else set()
        wanted = [name for name in ready if name in critical] if critical else list(ready)
        not_ready = sorted(name for name in wanted if not ready[name])
        document = documents.ReadinessDocument(
            status="notReady" if not_ready else "ready", not_ready=not_ready
        )
        return not not_ready, documents.to_jsonable(document)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        ready = self.readiness()
        document = documents.ReadyDocument(ready=all(ready.values()), services=ready)
        return document.ready, documents.to_jsonable(document)

    def status_document(self) -> documents.StatusDocument:
        details = self.hooks.service_details() if self.hooks.service_details else {}
        ready = self.readiness()
        figures = self.hooks.resources() if self.hooks.resources is not None else {}
        services = {
            name: documents.service_document(
                node,
                ready=ready.get(name, False),
                probes=documents.probes_document(details.get(name)),
                resources=documents.service_resources(figures.get("services", {}).get(name)),
            )
            for name, node in self.service_nodes().items()
        }
        secrets = self.hooks.secrets() if self.hooks.secrets is not None else None
        log_output = self.hooks.log_output() if self.hooks.log_output is not None else None
        storage = self.hooks.storage() if self.hooks.storage is not None else None
        uptime = self.uptime()
        return documents.StatusDocument(
            version=dev8.__version__,
            pid=os.getpid(),
            boot_id=self.boot_id,
            environment_id=self.environment_id,
            user_id=self.user_id,
            started=documents.Timestamp(documents.timestamp(self.started_wall) or ""),
            uptime=format_uptime(uptime),
            uptime_seconds=round(uptime, 3),
            last_event=self.bus.last_seq,
            services=services,
            tree=documents.tree_node(self.root.snapshot()),
            secrets=None if secrets is None else documents.secrets_document(secrets),
            waiting_for_secrets=documents.waiting_secrets(self.secrets_waiting()),
            log_output=None if log_output is None else documents.LogOutputDocument(**log_output),
            storage=None if storage is None else documents.storage_document(storage),
            resources=documents.resources_document(figures, self.hooks.resources_interval)
            if figures
            else None,
        )

    def status(self) -> dict[str, Any]:
        """``GET /status`` as JSON-ready data (camelCase, every key present)."""
        data: dict[str, Any] = documents.to_jsonable(self.status_document())
        return data

    def connections(self) -> dict[str, Any]:
        if self.hooks.connections is None:
            snapshot: dict[str, Any] = {"services": {}, "websocketClients": self.websocket_clients}
        else:
            snapshot = self.hooks.connections()
        data: dict[str, Any] = documents.to_jsonable(documents.connections_document(snapshot))
        return data

    async def logs(self, name: str, lines: int, *, since: int = 0) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._ask(name, Tail(lines, since), READ_TIMEOUT)
        return found

    # -- acting ---------------------------------------------------------------------------------

    def _services_started(self) -> None:
        """While the services wait for required secrets their supervisor takes no commands."""
        waiting = self.secrets_waiting()
        if waiting and self.services.snapshot().state is not ChildState.RUNNING:
            names = ", ".join(str(entry.get("name")) for entry in waiting)
            raise ActionFailed(
                409,
                documents.WaitingErrorDocument(
                    error=documents.WaitingErrorDetail(
                        code="waiting_for_secrets",
                        message=f"the services have not started: they wait for required "
                        f"secret(s) {names}",
                        waiting_for_secrets=documents.waiting_secrets(waiting),
                    )
                ),
            )

    def service_ref(self, name: str) -> ActorRef:
        """The address of a service's process actor."""
        # The services' supervisor is a child of the root (its path is known before it runs).
        return ActorRef(self.registry, actor_path(f"{self.root.path}/{self.services.name}", name))

    async def _ask(self, name: str, message: object, timeout: float) -> Any:
        """A call to the service's process actor; ``ActorError`` (503) if it is between
        restarts, busy or gone, ``UnknownService`` (404) if there is no such service."""
        self._node(name)
        try:
            return await self.service_ref(name).call(message, timeout=timeout)
        except UnknownChild as error:  # removed by a reload while the request waited
            raise UnknownService(name, error.known) from None

    async def restart_service(self, name: str) -> NodeStatus:
        """An operator's restart: planned (outside the intensity and the backoff); ends a stop."""
        self._services_started()
        node: NodeStatus = await self._ask(name, Restart(), ACTION_TIMEOUT)
        return node

    async def stop_service(self, name: str) -> NodeStatus:
        """Stop a service; it stays stopped until a start, a restart or a reload that changes it
        (see ``dev8.services.process.Stop``)."""
        self._services_started()
        node: NodeStatus = await self._ask(name, Stop(), ACTION_TIMEOUT)
        return node

    async def start_service(self, name: str) -> NodeStatus:
        self._services_started()
        node: NodeStatus = await self._ask(name, Start(), ACTION_TIMEOUT)
        return node

    async def signal_service(self, name: str, sig: signal.Signals) -> int:
        """Have the service's process actor signal its process group; returns the group's id
        (``dev8.services.process.NotRunning`` when there is no process to signal)."""
        pid: int = await self._ask(name, Signal(sig), READ_TIMEOUT)
        return pid

    async def reload(self) -> dict[str, Any]:
        """Ask for a reload: answered with its plan once the file is checked, before it is
        applied (``ConfigError`` for a refused file)."""
        if self.hooks.reload is None:
            raise NotAvailable("reload needs dev8 to run from a config file")
        try:
            result = await self.hooks.reload()
        except ActorError:  # too slow to take it, its mailbox full, or between restarts
            raise ActionFailed(
                503,
                documents.error_document(
                    "reload_busy", "the reloader did not take the reload in time; try again"
                ),
            ) from None
        data: dict[str, Any] = documents.to_jsonable(documents.reload_document(result))
        return data

    async def refresh_secrets(self) -> dict[str, Any]:
        if self.hooks.refresh_secrets is None:
            raise NotAvailable("no secret provider is configured")
        try:
            reply = await self.hooks.refresh_secrets()
        except SecretsRefreshFailed as failure:
            raise ActionFailed(
                failure.status,
                documents.secrets_refresh_error(failure.code, failure.message, failure.details),
            ) from None
        data: dict[str, Any] = documents.to_jsonable(documents.secrets_refresh_document(reply))
        return data

    async def crash_actor(self, path: str) -> NodeStatus:
        """Fault injection: make the actor at ``path`` (``dev8/services/web``) fail."""
        parent_path, _, name = path.rpartition("/")
        for supervisor in self.supervisors:
            if supervisor.path == parent_path:
                try:
                    return await supervisor.crash_child(name)
                except UnknownChild:
                    break
        known = [node.path for node in self.root.snapshot().walk()][1:]
        raise UnknownService(path, known)
