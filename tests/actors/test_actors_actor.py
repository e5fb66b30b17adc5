"""The ``Actor`` behaviour and the registry by path, on trio's virtual clock: calls, casts and
notices; a call never hangs (reply, refusal, ``CallTimeout``, ``MailboxFull``, ``ActorExited``
when the actor dies mid-call, ``ActorNotFound`` between incarnations); a restarted actor is
reachable at the same path."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from actors import (
    NO_REPLY,
    Actor,
    ActorExited,
    ActorNotFound,
    Backoff,
    CallTimeout,
    ChildSpec,
    ChildState,
    EventBus,
    ExitReason,
    Intensity,
    MailboxFull,
    PathTaken,
    Refuse,
    Registry,
    Reply,
    Restart,
    Supervisor,
)


@attrs.frozen
class Get:
    pass


@attrs.frozen
class Add:
    amount: int


@attrs.frozen
class Slow:
    delay: float


@attrs.frozen
class Crash:
    delay: float = 0.0


@attrs.frozen
class Later:
    """Answer after ``delay`` through a timer notice (a deferred reply)."""

    delay: float


@attrs.frozen
class Answer:
    reply: Reply[Any]


@attrs.frozen
class Quit:
    pass


class Counter(Actor):
    """A counter: ``Get``/``Slow``/``Crash``/``Later`` calls, ``Add`` casts, ``Quit`` stops."""

    mailbox_capacity = 3

    def __init__(self, registry: Registry, path: str | None = None) -> None:
        super().__init__(registry, path)
        self.value = 0
        self.incarnations = 0
        self.terminated: list[ExitReason] = []

    async def init(self) -> None:
        self.incarnations += 1
        self.value = 0

    async def handle_call(self, message: Any, reply: Reply[Any]) -> Any:
        if isinstance(message, Get):
            return self.value
        if isinstance(message, Slow):
            await trio.sleep(message.delay)
            return "slow"
        if isinstance(message, Crash):
            await trio.sleep(message.delay)
            raise RuntimeError("boom")
        if isinstance(message, Later):
            self.send_after(message.delay, Answer(reply))
            return NO_REPLY
        raise Refuse(ValueError(f"unknown call {message!r}"))

    async def handle_cast(self, message: Any) -> None:
        if isinstance(message, Quit):
            self.stop()
        else:
            assert isinstance(message, Add)
            self.value += message.amount

    async def handle_info(self, message: Any) -> None:
        if isinstance(message, Answer):
            message.reply.send(self.value)

    async def terminate(self, reason: ExitReason) -> None:
        self.terminated.append(reason)


async def test_call_cast_and_a_deferred_reply(autojump_clock: trio.testing.MockClock) -> None:
    registry = Registry()
    counter = Counter(registry, "app/counter")
    ref = registry.ref("app/counter")
    async with trio.open_nursery() as nursery:
        await nursery.start(counter.run)
        assert ref.alive
        assert registry.paths() == ["app/counter"]
        ref.cast(Add(2))
        ref.cast(Add(3))
        assert await ref.call(Get(), timeout=1) == 5
        start = trio.current_time()
        assert await ref.call(Later(2.5), timeout=5) == 5
        assert trio.current_time() - start == 2.5
        with pytest.raises(ValueError, match="unknown call"):
            await ref.call("what?", timeout=1)  # refused: the caller gets the error...
        assert await ref.call(Get(), timeout=1) == 5  # ...and the actor lives on
        nursery.cancel_scope.cancel()
    assert counter.terminated == [ExitReason.SHUTDOWN]
    assert not ref.alive
    with pytest.raises(ActorNotFound, match="no live actor at app/counter"):
        await ref.call(Get(), timeout=1)


async def test_a_call_never_hangs(autojump_clock: trio.testing.MockClock) -> None:
    registry = Registry()
    counter = Counter(registry, "c")
    ref = registry.ref("c")
    async with trio.open_nursery() as nursery:
        await nursery.start(counter.run)
        start = trio.current_time()
        with pytest.raises(CallTimeout, match="c did not answer within 1"):
            await ref.call(Slow(10), timeout=1)
        assert trio.current_time() - start == 1
        # The actor is busy for 9 more seconds: 3 messages fill its mailbox, the 4th fails at once.
        for _ in range(3):
            ref.cast(Add(1))
        with pytest.raises(MailboxFull, match="mailbox of c is full"):
            ref.cast(Add(1))
        with pytest.raises(MailboxFull):
            await ref.call(Get(), timeout=60)
        assert trio.current_time() - start == 1
        await trio.sleep(9.5)  # virtual time: the slow call is done, the casts are handled
        assert await ref.call(Get(), timeout=1) == 3
        nursery.cancel_scope.cancel()


async def test_an_actor_dying_mid_call_fails_its_callers_with_the_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = Registry()
    counter = Counter(registry, "c")
    ref = registry.ref("c")
    errors: list[ActorExited] = []

    async def waiting_caller() -> None:
        with pytest.raises(ActorExited) as raised:
            await ref.call(Get(), timeout=60)
        errors.append(raised.value)

    async def crashing_caller() -> None:
        with pytest.raises(ActorExited) as raised:
            await ref.call(Crash(delay=1), timeout=60)
        errors.append(raised.value)

    crashed = False
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(counter.run)
            nursery.start_soon(crashing_caller)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiting_caller)  # queued behind the crash
    except* RuntimeError:
        crashed = True
    assert crashed
    assert trio.current_time() == 1  # failed when it died, not at their timeouts
    assert [(e.path, e.reason, e.error) for e in errors] == [
        ("c", ExitReason.ERROR, "RuntimeError: boom"),
        ("c", ExitReason.ERROR, "RuntimeError: boom"),
    ]
    assert not ref.alive


async def test_a_supervised_actor_is_reachable_at_the_same_path_after_a_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = Registry()
    counter = Counter(registry)
    sup = Supervisor(
        "app",
        [
            ChildSpec(
                name="counter",
                start=counter.run,
                backoff=Backoff(initial_delay=1, min_delay=1, jitter=0),
                intensity=Intensity(max_restarts=10, window=60),
            )
        ],
        bus=EventBus(),
    )
    ref = registry.ref("app/counter")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        ref.cast(Add(7))
        assert await ref.call(Get(), timeout=1) == 7
        with pytest.raises(ActorExited) as raised:
            await ref.call(Crash(), timeout=1)
        assert raised.value.reason is ExitReason.ERROR
        # In its backoff no actor lives at the path: a clear error, not a wait.
        with pytest.raises(ActorNotFound):
            await ref.call(Get(), timeout=1)
        await trio.sleep(1.5)
        assert await ref.call(Get(), timeout=1) == 0  # a fresh incarnation, same address
        assert counter.incarnations == 2

        # Chaos at the actor level: crashing it mid-call gives its caller a clear error.
        async def crash_soon() -> None:
            await trio.sleep(0.5)
            await sup.crash_child("counter")

        nursery.start_soon(crash_soon)
        with pytest.raises(ActorExited) as raised:
            await ref.call(Slow(10), timeout=60)
        assert raised.value.reason is ExitReason.SHUTDOWN
        await trio.sleep(2)
        assert await ref.call(Get(), timeout=1) == 0
        assert counter.incarnations == 3
        assert sup.snapshot().children[0].restarts == 2
        nursery.cancel_scope.cancel()


async def test_an_actor_that_stops_itself_normally_is_not_restarted_if_transient(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = Registry()
    counter = Counter(registry)
    sup = Supervisor(
        "app",
        [ChildSpec(name="counter", start=counter.run, restart=Restart.TRANSIENT)],
        bus=EventBus(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        registry.ref("app/counter").cast(Quit())
        await trio.testing.wait_all_tasks_blocked()
        node = sup.snapshot().children[0]
        nursery.cancel_scope.cancel()
    assert node.state is ChildState.EXITED
    assert node.last_exit is not None
    assert node.last_exit.reason is ExitReason.NORMAL
    assert counter.terminated == [ExitReason.NORMAL]
    assert registry.paths() == []


def leaves(group: BaseExceptionGroup[PathTaken]) -> list[PathTaken]:
    out: list[PathTaken] = []
    for error in group.exceptions:
        out += leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return out


async def test_two_live_actors_cannot_share_a_path() -> None:
    registry = Registry()
    first, second = Counter(registry, "same"), Counter(registry, "same")
    refused: list[PathTaken] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            await nursery.start(second.run)
    except* PathTaken as group:
        refused += leaves(group)
    assert [str(e) for e in refused] == ["a live actor is already registered at same"]


class Alarm(Actor):
    """Sets a timer when asked; records when each one rang."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(registry, "alarm")
        self.rang: list[float] = []

    async def handle_call(self, message: Any, reply: Reply[Any]) -> Any:
        self.send_after(float(message), "ring")
        return trio.current_time()

    async def handle_info(self, message: Any) -> None:
        self.rang.append(trio.current_time())


async def test_a_timer_counts_from_when_it_was_set(mock_clock: trio.testing.MockClock) -> None:
    """The clock may move before the timer's task first runs: the delay still counts from the
    ``send_after`` call (a frozen clock jumped right after the answer)."""
    registry = Registry()
    alarm = Alarm(registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(alarm.run)
        set_at = await registry.ref("alarm").call(10, timeout=math.inf)
        mock_clock.jump(30)
        await trio.testing.wait_all_tasks_blocked()
        assert alarm.rang == [set_at + 30]  # rang at the first moment it could
        nursery.cancel_scope.cancel()
