"""The ``Actor`` behaviour, gen_server-like: one loop over one bounded mailbox.

A subclass says what it does with each kind of message:

- ``handle_call(message, reply)``: a request whose caller waits; its return value is the answer,
  unless it returns ``NO_REPLY`` and answers later through ``reply`` (OTP's ``{noreply, ...}`` and
  ``gen_server:reply``). Raising ``Refuse(error)`` answers with ``error`` and keeps the actor
  alive; any other exception crashes the actor, and its callers get ``ActorExited``.
- ``handle_cast(message)``: a notice from outside; nobody waits.
- ``handle_info(message)``: anything else, such as the actor's own timers (``send_after``) and
  the results its helper tasks report (``notify``).

It runs as a supervised child (``run(ctx, task_status=...)`` fits ``ChildSpec.start``), registers
its mailbox at its path once ``init`` has run, and closes it when it ends, failing every pending
call with the exit reason.
"""

from __future__ import annotations

from typing import Any, Final

import trio

from ._exit import ExitReason, describe
from ._mailbox import Mailbox, Reply
from ._registry import ActorRef, Call, Cast, Registry
from ._spec import ChildContext


class _NoReply:
    def __repr__(self) -> str:
        return "NO_REPLY"


#: Returned by ``handle_call`` that keeps the ``reply`` to answer later.
NO_REPLY: Final = _NoReply()


class Refuse(Exception):
    """Raised in ``handle_call`` to answer the caller with ``error`` without crashing."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class Actor:
    """Subclass and override the ``handle_*`` methods you need; see the module docstring."""

    #: How many messages from outside may wait in the mailbox before senders get ``MailboxFull``.
    mailbox_capacity: int = 64

    def __init__(self, registry: Registry, path: str | None = None) -> None:
        """``path`` defaults to the supervised child's path (``ctx.path``)."""
        self.registry = registry
        self._path = path
        self._mailbox: Mailbox[Any] | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: tuple[ExitReason, str | None] | None = None

    @property
    def path(self) -> str:
        assert self._path is not None, "an actor's path is known once it runs"
        return self._path

    @property
    def ref(self) -> ActorRef:
        return ActorRef(self.registry, self.path)

    # -- the behaviour -------------------------------------------------------------------------

    async def init(self) -> None:
        """Set up before the actor is registered and reported started."""

    async def handle_call(self, message: Any, reply: Reply[Any]) -> Any:
        raise Refuse(TypeError(f"{self.path} takes no call {type(message).__name__}"))

    async def handle_cast(self, message: Any) -> None:
        raise TypeError(f"{self.path} takes no cast {type(message).__name__}")

    async def handle_info(self, message: Any) -> None:
        """Unexpected notices are ignored, as OTP's default ``handle_info`` does (logged there)."""

    async def terminate(self, reason: ExitReason) -> None:
        """Clean up after the loop ended (runs shielded, bounded by one second)."""

    # -- helpers for the behaviour -----------------------------------------------------------------

    def stop(self, reason: ExitReason = ExitReason.NORMAL, error: str | None = None) -> None:
        """End the loop once the current message is handled."""
        self._stop = (reason, error)

    def notify(self, message: Any) -> None:
        """Deliver ``message`` to our own ``handle_info`` (never refused)."""
        assert self._mailbox is not None
        self._mailbox.put_internal(message)

    def send_after(self, delay: float, message: Any) -> trio.CancelScope:
        """A timer: ``message`` reaches ``handle_info`` after ``delay`` (cancel the scope: undo).

        The delay counts from this call, not from when the timer's task first runs.
        """
        assert self._nursery is not None
        scope = trio.CancelScope()
        mailbox = self._mailbox
        assert mailbox is not None
        deadline = trio.current_time() + delay

        async def timer() -> None:
            with scope:
                await trio.sleep_until(deadline)
                mailbox.put_internal(message)

        self._nursery.start_soon(timer)
        return scope

    def start_soon(self, function: Any, *args: Any) -> None:
        """Run a helper task that lives as long as this incarnation."""
        assert self._nursery is not None
        self._nursery.start_soon(function, *args)

    # -- running ---------------------------------------------------------------------------------

    async def run(
        self,
        ctx: ChildContext | None = None,
        *,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if self._path is None:
            if ctx is None:
                raise ValueError("an actor run outside a supervisor needs a path")
            self._path = ctx.path
        mailbox: Mailbox[Any] = Mailbox(self.path, self.mailbox_capacity)
        self._mailbox = mailbox
        self._stop = None
        reason, error = ExitReason.SHUTDOWN, None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.init()
                self.registry.register(self.path, mailbox)
                task_status.started()
                while self._stop is None:
                    await self._dispatch(await mailbox.receive())
                reason, error = self._stop
                nursery.cancel_scope.cancel()
        except Exception as failure:
            reason, error = ExitReason.ERROR, describe(failure)
            raise
        finally:
            self.registry.unregister(self.path, mailbox)
            mailbox.close(reason, error)
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await self.terminate(reason)
            self._nursery = None
        if reason.abnormal:
            raise ActorStopped(self.path, reason, error)

    async def _dispatch(self, envelope: Any) -> None:
        if isinstance(envelope, Call):
            reply = envelope.reply
            try:
                value = await self.handle_call(envelope.message, reply)
            except Refuse as refused:
                reply.fail(refused.error)
                return
            if value is not NO_REPLY:
                reply.send(value)
        elif isinstance(envelope, Cast):
            await self.handle_cast(envelope.message)
        else:
            await self.handle_info(envelope)


class ActorStopped(Exception):
    """An actor stopped itself with an abnormal reason: its supervisor sees a failure."""

    def __init__(self, path: str, reason: ExitReason, error: str | None) -> None:
        super().__init__(f"actor {path} stopped: {reason.value}" + (f": {error}" if error else ""))
        self.reason = reason
        self.error = error
