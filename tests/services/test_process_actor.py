"""The process actor's messages, through its address (``ActorRef``), on trio's virtual clock.

Each service's life is a child of a real ``services`` supervisor; its process actor is a child of
a real ``process-actors`` supervisor and is reached at ``dev8/services/<name>``. Services here
are trio tasks (their process is not the point), except for ``Signal``, which needs a real
process group to hit and runs one through ``run_process``.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from actors import (
    ActorExited,
    ActorNotFound,
    ActorRef,
    Backoff,
    ChildContext,
    ChildSpec,
    ChildState,
    Envelope,
    EventBus,
    Intensity,
    MailboxFull,
    NodeStatus,
    Registry,
    Supervisor,
    UnknownChild,
)
from actors import Restart as RestartPolicy
from dev8.pid1.reaper import OwnPids
from dev8.services.factory import send_signal_to_service
from dev8.services.process import (
    NotRunning,
    OutputRing,
    ProcessActor,
    ProcessSettings,
    ProcessStatus,
    Restart,
    Signal,
    Start,
    Status,
    Stop,
    Tail,
    actor_child,
    run_process,
)

CALL = 60.0


@attrs.define
class Tree:
    bus: EventBus
    registry: Registry
    services: Supervisor
    actors: Supervisor
    actor: ProcessActor
    #: How many lives each service started.
    lives: dict[str, int]

    def ref(self, name: str = "web") -> ActorRef:
        return self.registry.ref(f"dev8/services/{name}")

    def node(self, name: str = "web") -> NodeStatus:
        return next(node for node in self.services.children() if node.name == name)


def life(
    tree: dict[str, Any], *, stop_takes: float = 0.0
) -> Any:  # a start function: counts its lives, holds like a process, stops in ``stop_takes``
    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        tree["lives"][ctx.name] = tree["lives"].get(ctx.name, 0) + 1
        actor: ProcessActor = tree["actors"][ctx.name]
        if actor.held:  # as dev8.services.factory does: a life started while held spawns nothing
            task_status.started({"pid": None})
            await tree["services"].stop_child(ctx.name)
            await trio.sleep_forever()
        assert actor.output is not None
        actor.output.append("stdout", f"life {tree['lives'][ctx.name]}")
        task_status.started({"pid": None})
        try:
            await trio.sleep_forever()
        finally:
            with ctx.cleanup_scope():
                await trio.sleep(stop_takes)

    return start


@pytest.fixture
async def tree(nursery: trio.Nursery) -> AsyncIterator[Tree]:
    yield await open_tree(nursery)
    nursery.cancel_scope.cancel()


async def open_tree(nursery: trio.Nursery, *, stop_takes: float = 0.0) -> Tree:
    bus = EventBus()
    registry = Registry()
    shared: dict[str, Any] = {"lives": {}, "actors": {}}
    quick = Backoff(initial_delay=0.5, min_delay=0.5, max_delay=0.5, jitter=0.0)
    services = Supervisor(
        "services",
        [
            ChildSpec(
                name=name,
                start=life(shared, stop_takes=stop_takes),
                backoff=quick,
                intensity=Intensity(max_restarts=100, window=60),
                shutdown_timeout=stop_takes + 5,
            )
            for name in ("web", "other")
        ],
        bus=bus,
    )
    shared["services"] = services
    for name in ("web", "other"):
        shared["actors"][name] = ProcessActor(
            registry,
            name=name,
            path=f"dev8/services/{name}",
            services=services,
            bus=bus,
            output=OutputRing(),
            policy=RestartPolicy.PERMANENT,
        )
    actors = Supervisor(
        "process-actors",
        [
            ChildSpec(name=actor_child(name), start=shared["actors"][name].run, backoff=quick)
            for name in ("web", "other")
        ],
        bus=bus,
        intensity=Intensity(max_restarts=100, window=60),
    )
    root = Supervisor("dev8", [actors.child_spec(), services.child_spec()], bus=bus)
    await nursery.start(root.run)
    return Tree(bus, registry, services, actors, shared["actors"]["web"], shared["lives"])


async def test_status_and_tail(tree: Tree, autojump_clock: trio.testing.MockClock) -> None:
    status = await tree.ref().call(Status(), timeout=CALL)
    assert status == ProcessStatus(
        service="web", state=ChildState.RUNNING, pid=None, held=False, restarts=0, last_seq=1
    )
    lines = await tree.ref().call(Tail(10, 0), timeout=CALL)
    assert [(entry["seq"], entry["line"]) for entry in lines] == [(1, "life 1")]
    assert await tree.ref().call(Tail(10, 1), timeout=CALL) == []
    with pytest.raises(TypeError, match="takes no call"):
        await tree.ref().call("what?", timeout=CALL)


async def test_stop_sticks_until_start(tree: Tree, autojump_clock: trio.testing.MockClock) -> None:
    stopped = await tree.ref().call(Stop(), timeout=CALL)
    assert stopped.state is ChildState.STOPPED
    assert (await tree.ref().call(Status(), timeout=CALL)).held
    # A probe's or a secret's restart leaves a stopped service alone...
    for reason in ("probe", "secret"):
        node = await tree.ref().call(Restart(reason=reason), timeout=CALL)
        assert node.state is ChildState.STOPPED
    await trio.sleep(30)  # ...and nothing else brings it back meanwhile
    assert tree.node().state is ChildState.STOPPED
    assert tree.lives["web"] == 1
    started = await tree.ref().call(Start(), timeout=CALL)
    assert started.state is ChildState.RUNNING
    assert not (await tree.ref().call(Status(), timeout=CALL)).held
    assert tree.lives["web"] == 2
    # Its output is kept across lives.
    lines = await tree.ref().call(Tail(10, 0), timeout=CALL)
    assert [entry["line"] for entry in lines] == ["life 1", "life 2"]


async def test_a_manual_restart_is_planned_and_ends_a_stop(
    tree: Tree, autojump_clock: trio.testing.MockClock
) -> None:
    began = trio.current_time()
    node = await tree.ref().call(Restart(), timeout=CALL)
    # At once: no backoff (the service's backoff is 0.5 s), and not a failure.
    assert trio.current_time() - began < 0.5
    assert (node.state, node.restarts, dict(node.restart_reasons)) == (
        ChildState.RUNNING,
        1,
        {"manual": 1},
    )
    await tree.ref().call(Stop(), timeout=CALL)
    node = await tree.ref().call(Restart(), timeout=CALL)
    assert node.state is ChildState.RUNNING
    assert not tree.actor.held
    # A probe's restart is a failure's: answered in its backoff, restarted after it.
    node = await tree.ref().call(Restart(reason="probe"), timeout=CALL)
    assert (node.state, dict(node.restart_reasons)) == (
        ChildState.BACKOFF,
        {"manual": 2, "probe": 1},
    )
    await trio.sleep(0.49)
    assert tree.node().state is ChildState.BACKOFF
    await trio.sleep(0.02)
    assert tree.node().state is ChildState.RUNNING


async def test_reads_are_answered_while_a_long_stop_runs(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    tree = await open_tree(nursery, stop_takes=10.0)
    answers: list[NodeStatus] = []

    async def stop() -> None:
        answers.append(await tree.ref().call(Stop(), timeout=CALL))

    nursery.start_soon(stop)
    await trio.sleep(1)
    # The stop ladder takes 10 s; the actor answers reads meanwhile, at once.
    began = trio.current_time()
    status = await tree.ref().call(Status(), timeout=CALL)
    assert (status.state, status.held) == (ChildState.STOPPING, True)
    assert trio.current_time() == began
    await trio.sleep(10)
    assert [node.state for node in answers] == [ChildState.STOPPED]
    nursery.cancel_scope.cancel()


async def test_a_crash_of_the_actor_mid_call_is_an_error_and_it_is_restarted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    tree = await open_tree(nursery, stop_takes=10.0)
    failures: list[BaseException] = []

    async def stop() -> None:
        try:
            await tree.ref().call(Stop(), timeout=CALL)
        except ActorExited as error:
            failures.append(error)

    nursery.start_soon(stop)
    await trio.sleep(1)
    crashed = await tree.actors.crash_child("web.actor")  # as the chaos API does
    assert crashed.state is ChildState.RUNNING
    await trio.testing.wait_all_tasks_blocked()
    assert len(failures) == 1
    assert "dev8/services/web exited" in str(failures[0])
    # Between its restarts nobody is at the address: a clear error at once, never a hang.
    with pytest.raises(ActorNotFound):
        await tree.ref().call(Status(), timeout=CALL)
    await trio.sleep(1)
    actor_node = next(n for n in tree.actors.children() if n.name == "web.actor")
    assert (actor_node.state, actor_node.restarts) == (ChildState.RUNNING, 1)
    # Its state outlived the crash: the stop was asked for, and it sticks.
    await trio.sleep(20)
    status = await tree.ref().call(Status(), timeout=CALL)
    assert (status.state, status.held) == (ChildState.STOPPED, True)
    nursery.cancel_scope.cancel()


async def test_a_busy_actor_refuses_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    tree = await open_tree(nursery, stop_takes=10.0)
    capacity = tree.actor.mailbox_capacity
    results: list[object] = []

    async def ask(message: object) -> None:
        try:
            results.append(await tree.ref().call(message, timeout=CALL))
        except MailboxFull as error:
            results.append(error)

    # Requests arriving at once beyond the mailbox's capacity are refused at once...
    for _ in range(capacity + 3):
        nursery.start_soon(ask, Stop())
    await trio.testing.wait_all_tasks_blocked()
    refused = [r for r in results if isinstance(r, MailboxFull)]
    assert len(refused) == 3
    # ...and so are life-cycle requests beyond as many queued behind a 10 s stop.
    for _ in range(2):
        nursery.start_soon(ask, Start())
    await trio.testing.wait_all_tasks_blocked()
    refused = [r for r in results if isinstance(r, MailboxFull)]
    assert len(refused) == 4
    assert "requests queued" in str(refused[-1])
    # Reads are still answered at once (the Start it took ends the operator's stop).
    began = trio.current_time()
    status = await tree.ref().call(Status(), timeout=CALL)
    assert (status.state, status.held) == (ChildState.STOPPING, False)
    assert trio.current_time() == began
    nursery.cancel_scope.cancel()


async def test_an_unknown_or_removed_service(
    tree: Tree, autojump_clock: trio.testing.MockClock
) -> None:
    await tree.services.remove_child("other")
    with pytest.raises(UnknownChild):
        await tree.ref("other").call(Status(), timeout=CALL)
    with pytest.raises(UnknownChild):
        await tree.ref("other").call(Start(), timeout=CALL)
    with pytest.raises(ActorNotFound):
        await tree.ref("nope").call(Status(), timeout=CALL)


async def test_signal_is_sent_by_the_actor_to_its_process_group(nursery: trio.Nursery) -> None:
    """A real process: the actor signals the group of the life that runs, and nothing else."""
    bus = EventBus()
    registry = Registry()
    own = OwnPids()
    holder: dict[str, ProcessActor] = {}
    settings = ProcessSettings(command=["sleep", "1000"], stop_timeout=2.0)

    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        actor = holder["svc"]
        run = functools.partial(
            run_process, ctx, settings, own=own, output=actor.output, live=actor.live
        )
        await run(task_status=task_status)

    services = Supervisor(
        "services",
        [ChildSpec(name="svc", start=start, restart=RestartPolicy.TEMPORARY)],
        bus=bus,
    )
    holder["svc"] = actor = ProcessActor(
        registry, name="svc", path="dev8/services/svc", services=services, bus=bus,
        output=OutputRing(),
    )  # fmt: skip
    root = Supervisor(
        "dev8",
        [ChildSpec(name="process-actors", start=actor.run), services.child_spec()],
        bus=bus,
    )
    ref = registry.ref("dev8/services/svc")
    lives = ("child_started", "child_exited")

    def life_of_svc(envelope: Envelope) -> bool:
        event = envelope.event
        return event.source == "dev8/services/svc" and event.kind in lives

    with bus.subscribe(accept=life_of_svc) as events:
        await nursery.start(root.run)
        with trio.fail_after(20):  # a real process's start
            assert (await events.receive()).event.kind == "child_started"
        status = await ref.call(Status(), timeout=CALL)
        assert status.pid is not None
        # ``on_secret_change: reload`` goes the same way (a harmless SIGCONT here).
        assert await send_signal_to_service(ref, signal.SIGCONT)
        pid = await ref.call(Signal(signal.SIGUSR1), timeout=CALL)
        assert pid == status.pid
        with trio.fail_after(20):
            assert (await events.receive()).event.kind == "child_exited"
    node = services.children()[0]
    assert node.state is ChildState.EXITED
    assert node.last_exit is not None
    assert node.last_exit.details["signal"] == "SIGUSR1"  # its default action: it ends
    with pytest.raises(NotRunning, match="svc is exited, not running"):
        await ref.call(Signal(signal.SIGTERM), timeout=CALL)
    assert actor.live.pid is None
    assert not await send_signal_to_service(ref, signal.SIGHUP)  # nothing to signal
    assert not await send_signal_to_service(registry.ref("dev8/services/nope"), signal.SIGHUP)
    nursery.cancel_scope.cancel()


async def test_a_stop_its_supervisor_refused_does_not_stick(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The services' supervisor is not running (it waits for secrets, or restarts): the stop
    fails with a clear error, and the service is not held stopped for its next start."""
    bus = EventBus()
    registry = Registry()
    services = Supervisor("services", [ChildSpec(name="web", start=life({}))], bus=bus)
    actor = ProcessActor(registry, name="web", path="dev8/services/web", services=services, bus=bus)
    await nursery.start(actor.run)
    ref = registry.ref("dev8/services/web")
    with pytest.raises(ActorNotFound, match="no live actor at services"):
        await ref.call(Stop(), timeout=CALL)
    status = await ref.call(Status(), timeout=CALL)
    assert (status.state, status.held) == (ChildState.STOPPED, False)
    nursery.cancel_scope.cancel()
