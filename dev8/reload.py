"""The reloader: a config reload is a message, answered at once and applied in its own task.

``Reload`` (from ``POST /reload`` or SIGHUP) reads and checks the file, answers with the plan
(services added, removed, changed, unchanged), and hands the new config to the applying task.
However long a service takes to stop, the caller is answered at once, and whatever goes wrong
while applying is an event (``reload_failed``), never an error that escapes the tree.

Reloads that arrive while one is being applied are **coalesced**: the next pass applies the
newest accepted file, once, covering all of them (``includes``). Each answer's plan is relative
to the config the reloads accepted before it leave in effect, so the plans of consecutive
answers add up to what the passes do.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

import attrs
import trio

from actors import Actor, ChildContext, Event, Refuse, Registry, Reply
from dev8.config import Config, load_config

#: Config sections that take effect only at dev8's next start.
RESTART_SECTIONS = (
    *("api", "workspace", "shutdown", "supervisor", "log", "secrets"),
    *("alerts", "idle", "resources"),
)
MAILBOX_CAPACITY = 16
#: Where the reloader lives in the tree (its address).
RELOADER_PATH = "dev8/reloader"


@attrs.frozen(kw_only=True)
class ReloadPlan:
    """What a new config changes, against the one it replaces."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    restart_required_for: tuple[str, ...]

    def as_fields(self) -> dict[str, list[str]]:
        return {key: list(value) for key, value in attrs.asdict(self).items()}


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Compare the enabled services, and the sections that a reload cannot apply."""
    before = {name: s for name, s in old.services.items() if s.enabled}
    after = {name: s for name, s in new.services.items() if s.enabled}
    changed = tuple(n for n in after if n in before and after[n] != before[n])
    return ReloadPlan(
        added=tuple(n for n in after if n not in before),
        removed=tuple(n for n in before if n not in after),
        changed=changed,
        unchanged=tuple(n for n in after if n in before and n not in changed),
        restart_required_for=tuple(
            section
            for section in RESTART_SECTIONS
            if getattr(new, section) != getattr(old, section)
        ),
    )


# -- events ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ReloadStarted(Event):
    """A pass began applying the newest accepted config."""

    kind: ClassVar[str] = "reload_started"
    reload: int
    #: The accepted reloads this pass covers (several when they were coalesced).
    includes: list[int]
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    restart_required_for: list[str]


@attrs.frozen(kw_only=True)
class ReloadFinished(Event):
    """A pass is done: the config it applied is in effect."""

    kind: ClassVar[str] = "reload_finished"
    reload: int
    includes: list[int]
    outcome: str  # applied
    added: list[str]
    removed: list[str]
    changed: list[str]
    duration: float


@attrs.frozen(kw_only=True)
class ReloadFailed(Event):
    """A pass stopped short: what it did stays done; the next reload applies the rest."""

    kind: ClassVar[str] = "reload_failed"
    reload: int
    includes: list[int]
    reason: str


# -- messages --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ReloadAccepted:
    """The answer to ``Reload``: its number, the plan, and whether a pass was already running."""

    reload: int
    queued: bool
    plan: ReloadPlan


@attrs.frozen(kw_only=True)
class Reload:
    """Call: re-read the config file (``path``, or the one dev8 was started with) and apply it;
    answered with ``ReloadAccepted`` once the file is read and checked, not once applied."""

    path: str | None = None


@attrs.frozen
class Status:
    """Call: how many reloads were accepted and applied, and whether a pass is running."""


@attrs.frozen
class _PassEnded:
    """Notice from the pass task to the loop: the pass is over (applied, failed or cancelled)."""


Apply = Callable[[Config, Config, ReloadPlan], Awaitable[None]]


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class Reloader(Actor):
    """The reloader actor, at ``dev8/reloader``. Its state outlives its restarts: a reload
    accepted before a crash is applied by the next incarnation.

    ``apply(old, new, plan)`` makes the tree match ``new``; ``load`` reads and checks the file
    (``ConfigError`` for a file that is refused: answered as such, nothing changes).
    """

    mailbox_capacity = MAILBOX_CAPACITY

    def __init__(
        self,
        config_path: str,
        current: Config,
        *,
        apply: Apply,
        load: Callable[[str], Config] = load_config,
        registry: Registry | None = None,
        path: str = RELOADER_PATH,
    ) -> None:
        super().__init__(registry if registry is not None else Registry(), path)
        self.config_path = config_path
        self._apply = apply
        self._load = load
        self._publish: Callable[[Event], None] = lambda _event: None
        #: The config in effect once every accepted reload is applied.
        self._target = current
        #: The config the last finished pass left in effect.
        self._applied = current
        self._accepted = 0
        self._covered = 0
        self._applying = False

    async def reload(self, *, timeout: float) -> ReloadAccepted:
        """Send ``Reload`` to this actor's address and wait for the answer."""
        accepted: ReloadAccepted = await self.ref.call(Reload(), timeout=timeout)
        return accepted

    def status(self) -> Mapping[str, Any]:
        return {
            "accepted": self._accepted,
            "applied": self._covered,
            "applying": self._applying,
        }

    async def run(
        self,
        ctx: ChildContext | None = None,
        *,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if ctx is not None:
            self._publish = ctx.publish
        await super().run(ctx, task_status=task_status)

    async def init(self) -> None:
        self._applying = False
        if self._accepted > self._covered:  # accepted before a restart of this actor: still to do
            self._start_pass()

    async def handle_call(self, message: Any, reply: Reply[Any]) -> Any:
        if isinstance(message, Status):
            return dict(self.status())
        if not isinstance(message, Reload):
            return await super().handle_call(message, reply)
        try:
            new = await trio.to_thread.run_sync(self._load, message.path or self.config_path)
        except Exception as error:  # ConfigError above all: the caller is told, nothing changes
            raise Refuse(error) from error
        plan = plan_reload(self._target, new)
        self._target = new
        self._accepted += 1
        queued = self._applying
        if not self._applying:
            self._start_pass()
        return ReloadAccepted(reload=self._accepted, queued=queued, plan=plan)

    async def handle_info(self, message: Any) -> None:
        if isinstance(message, _PassEnded):
            self._applying = False
            if self._accepted > self._covered:  # accepted while that pass ran: coalesced here
                self._start_pass()

    def _start_pass(self) -> None:
        self._applying = True
        self.start_soon(self._pass)

    async def _pass(self) -> None:
        try:
            await self._apply_once()
        finally:
            # Cancelled (this actor restarted, dev8 stopping): not covered, done again later.
            self.notify(_PassEnded())

    async def _apply_once(self) -> None:
        old, new, last = self._applied, self._target, self._accepted
        includes = list(range(self._covered + 1, last + 1))
        plan = plan_reload(old, new)
        self._publish(
            ReloadStarted(
                reload=last,
                includes=includes,
                added=list(plan.added),
                removed=list(plan.removed),
                changed=list(plan.changed),
                unchanged=list(plan.unchanged),
                restart_required_for=list(plan.restart_required_for),
            )
        )
        began = time.monotonic()
        try:
            await self._apply(old, new, plan)
        except Exception as error:  # a failed pass is an event, never a crash of the tree
            self._covered = last
            self._publish(ReloadFailed(reload=last, includes=includes, reason=_describe(error)))
            return
        self._covered = last
        self._applied = new
        self._publish(
            ReloadFinished(
                reload=last,
                includes=includes,
                outcome="applied",
                added=list(plan.added),
                removed=list(plan.removed),
                changed=list(plan.changed),
                duration=round(time.monotonic() - began, 3),
            )
        )
