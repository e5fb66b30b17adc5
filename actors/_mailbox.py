"""Mailboxes: one incarnation's bounded inbox, request/reply with a deadline, clear failures.

A call never hangs: it fails with ``MailboxFull`` when the inbox is full, ``ActorExited`` when the
actor ends before answering (every pending reply is failed when its mailbox closes), and
``CallTimeout`` when the deadline passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs
import outcome
import trio

from ._exit import ExitReason

M = TypeVar("M")
R = TypeVar("R")


class ActorError(Exception):
    """Base of the errors a caller gets from an actor's address."""


class MailboxFull(ActorError):
    """The actor's mailbox holds ``capacity`` messages already: the message was not delivered."""


class CallTimeout(ActorError, TimeoutError):
    """A ``call`` got no reply in time (the actor is alive but busy or slow)."""


class ActorExited(ActorError):
    """The actor ended before it answered (or before the message could be delivered)."""

    def __init__(self, path: str, reason: ExitReason, error: str | None = None) -> None:
        why = f": {error}" if error else ""
        super().__init__(f"actor {path} exited ({reason.value}){why}")
        self.path = path
        self.reason = reason
        self.error = error


class ActorNotFound(ActorError, LookupError):
    """No live actor is registered at this path (never started, between restarts, or gone)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"no live actor at {path}")
        self.path = path


class Reply(Generic[R]):
    """The answer side of a ``call``, carried inside the request message.

    Answering never raises: if the caller has given up, the answer is dropped, because the actor
    must not be punished for a caller's timeout.
    """

    def __init__(
        self,
        channel: trio.MemorySendChannel[outcome.Outcome[R]],
        pending: set[Reply[Any]] | None = None,
    ) -> None:
        self._channel = channel
        self._pending = pending

    def send(self, value: R) -> None:
        self._deliver(outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        self._deliver(outcome.Error(error))

    def _deliver(self, result: outcome.Outcome[R]) -> None:
        if self._pending is not None:
            self._pending.discard(self)
        try:
            self._channel.send_nowait(result)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            pass  # the caller gave up, or an answer was already sent
        finally:
            self._channel.close()


@attrs.frozen
class MailboxStatistics:
    queued: int
    capacity: int
    pending_calls: int


class Mailbox(Generic[M]):
    """One incarnation's inbox, read by one loop.

    Messages from outside (``put_nowait``, ``call``) are bounded by ``capacity``; the actor's own
    notices (``put_internal``: a child's exit, a timer) are never refused, so the actor cannot lose
    news of its own tasks however busy its callers are. Both arrive in one order on one channel.
    """

    def __init__(self, path: str, capacity: int = 64) -> None:
        self.path = path
        self.capacity = capacity
        send, receive = trio.open_memory_channel[tuple[bool, M]](math.inf)
        self._send = send
        self._receive = receive
        self._queued = 0  # messages from outside, not yet received
        self._pending: set[Reply[Any]] = set()
        self._exited: ActorExited | None = None

    @property
    def closed(self) -> bool:
        return self._exited is not None

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(self._queued, self.capacity, len(self._pending))

    def put_nowait(self, message: M) -> None:
        """Deliver a message from outside, or fail at once (``MailboxFull``, ``ActorExited``)."""
        if self._exited is not None:
            raise ActorExited(self._exited.path, self._exited.reason, self._exited.error)
        if self._queued >= self.capacity:
            raise MailboxFull(f"mailbox of {self.path} is full ({self.capacity} messages)")
        self._send.send_nowait((True, message))
        self._queued += 1

    def put_internal(self, message: M) -> None:
        """Deliver the actor's own notice; dropped silently once the mailbox is closed."""
        if self._exited is None:
            self._send.send_nowait((False, message))

    async def call(self, request: Callable[[Reply[R]], M], *, timeout: float) -> R:
        """Deliver ``request(reply)`` and wait at most ``timeout`` seconds for the answer."""
        send, receive = trio.open_memory_channel[outcome.Outcome[R]](1)
        reply = Reply(send, self._pending)
        with receive:
            self.put_nowait(request(reply))
            self._pending.add(reply)
            try:
                with trio.fail_after(timeout):
                    result = await receive.receive()
            except trio.TooSlowError:
                self._pending.discard(reply)
                raise CallTimeout(f"{self.path} did not answer within {timeout}s") from None
            except trio.EndOfChannel:
                raise ActorError(f"{self.path} dropped the request unanswered") from None
        return result.unwrap()

    async def receive(self) -> M:
        external, message = await self._receive.receive()
        if external:
            self._queued -= 1
        return message

    def receive_nowait(self) -> M:
        external, message = self._receive.receive_nowait()
        if external:
            self._queued -= 1
        return message

    def close(self, reason: ExitReason, error: str | None = None) -> None:
        """The actor ended: fail every call waiting on it, refuse new messages, drop the rest."""
        if self._exited is not None:
            return
        self._exited = exited = ActorExited(self.path, reason, error)
        for reply in list(self._pending):
            reply.fail(ActorExited(exited.path, reason, error))
        self._pending.clear()
        self._send.close()
        while True:
            try:
                self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        self._queued = 0

    def __aiter__(self) -> Mailbox[M]:
        return self

    async def __anext__(self) -> M:
        try:
            return await self.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
