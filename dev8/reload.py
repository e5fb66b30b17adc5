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

from actors import ChildContext, Event, Mailbox, Reply

from .config import Config, load_config

#: Config sections that take effect only at dev8's next start.
RESTART_SECTIONS = (
    *("api", "workspace", "shutdown", "supervisor", "log", "secrets"),
    *("alerts", "idle", "resources"),
)
MAILBOX_CAPACITY = 16


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
    """Re-read the config file and apply it."""

    reply: Reply[ReloadAccepted]


Apply = Callable[[Config, Config, ReloadPlan], Awaitable[None]]


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class Reloader:
    """The reloader actor. Its mailbox and its state outlive its restarts.

    ``apply(old, new, plan)`` makes the tree match ``new``; ``load`` reads and checks the file
    (``ConfigError`` for a file that is refused: answered as such, nothing changes).
    """

    def __init__(
        self,
        path: str,
        current: Config,
        *,
        apply: Apply,
        load: Callable[[str], Config] = load_config,
    ) -> None:
        self.path = path
        self._apply = apply
        self._load = load
        self._mailbox: Mailbox[Reload] = Mailbox("reloader", MAILBOX_CAPACITY)
        #: The config in effect once every accepted reload is applied.
        self._target = current
        #: The config the last finished pass left in effect.
        self._applied = current
        self._accepted = 0
        self._covered = 0
        self._applying = False
        self._wanted = trio.Event()

    async def reload(self, *, timeout: float) -> ReloadAccepted:
        """Ask for a reload; answered once the file is read and checked, not once applied."""
        return await self._mailbox.call(lambda reply: Reload(reply=reply), timeout=timeout)

    def status(self) -> Mapping[str, Any]:
        return {
            "accepted": self._accepted,
            "applied": self._covered,
            "applying": self._applying,
        }

    async def run(self, ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._apply_passes, ctx)
            task_status.started()
            async for message in self._mailbox:
                await self._handle(message)

    async def _handle(self, message: Reload) -> None:
        try:
            new = await trio.to_thread.run_sync(self._load, self.path)
        except Exception as error:  # ConfigError above all: the caller is told, nothing changes
            message.reply.fail(error)
            return
        plan = plan_reload(self._target, new)
        self._target = new
        self._accepted += 1
        queued = self._applying
        self._wanted.set()
        message.reply.send(ReloadAccepted(reload=self._accepted, queued=queued, plan=plan))

    async def _apply_passes(self, ctx: ChildContext) -> None:
        if self._accepted > self._covered:
            self._wanted.set()  # accepted before a restart of this actor: still to do
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            await self._apply_once(ctx)

    async def _apply_once(self, ctx: ChildContext) -> None:
        old, new, last = self._applied, self._target, self._accepted
        includes = list(range(self._covered + 1, last + 1))
        plan = plan_reload(old, new)
        ctx.publish(
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
        self._applying = True
        try:
            await self._apply(old, new, plan)
        except Exception as error:  # a failed pass is an event, never a crash of the tree
            self._covered = last
            ctx.publish(ReloadFailed(reload=last, includes=includes, reason=_describe(error)))
            return
        finally:
            # Cancelled (this actor restarted, dev8 stopping): not covered, done again later.
            self._applying = False
        self._covered = last
        self._applied = new
        ctx.publish(
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
