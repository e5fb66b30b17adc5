"""Mailboxes: bounded delivery from outside, the actor's own notices never refused, and calls that
never hang (a reply, ``MailboxFull``, ``ActorExited`` or ``CallTimeout``), late replies dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import outcome
import pytest
import trio
import trio.testing

from actors import (
    ActorError,
    ActorExited,
    CallTimeout,
    ExitReason,
    Mailbox,
    MailboxFull,
    MailboxStatistics,
    Reply,
)


@attrs.frozen
class Double:
    """Ask the actor to double ``value``; it waits ``delay`` before answering."""

    value: int
    reply: Reply[int]
    delay: float = 0.0


@attrs.frozen
class Refuse:
    reply: Reply[int]


Message = Double | Refuse


@attrs.define
class Doubler:
    """A small actor: answers requests one at a time and records how each answer went."""

    mailbox: Mailbox[Message] = attrs.field(factory=lambda: Mailbox[Message]("doubler", 4))
    answered: list[tuple[int, float]] = attrs.field(factory=list)
    errors: list[BaseException] = attrs.field(factory=list)

    async def run(self) -> None:
        async for message in self.mailbox:
            try:
                if isinstance(message, Refuse):
                    message.reply.fail(ValueError("refused"))
                    continue
                await trio.sleep(message.delay)
                message.reply.send(message.value * 2)
                self.answered.append((message.value, trio.current_time()))
            except Exception as error:  # a late answer must never land here
                self.errors.append(error)


@pytest.fixture
async def doubler() -> AsyncIterator[Doubler]:
    actor = Doubler()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        yield actor
        nursery.cancel_scope.cancel()


async def test_put_nowait_raises_mailbox_full_and_own_notices_are_never_refused() -> None:
    mailbox = Mailbox[str]("tiny", capacity=1)
    mailbox.put_nowait("a")
    with pytest.raises(MailboxFull, match="mailbox of tiny is full"):
        mailbox.put_nowait("b")
    mailbox.put_internal("notice")  # the actor's own news gets through regardless
    assert mailbox.statistics() == MailboxStatistics(queued=1, capacity=1, pending_calls=0)
    assert mailbox.receive_nowait() == "a"
    mailbox.put_nowait("c")  # room again
    assert [await mailbox.receive(), await mailbox.receive()] == ["notice", "c"]


async def test_call_returns_the_reply(
    doubler: Doubler, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    assert await doubler.mailbox.call(lambda r: Double(21, r), timeout=1) == 42
    assert await doubler.mailbox.call(lambda r: Double(5, r, delay=0.5), timeout=1) == 10
    assert trio.current_time() - start == 0.5


async def test_call_times_out_and_a_late_reply_is_dropped_cleanly(
    doubler: Doubler, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    with pytest.raises(CallTimeout, match="doubler did not answer within 2"):
        await doubler.mailbox.call(lambda r: Double(1, r, delay=5), timeout=2)
    assert trio.current_time() - start == 2
    assert isinstance(CallTimeout("x"), TimeoutError)
    assert doubler.mailbox.statistics().pending_calls == 0

    # The actor answers at +5, after the caller gave up: nothing is raised into it...
    await trio.sleep(4)
    assert doubler.answered == [(1, start + 5)]
    assert doubler.errors == []
    # ...and it keeps serving.
    assert await doubler.mailbox.call(lambda r: Double(4, r), timeout=1) == 8
    assert doubler.errors == []


async def test_a_call_to_a_full_mailbox_fails_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mailbox = Mailbox[Message]("stuck", capacity=1)
    unused, _ = trio.open_memory_channel[outcome.Outcome[int]](1)
    mailbox.put_nowait(Refuse(Reply(unused)))
    start = trio.current_time()
    with pytest.raises(MailboxFull, match="stuck"):
        await mailbox.call(lambda r: Double(1, r), timeout=3)
    assert trio.current_time() == start  # no waiting at all
    # The request never entered the mailbox: only the first message is there.
    assert isinstance(mailbox.receive_nowait(), Refuse)
    with pytest.raises(trio.WouldBlock):
        mailbox.receive_nowait()


async def test_closing_fails_every_waiting_call_with_the_reason_and_refuses_new_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mailbox = Mailbox[Message]("dying", capacity=4)
    errors: list[ActorExited] = []

    async def caller(value: int) -> None:
        try:
            await mailbox.call(lambda r: Double(value, r), timeout=60)
        except ActorExited as error:
            errors.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller, 1)
        nursery.start_soon(caller, 2)
        await trio.testing.wait_all_tasks_blocked()
        taken = await mailbox.receive()  # one was received, not answered; one still queued
        assert isinstance(taken, Double)
        start = trio.current_time()
        mailbox.close(ExitReason.ERROR, "RuntimeError: boom")
    assert trio.current_time() == start
    assert [(e.path, e.reason, e.error) for e in errors] == [
        ("dying", ExitReason.ERROR, "RuntimeError: boom")
    ] * 2
    assert str(errors[0]) == "actor dying exited (error): RuntimeError: boom"
    assert isinstance(errors[0], ActorError)
    with pytest.raises(ActorExited, match="exited"):
        mailbox.put_nowait(Refuse(taken.reply))
    mailbox.put_internal(Refuse(taken.reply))  # dropped, not raised
    assert mailbox.statistics() == MailboxStatistics(queued=0, capacity=4, pending_calls=0)
    assert [m async for m in mailbox] == []


async def test_a_failed_call_raises_in_the_caller_not_the_actor(doubler: Doubler) -> None:
    with pytest.raises(ValueError, match="refused"):
        await doubler.mailbox.call(Refuse, timeout=1)
    assert doubler.errors == []
    assert await doubler.mailbox.call(lambda r: Double(3, r), timeout=1) == 6


async def test_a_second_answer_is_dropped() -> None:
    send, receive = trio.open_memory_channel[outcome.Outcome[int]](1)
    reply: Reply[int] = Reply(send)
    reply.send(1)
    reply.send(2)  # already answered: ignored, not raised
    reply.fail(RuntimeError("too late"))
    async with receive:
        first = receive.receive_nowait()
        assert first.unwrap() == 1
        with pytest.raises(trio.EndOfChannel):
            receive.receive_nowait()


async def test_mailbox_iteration_delivers_in_order() -> None:
    mailbox = Mailbox[int]("seq", capacity=5)
    for n in range(5):
        mailbox.put_nowait(n)
    got: list[int] = []
    async for item in mailbox:
        got.append(item)
        if len(got) == 5:
            break
    assert got == [0, 1, 2, 3, 4]
