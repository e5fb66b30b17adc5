"""Mailboxes and actor references: bounded delivery, and request/reply with a deadline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import outcome
import trio

M = TypeVar("M")
R = TypeVar("R")


class MailboxFull(Exception):
    """``send_nowait`` found the mailbox full."""


class CallTimeout(TimeoutError):
    """A ``call`` got no reply in time."""


class Reply(Generic[R]):
    """The answer side of a ``call``, carried inside the request message.

    Answering never raises: if the caller has given up, the answer is dropped, because the actor
    must not be punished for a caller's timeout.
    """

    def __init__(self, channel: trio.MemorySendChannel[outcome.Outcome[R]]) -> None:
        self._channel = channel

    def send(self, value: R) -> None:
        self._deliver(outcome.Value(value))

    def fail(self, error: Exception) -> None:
        self._deliver(outcome.Error(error))

    def _deliver(self, result: outcome.Outcome[R]) -> None:
        try:
            self._channel.send_nowait(result)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            pass  # the caller gave up, or an answer was already sent
        finally:
            self._channel.close()


class ActorRef(Generic[M]):
    """How the rest of the program reaches an actor. Stable across the actor's restarts."""

    def __init__(self, name: str, channel: trio.MemorySendChannel[M]) -> None:
        self.name = name
        self._channel = channel

    def __repr__(self) -> str:
        return f"<ActorRef {self.name}>"

    async def send(self, message: M) -> None:
        """Deliver, waiting while the mailbox is full."""
        await self._channel.send(message)

    def send_nowait(self, message: M) -> None:
        try:
            self._channel.send_nowait(message)
        except trio.WouldBlock:
            raise MailboxFull(f"mailbox of {self.name} is full") from None

    async def call(self, request: Callable[[Reply[R]], M], *, timeout: float) -> R:
        """Send ``request(reply)`` and wait at most ``timeout`` seconds for the answer."""
        send, receive = trio.open_memory_channel[outcome.Outcome[R]](1)
        with receive:
            try:
                with trio.fail_after(timeout):
                    await self._channel.send(request(Reply(send)))
                    result = await receive.receive()
            except trio.TooSlowError:
                raise CallTimeout(f"{self.name} did not answer within {timeout}s") from None
            except trio.EndOfChannel:
                raise CallTimeout(f"{self.name} dropped the request unanswered") from None
        return result.unwrap()


class Mailbox(Generic[M]):
    """A bounded mailbox. It outlives restarts of its actor, so messages wait while it restarts."""

    def __init__(self, name: str, capacity: int = 64) -> None:
        send, self._receive = trio.open_memory_channel[M](capacity)
        self.ref = ActorRef(name, send)

    async def receive(self) -> M:
        return await self._receive.receive()

    def receive_nowait(self) -> M:
        return self._receive.receive_nowait()

    def __aiter__(self) -> Mailbox[M]:
        return self

    async def __anext__(self) -> M:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
