"""Mailboxes and actor references: bounded delivery, request/reply with a deadline, late replies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import outcome
import pytest
import trio
import trio.testing

from actors import ActorRef, CallTimeout, Mailbox, MailboxFull, Reply


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

    @property
    def ref(self) -> ActorRef[Message]:
        return self.mailbox.ref

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


async def test_send_waits_while_the_mailbox_is_full(autojump_clock: trio.testing.MockClock) -> None:
    mailbox = Mailbox[int]("box", capacity=2)
    await mailbox.ref.send(1)
    await mailbox.ref.send(2)
    start = trio.current_time()
    with trio.move_on_after(7) as scope:
        await mailbox.ref.send(3)
    assert scope.cancelled_caught
    assert trio.current_time() - start == 7

    # Once there is room, the waiting sender gets through, in order and without delay.
    received: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mailbox.ref.send, 3)
        await trio.testing.wait_all_tasks_blocked()
        received.append(mailbox.receive_nowait())
    received += [mailbox.receive_nowait(), mailbox.receive_nowait()]
    assert received == [1, 2, 3]
    assert trio.current_time() - start == 7
    with pytest.raises(trio.WouldBlock):
        mailbox.receive_nowait()


async def test_send_nowait_raises_mailbox_full() -> None:
    mailbox = Mailbox[str]("tiny", capacity=1)
    mailbox.ref.send_nowait("a")
    with pytest.raises(MailboxFull, match="tiny"):
        mailbox.ref.send_nowait("b")
    assert mailbox.receive_nowait() == "a"
    mailbox.ref.send_nowait("c")  # room again
    assert await mailbox.receive() == "c"


async def test_ref_is_named() -> None:
    mailbox = Mailbox[int]("worker-7")
    assert mailbox.ref.name == "worker-7"
    assert repr(mailbox.ref) == "<ActorRef worker-7>"


async def test_call_returns_the_reply(
    doubler: Doubler, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    assert await doubler.ref.call(lambda r: Double(21, r), timeout=1) == 42
    assert await doubler.ref.call(lambda r: Double(5, r, delay=0.5), timeout=1) == 10
    assert trio.current_time() - start == 0.5


async def test_call_times_out_and_a_late_reply_is_dropped_cleanly(
    doubler: Doubler, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    with pytest.raises(CallTimeout, match="doubler did not answer within 2"):
        await doubler.ref.call(lambda r: Double(1, r, delay=5), timeout=2)
    assert trio.current_time() - start == 2
    assert isinstance(CallTimeout("x"), TimeoutError)

    # The actor answers at +5, after the caller gave up: nothing is raised into it...
    await trio.sleep(4)
    assert doubler.answered == [(1, start + 5)]
    assert doubler.errors == []
    # ...and it keeps serving.
    assert await doubler.ref.call(lambda r: Double(4, r), timeout=1) == 8
    assert doubler.errors == []


async def test_call_times_out_while_the_mailbox_stays_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mailbox = Mailbox[Message]("stuck", capacity=1)
    unused, _ = trio.open_memory_channel[outcome.Outcome[int]](1)
    mailbox.ref.send_nowait(Refuse(Reply(unused)))
    start = trio.current_time()
    with pytest.raises(CallTimeout):
        await mailbox.ref.call(lambda r: Double(1, r), timeout=3)
    assert trio.current_time() - start == 3
    # The request never entered the mailbox: only the first message is there.
    assert isinstance(mailbox.receive_nowait(), Refuse)
    with pytest.raises(trio.WouldBlock):
        mailbox.receive_nowait()


async def test_a_failed_call_raises_in_the_caller_not_the_actor(doubler: Doubler) -> None:
    with pytest.raises(ValueError, match="refused"):
        await doubler.ref.call(Refuse, timeout=1)
    assert doubler.errors == []
    assert await doubler.ref.call(lambda r: Double(3, r), timeout=1) == 6


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
        mailbox.ref.send_nowait(n)
    got: list[int] = []
    async for item in mailbox:
        got.append(item)
        if len(got) == 5:
            break
    assert got == [0, 1, 2, 3, 4]
