"""The supervisor on trio's virtual clock: start order and readiness, stop order, restart types,
strategies, intensity and escalation, nested trees, start failures, shutdown timeouts, runtime
changes and the status snapshot. Times are asserted exactly, relative to the test's start."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any, ClassVar

import attrs
import pytest
import trio
import trio.testing
from support.events import EventRecorder

from actors import (
    Backoff,
    ChildContext,
    ChildExists,
    ChildExited,
    ChildGaveUp,
    ChildKilled,
    ChildSpec,
    ChildState,
    Escalation,
    Event,
    EventBus,
    Intensity,
    NodeStatus,
    Restart,
    RestartScheduled,
    Strategy,
    Supervisor,
    SupervisorEscalated,
    UnknownChild,
)

NO_JITTER = Backoff(jitter=0.0)
LENIENT = Intensity(max_restarts=100, window=1.0)
#: A cleanup that "hangs": long but finite, so a regression fails a test instead of hanging it.
HANG = 10_000.0


# -- helpers ---------------------------------------------------------------------------------------


@attrs.frozen
class Life:
    """What one incarnation of a Worker does."""

    ready_after: float | None = 0.0  # None: never becomes ready
    fail_in_start: bool = False  # raise before started()
    run_for: float = math.inf
    ends: str = "crash"  # crash | return
    cleanup: float = 0.0  # time its cleanup takes once cancelled


class Worker:
    """A scripted child. Writes what it does into a journal shared by all workers of a test."""

    def __init__(
        self,
        name: str,
        journal: list[tuple[float, str, str]],
        *lives: Life,
        then: Life = Life(),
        t0: float = 0.0,
    ) -> None:
        self.name = name
        self.journal = journal
        self.lives = list(lives)
        self.then = then
        self.t0 = t0
        self.starts: list[float] = []
        self.attempts: list[int] = []

    def note(self, what: str) -> None:
        self.journal.append((trio.current_time() - self.t0, self.name, what))

    def spec(self, **options: Any) -> ChildSpec:
        return ChildSpec(name=self.name, start=self, **{"backoff": NO_JITTER, **options})

    async def __call__(self, ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        life = self.lives.pop(0) if self.lives else self.then
        self.starts.append(trio.current_time() - self.t0)
        self.attempts.append(ctx.attempt)
        self.note("start")
        try:
            await trio.sleep(math.inf if life.ready_after is None else life.ready_after)
            if life.fail_in_start:
                self.note("fail")
                raise RuntimeError(f"{self.name} failed to start")
            task_status.started({"attempt": ctx.attempt})
            self.note("ready")
            await trio.sleep(life.run_for)
        except trio.Cancelled:
            self.note("cancelled")
            with ctx.cleanup_scope() as scope:
                await trio.sleep(life.cleanup)
            self.note("killed" if scope.cancelled_caught else "cleaned")
            raise
        if life.ends == "crash":
            self.note("crash")
            raise RuntimeError(f"{self.name} crashed")
        self.note("return")


class Tree:
    """The bus, recorder and journal of one test."""

    def __init__(self) -> None:
        self.bus = EventBus()
        self.rec = EventRecorder(self.bus)
        self.t0 = self.rec.t0
        self.journal: list[tuple[float, str, str]] = []

    def worker(self, name: str, *lives: Life, then: Life = Life()) -> Worker:
        return Worker(name, self.journal, *lives, then=then, t0=self.t0)

    def supervisor(self, name: str, children: Iterable[ChildSpec], **options: Any) -> Supervisor:
        return Supervisor(name, list(children), bus=self.bus, **{"intensity": LENIENT, **options})

    def now(self) -> float:
        return trio.current_time() - self.t0

    def of(self, name: str) -> list[tuple[float, str]]:
        return [(t, what) for t, who, what in self.journal if who == name]

    def since(self, t: float) -> list[tuple[float, str, str]]:
        return [entry for entry in self.journal if entry[0] >= t]


def states(node: NodeStatus) -> dict[str, str]:
    return {child.name: child.state.value for child in node.children}


def child(node: NodeStatus, name: str) -> NodeStatus:
    for candidate in node.walk():
        if candidate.name == name:
            return candidate
    raise AssertionError(f"{name} not in the snapshot")


# -- start and stop order ------------------------------------------------------------------------


async def test_children_start_in_order_each_after_the_previous_is_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    a = tree.worker("a", then=Life(ready_after=1))
    b = tree.worker("b", then=Life(ready_after=2))
    c = tree.worker("c")
    sup = tree.supervisor("sup", [a.spec(), b.spec(), c.spec()])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep(2)
        snap = sup.snapshot()
        assert snap.state is ChildState.STARTING
        assert states(snap) == {"a": "running", "b": "starting", "c": "stopped"}
        await trio.sleep(1.5)
        assert sup.snapshot().state is ChildState.RUNNING
        nursery.cancel_scope.cancel()
    assert [e for e in tree.journal if e[2] in ("start", "ready")] == [
        (0, "a", "start"),
        (1, "a", "ready"),
        (1, "b", "start"),
        (3, "b", "ready"),
        (3, "c", "start"),
        (3, "c", "ready"),
    ]
    assert tree.rec.steps("child_started") == [
        (1, "child_started", "a"),
        (3, "child_started", "b"),
        (3, "child_started", "c"),
    ]


async def test_run_reports_started_only_when_every_child_is_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    a = tree.worker("a", then=Life(ready_after=1.5))
    b = tree.worker("b", then=Life(ready_after=0.25))
    sup = tree.supervisor("sup", [a.spec(), b.spec()])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert tree.now() == 1.75
        assert states(sup.snapshot()) == {"a": "running", "b": "running"}
        nursery.cancel_scope.cancel()


async def test_children_stop_in_reverse_order_each_with_its_own_cleanup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    a = tree.worker("a", then=Life(cleanup=1))
    b = tree.worker("b", then=Life(cleanup=2))
    c = tree.worker("c", then=Life(cleanup=0.5))
    sup = tree.supervisor("sup", [a.spec(), b.spec(), c.spec()])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.cancel_scope.cancel()
    assert tree.now() == 3.5
    assert tree.since(0) == [
        (0, "a", "start"),
        (0, "a", "ready"),
        (0, "b", "start"),
        (0, "b", "ready"),
        (0, "c", "start"),
        (0, "c", "ready"),
        (0, "c", "cancelled"),
        (0.5, "c", "cleaned"),
        (0.5, "b", "cancelled"),
        (2.5, "b", "cleaned"),
        (2.5, "a", "cancelled"),
        (3.5, "a", "cleaned"),
    ]
    assert tree.rec.steps("child_stopping", "child_stopped") == [
        (0, "child_stopping", "c"),
        (0.5, "child_stopped", "c"),
        (0.5, "child_stopping", "b"),
        (2.5, "child_stopped", "b"),
        (2.5, "child_stopping", "a"),
        (3.5, "child_stopped", "a"),
    ]
    exits = tree.rec.events(ChildExited)
    assert [(e.child, e.reason, e.abnormal) for e in exits] == [
        ("c", "shutdown", False),
        ("b", "shutdown", False),
        ("a", "shutdown", False),
    ]
    assert states(sup.snapshot()) == {"a": "stopped", "b": "stopped", "c": "stopped"}


async def test_snapshot_says_stopped_after_the_supervisor_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    sup = tree.supervisor("sup", [tree.worker("a").spec()])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert sup.snapshot().state is ChildState.RUNNING
        nursery.cancel_scope.cancel()
    assert states(sup.snapshot()) == {"a": "stopped"}
    assert sup.snapshot().state is ChildState.STOPPED


# -- restart types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "ends", "restarted"),
    [
        (Restart.PERMANENT, "return", True),
        (Restart.PERMANENT, "crash", True),
        (Restart.TRANSIENT, "return", False),
        (Restart.TRANSIENT, "crash", True),
        (Restart.TEMPORARY, "return", False),
        (Restart.TEMPORARY, "crash", False),
    ],
)
async def test_restart_types(
    autojump_clock: trio.testing.MockClock, restart: Restart, ends: str, restarted: bool
) -> None:
    tree = Tree()
    w = tree.worker("w", Life(run_for=1, ends=ends))
    sup = tree.supervisor("sup", [w.spec(restart=restart)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(5)
        node = child(sup.snapshot(), "w")
        nursery.cancel_scope.cancel()
    abnormal = ends == "crash"
    assert node.last_exit is not None
    assert node.last_exit.reason == ("error" if abnormal else "normal")
    assert node.last_exit.abnormal is abnormal
    if abnormal:
        assert node.last_exit.error == "RuntimeError: w crashed"
    if restarted:
        assert w.starts == [0, 1]
        assert w.attempts == [0, 1]
        assert node.state is ChildState.RUNNING
        assert node.restarts == 1
        reason = "crash" if abnormal else "exit"
        assert dict(node.restart_reasons) == {reason: 1}
        scheduled = tree.rec.events(RestartScheduled)
        assert [(s.child, s.reason, s.delay, s.restarts) for s in scheduled] == [
            ("w", reason, 0.0, 1)
        ]
    else:
        assert w.starts == [0]
        assert node.state is ChildState.EXITED
        assert node.restarts == 0
        assert tree.rec.events(RestartScheduled) == []


# -- strategies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "after_crash"),
    [
        (
            Strategy.ONE_FOR_ONE,
            [(1, "b", "crash"), (1, "b", "start"), (1, "b", "ready")],
        ),
        (
            Strategy.ONE_FOR_ALL,
            [
                (1, "b", "crash"),
                (1, "c", "cancelled"),
                (1.5, "c", "cleaned"),
                (1.5, "a", "cancelled"),
                (1.75, "a", "cleaned"),
                (1.75, "a", "start"),
                (1.75, "a", "ready"),
                (1.75, "b", "start"),
                (1.75, "b", "ready"),
                (1.75, "c", "start"),
                (1.75, "c", "ready"),
            ],
        ),
        (
            Strategy.REST_FOR_ONE,
            [
                (1, "b", "crash"),
                (1, "c", "cancelled"),
                (1.5, "c", "cleaned"),
                (1.5, "b", "start"),
                (1.5, "b", "ready"),
                (1.5, "c", "start"),
                (1.5, "c", "ready"),
            ],
        ),
    ],
)
async def test_strategies(
    autojump_clock: trio.testing.MockClock,
    strategy: Strategy,
    after_crash: list[tuple[float, str, str]],
) -> None:
    tree = Tree()
    a = tree.worker("a", then=Life(cleanup=0.25))
    b = tree.worker("b", Life(run_for=1), then=Life(cleanup=0.25))
    c = tree.worker("c", then=Life(cleanup=0.5))
    sup = tree.supervisor("sup", [a.spec(), b.spec(), c.spec()], strategy=strategy)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(5)
        snap = sup.snapshot()
        nursery.cancel_scope.cancel()
    assert tree.since(0.5)[: len(after_crash)] == after_crash
    assert len(tree.since(0.5)) == len(after_crash) + 6  # then only the final shutdown
    assert states(snap) == {"a": "running", "b": "running", "c": "running"}
    restarted = {name for _, name, what in after_crash if what == "start"}
    for node in snap.children:
        if node.name == "b":
            assert dict(node.restart_reasons) == {"crash": 1}
        elif node.name in restarted:
            assert dict(node.restart_reasons) == {"sibling": 1}
            assert node.restarts == 1
        else:
            assert node.restarts == 0
    stopped_siblings = [
        (e.child, e.shutdown) for e in tree.rec.events(ChildExited) if e.shutdown == "sibling"
    ]
    assert stopped_siblings == [
        (name, "sibling") for _, name, what in after_crash if what == "cancelled"
    ]


async def test_one_for_all_does_not_revive_a_temporary_sibling_that_already_exited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    a = tree.worker("a", Life(run_for=0.5, ends="return"))
    b = tree.worker("b", Life(run_for=1))
    sup = tree.supervisor(
        "sup", [a.spec(restart=Restart.TEMPORARY), b.spec()], strategy=Strategy.ONE_FOR_ALL
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(5)
        assert states(sup.snapshot()) == {"a": "exited", "b": "running"}
        nursery.cancel_scope.cancel()
    assert a.starts == [0]
    assert b.starts == [0, 1]


# -- intensity and escalation --------------------------------------------------------------------


async def test_per_child_intensity_gives_up_on_the_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    bad = tree.worker("bad", then=Life(run_for=0))
    good = tree.worker("good")
    sup = tree.supervisor(
        "sup",
        [
            bad.spec(
                intensity=Intensity(max_restarts=3, window=100),
                backoff=Backoff(min_delay=1, factor=2, jitter=0),
            ),
            good.spec(),
        ],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(10)
        snap = sup.snapshot()
        nursery.cancel_scope.cancel()
    assert bad.starts == [0, 0, 1, 3]
    assert [(t, s.delay) for t, s in tree.rec.log if isinstance(s, RestartScheduled)] == [
        (0, 0.0),
        (0, 1.0),
        (1, 2.0),
    ]
    gave_up = tree.rec.events(ChildGaveUp)
    assert tree.rec.steps("child_gave_up") == [(3, "child_gave_up", "bad")]
    assert (gave_up[0].restarts, gave_up[0].max_restarts, gave_up[0].window) == (3, 3, 100)
    assert states(snap) == {"bad": "fatal", "good": "running"}
    assert snap.state is ChildState.RUNNING
    assert good.starts == [0]
    assert child(snap, "bad").restarts == 3


async def test_supervisor_intensity_stops_children_then_escalates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    bad = tree.worker("bad", then=Life(run_for=0))
    good = tree.worker("good", then=Life(cleanup=0.5))
    sup = tree.supervisor(
        "sup",
        [bad.spec(backoff=Backoff(min_delay=1, jitter=0)), good.spec()],
        intensity=Intensity(max_restarts=2, window=10),
    )
    with pytest.raises(Escalation) as raised:
        await sup.run()
    assert tree.now() == 1.5
    escalation = raised.value
    assert (escalation.supervisor, escalation.reason, escalation.child, escalation.final) == (
        "sup",
        "restart intensity exceeded",
        "bad",
        False,
    )
    assert bad.starts == [0, 0, 1]
    assert tree.of("good") == [(0, "start"), (0, "ready"), (1, "cancelled"), (1.5, "cleaned")]
    # The children are stopped before the supervisor says it escalated.
    assert tree.rec.steps()[-4:] == [
        (1, "child_stopping", "good"),
        (1.5, "child_exited", "good"),
        (1.5, "child_stopped", "good"),
        (1.5, "supervisor_escalated", "bad"),
    ]
    escalated = tree.rec.events(SupervisorEscalated)
    assert [(e.source, e.reason, e.child) for e in escalated] == [
        ("sup", "restart intensity exceeded", "bad")
    ]
    snap = sup.snapshot()
    assert snap.state is ChildState.FATAL
    assert states(snap) == {"bad": "exited", "good": "stopped"}


async def test_intensity_window_slides(autojump_clock: trio.testing.MockClock) -> None:
    """A restart exactly ``window`` seconds after the previous one no longer counts with it."""
    tree = Tree()
    bad = tree.worker("bad", then=Life(run_for=3))
    immediate = Backoff(min_delay=0, jitter=0)
    sup = tree.supervisor(
        "sup", [bad.spec(backoff=immediate)], intensity=Intensity(max_restarts=1, window=3)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(13)
        assert sup.snapshot().state is ChildState.RUNNING
        nursery.cancel_scope.cancel()
    assert bad.starts == [0, 3, 6, 9, 12]


@pytest.mark.parametrize("restart", [Restart.TEMPORARY, Restart.TRANSIENT])
async def test_critical_child_ending_escalates_finally(
    autojump_clock: trio.testing.MockClock, restart: Restart
) -> None:
    tree = Tree()
    main = tree.worker("main", Life(run_for=2, ends="return"))
    other = tree.worker("other")
    sup = tree.supervisor("sup", [other.spec(), main.spec(restart=restart, critical=True)])
    with pytest.raises(Escalation) as raised:
        await sup.run()
    assert tree.now() == 2
    assert (raised.value.reason, raised.value.child, raised.value.final) == (
        "critical child ended",
        "main",
        True,
    )
    assert tree.of("other") == [(0, "start"), (0, "ready"), (2, "cancelled"), (2, "cleaned")]
    assert sup.snapshot().state is ChildState.FATAL


async def test_critical_child_that_gives_up_escalates_finally(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    main = tree.worker("main", then=Life(run_for=1))
    sup = tree.supervisor(
        "sup", [main.spec(critical=True, intensity=Intensity(max_restarts=1, window=10))]
    )
    with pytest.raises(Escalation) as raised:
        await sup.run()
    assert tree.now() == 2
    assert (raised.value.reason, raised.value.final) == ("critical child gave up", True)
    assert tree.rec.steps("child_gave_up", "supervisor_escalated") == [
        (2, "child_gave_up", "main"),
        (2, "supervisor_escalated", "main"),
    ]


async def test_a_critical_child_that_is_restarted_does_not_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    main = tree.worker("main", Life(run_for=1))
    sup = tree.supervisor("sup", [main.spec(restart=Restart.TRANSIENT, critical=True)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(3)
        assert states(sup.snapshot()) == {"main": "running"}
        nursery.cancel_scope.cancel()
    assert main.starts == [0, 1]


# -- nested supervisors --------------------------------------------------------------------------


async def test_nested_supervisor_is_restarted_by_its_parent_and_shows_in_the_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    crasher = tree.worker("crasher", Life(run_for=2), Life(run_for=2), Life(run_for=2))
    calm = tree.worker("calm", then=Life(ready_after=1))
    after = tree.worker("after")
    inner = tree.supervisor(
        "inner", [crasher.spec(), calm.spec()], intensity=Intensity(max_restarts=1, window=10)
    )
    outer = tree.supervisor(
        "outer",
        [inner.child_spec(backoff=Backoff(initial_delay=0.5, jitter=0)), after.spec()],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(outer.run)
        # The parent's next child started only once the nested tree was ready.
        assert tree.now() == 1
        assert after.starts == [1]
        await trio.sleep(3.25)  # t=4.25: the inner supervisor escalated at 4, waits 0.5
        mid = outer.snapshot()
        await trio.sleep(2)  # t=6.25: running again
        snap = outer.snapshot()
        await trio.sleep(0.75)  # t=7: the crash at 6.5 fits the fresh window of the new run
        last = outer.snapshot()
        nursery.cancel_scope.cancel()

    assert states(mid) == {"inner": "backoff", "after": "running"}
    assert crasher.starts == [0, 2, 4.5, 6.5]
    assert (child(last, "inner").restarts, child(last, "crasher").restarts) == (1, 2)
    assert states(last) == {"inner": "running", "after": "running"}
    assert tree.of("calm") == [
        (0, "start"),
        (1, "ready"),
        (4, "cancelled"),
        (4, "cleaned"),
        (4.5, "start"),
        (5.5, "ready"),
        (7, "cancelled"),
        (7, "cleaned"),
    ]
    assert after.starts == [1]  # one_for_one: the sibling of the nested tree is untouched
    # Shutdown walks the whole tree in reverse start order.
    assert [(who, what) for _, who, what in tree.since(7)] == [
        ("after", "cancelled"),
        ("after", "cleaned"),
        ("calm", "cancelled"),
        ("calm", "cleaned"),
        ("crasher", "cancelled"),
        ("crasher", "cleaned"),
    ]

    assert [n.path for n in snap.walk()] == [
        "outer",
        "outer/inner",
        "outer/inner/crasher",
        "outer/inner/calm",
        "outer/after",
    ]
    node = child(snap, "inner")
    assert node.kind == "supervisor"
    assert node.state is ChildState.RUNNING
    assert node.restarts == 1
    assert node.last_exit is not None
    assert node.last_exit.reason == "error"
    assert node.last_exit.abnormal
    assert node.last_exit.error is not None
    assert "restart intensity exceeded" in node.last_exit.error
    assert states(node) == {"crasher": "running", "calm": "running"}
    as_dict = snap.to_dict()
    assert as_dict["children"][0]["children"][0]["path"] == "outer/inner/crasher"
    assert as_dict["children"][0]["state"] == "running"

    escalated = tree.rec.events(SupervisorEscalated)
    assert [(e.source, e.child, e.reason) for e in escalated] == [
        ("outer/inner", "crasher", "restart intensity exceeded")
    ]
    assert ("outer/inner/crasher", "crasher") in [
        (e.source, e.child) for e in tree.rec.events(ChildExited)
    ]
    assert tree.rec.steps("restart_scheduled", child="inner") == [(4, "restart_scheduled", "inner")]
    assert tree.rec.steps("child_started", child="inner") == [
        (1, "child_started", "inner"),
        (5.5, "child_started", "inner"),
    ]


@pytest.mark.parametrize("critical", [False, True])
async def test_final_escalation_of_a_nested_supervisor_is_not_restarted(
    autojump_clock: trio.testing.MockClock, critical: bool
) -> None:
    tree = Tree()
    job = tree.worker("job", Life(run_for=1, ends="return"))
    inner = tree.supervisor("inner", [job.spec(restart=Restart.TEMPORARY, critical=True)])
    other = tree.worker("other")
    outer = tree.supervisor("outer", [inner.child_spec(critical=critical), other.spec()])
    async with trio.open_nursery() as nursery:
        if critical:
            with pytest.raises(Escalation) as raised:
                await outer.run()
            assert raised.value.final
            assert (raised.value.supervisor, raised.value.child) == ("outer", "inner")
            assert tree.now() == 1
            assert outer.snapshot().state is ChildState.FATAL
            assert tree.of("other")[-1] == (1, "cleaned")
        else:
            await nursery.start(outer.run)
            await trio.sleep(5)
            assert outer.snapshot().state is ChildState.RUNNING
            assert states(outer.snapshot()) == {"inner": "fatal", "other": "running"}
            nursery.cancel_scope.cancel()
    assert job.starts == [0]
    assert tree.rec.events(RestartScheduled) == []
    inner_exit = [e for e in tree.rec.events(ChildExited) if e.child == "inner"]
    assert [(e.reason, e.abnormal) for e in inner_exit] == [("escalated", True)]


# -- failing and hanging children ----------------------------------------------------------------


async def test_a_child_raising_during_start_is_restarted_and_the_supervisor_lives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    flaky = tree.worker("flaky", Life(ready_after=0.5, fail_in_start=True))
    nxt = tree.worker("next")
    sup = tree.supervisor(
        "sup", [flaky.spec(backoff=Backoff(initial_delay=1, jitter=0)), nxt.spec()]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert tree.now() == 0.5
        await trio.sleep(0.5)
        mid = sup.snapshot()
        await trio.sleep(1)
        snap = sup.snapshot()
        nursery.cancel_scope.cancel()
    assert mid.state is ChildState.RUNNING
    assert states(mid) == {"flaky": "backoff", "next": "running"}
    node = child(mid, "flaky")
    assert node.last_exit is not None
    assert (node.last_exit.reason, node.last_exit.error) == (
        "error",
        "RuntimeError: flaky failed to start",
    )
    assert states(snap) == {"flaky": "running", "next": "running"}
    assert flaky.starts == [0, 1.5]
    assert nxt.starts == [0.5]
    assert tree.rec.steps("child_exited", "restart_scheduled", "child_started")[:4] == [
        # The exit is decided at once (the restart scheduled), while "next" starts in its task.
        (0.5, "child_exited", "flaky"),
        (0.5, "restart_scheduled", "flaky"),
        (0.5, "child_started", "next"),
        (1.5, "child_started", "flaky"),
    ]


async def test_a_temporary_child_raising_during_start_is_left_exited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    once = tree.worker("once", then=Life(fail_in_start=True))
    sup = tree.supervisor("sup", [once.spec(restart=Restart.TEMPORARY)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(1)
        snap = sup.snapshot()
        nursery.cancel_scope.cancel()
    assert snap.state is ChildState.RUNNING
    assert states(snap) == {"once": "exited"}
    assert once.starts == [0]


async def test_start_timeout_stops_and_restarts_a_child_that_never_gets_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    slow = tree.worker("slow", Life(ready_after=None, cleanup=0.25))
    b = tree.worker("b")
    sup = tree.supervisor("sup", [slow.spec(start_timeout=2), b.spec()])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert tree.now() == 2.25
        await trio.sleep(0.5)
        snap = sup.snapshot()
        nursery.cancel_scope.cancel()
    assert tree.of("slow")[:4] == [
        (0, "start"),
        (2, "cancelled"),
        (2.25, "cleaned"),
        (2.25, "start"),
    ]
    assert b.starts == [2.25]
    exits = [e for e in tree.rec.events(ChildExited) if e.child == "slow"]
    assert [(e.reason, e.abnormal) for e in exits[:1]] == [("start_timeout", True)]
    node = child(snap, "slow")
    assert node.state is ChildState.RUNNING
    assert dict(node.restart_reasons) == {"start_timeout": 1}
    assert [s.reason for s in tree.rec.events(RestartScheduled)] == ["start_timeout"]


async def test_a_child_hanging_in_shutdown_is_killed_at_its_shutdown_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    hang = tree.worker("hang", then=Life(cleanup=HANG))
    tidy = tree.worker("tidy", then=Life(cleanup=1))
    sup = tree.supervisor("sup", [hang.spec(shutdown_timeout=3), tidy.spec(shutdown_timeout=3)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        seen: list[dict[str, str]] = []

        async def watch() -> None:
            await trio.sleep(1)
            seen.append(states(sup.snapshot()))

        nursery.start_soon(watch)
        status = await sup.stop_child("hang")
        assert tree.now() == 3
        assert status.state is ChildState.STOPPED
        assert seen == [{"hang": "stopping", "tidy": "running"}]

        status = await sup.stop_child("tidy")
        assert tree.now() == 4
        assert status.state is ChildState.STOPPED
        nursery.cancel_scope.cancel()
    assert tree.of("hang")[2:] == [(0, "cancelled"), (3, "killed")]
    assert tree.of("tidy")[2:] == [(3, "cancelled"), (4, "cleaned")]
    assert tree.rec.steps("child_stopping", "child_killed", "child_exited", "child_stopped") == [
        (0, "child_stopping", "hang"),
        (3, "child_killed", "hang"),
        (3, "child_exited", "hang"),
        (3, "child_stopped", "hang"),
        (3, "child_stopping", "tidy"),
        (4, "child_exited", "tidy"),
        (4, "child_stopped", "tidy"),
    ]
    killed = tree.rec.events(ChildKilled)
    assert [(k.child, k.shutdown_timeout) for k in killed] == [("hang", 3)]
    assert [(e.child, e.reason, e.shutdown) for e in tree.rec.events(ChildExited)] == [
        ("hang", "shutdown", "stop"),
        ("tidy", "shutdown", "stop"),
    ]


async def test_supervisor_shutdown_kills_a_hanging_child_at_its_shutdown_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    a = tree.worker("a", then=Life(cleanup=1))
    hang = tree.worker("hang", then=Life(cleanup=HANG))
    sup = tree.supervisor("sup", [a.spec(), hang.spec(shutdown_timeout=2.5)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.cancel_scope.cancel()
    assert tree.now() == 3.5
    assert tree.of("hang")[2:] == [(0, "cancelled"), (2.5, "killed")]
    assert tree.of("a")[2:] == [(2.5, "cancelled"), (3.5, "cleaned")]


async def test_supervisor_shutdown_during_a_stop_still_kills_the_hanging_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The supervisor is stopped while ``stop_child`` waits for a child stuck in its cleanup:
    that child must still be cut at its shutdown timeout, not left to finish on its own."""
    tree = Tree()
    hang = tree.worker("hang", then=Life(cleanup=HANG))
    sup = tree.supervisor("sup", [hang.spec(shutdown_timeout=3)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.start_soon(sup.stop_child, "hang")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert tree.of("hang")[2:] == [(0, "cancelled"), (3, "killed")]
    assert tree.now() == 3


@pytest.mark.parametrize("parallel", [False, True])
async def test_shutdown_of_children_ignoring_cancel_serial_by_default_parallel_on_request(
    autojump_clock: trio.testing.MockClock, parallel: bool
) -> None:
    """Two children that ignore cancellation for their whole shutdown timeout: one after the
    other, in reverse order, by default (OTP's rule); at once with ``parallel_shutdown``."""
    tree = Tree()
    a = tree.worker("a", then=Life(cleanup=HANG))
    b = tree.worker("b", then=Life(cleanup=HANG))
    specs = [a.spec(shutdown_timeout=2), b.spec(shutdown_timeout=2)]
    sup = tree.supervisor("sup", specs, parallel_shutdown=parallel)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.cancel_scope.cancel()
    if parallel:
        assert tree.now() == 2  # one shutdown timeout, not two
        assert sorted(tree.since(0)[4:]) == [
            (0, "a", "cancelled"),
            (0, "b", "cancelled"),
            (2, "a", "killed"),
            (2, "b", "killed"),
        ]
        assert sorted(tree.rec.steps("child_stopping", "child_killed", "child_stopped")) == [
            (0, "child_stopping", "a"),
            (0, "child_stopping", "b"),
            (2, "child_killed", "a"),
            (2, "child_killed", "b"),
            (2, "child_stopped", "a"),
            (2, "child_stopped", "b"),
        ]
    else:
        assert tree.now() == 4
        assert tree.since(0)[4:] == [
            (0, "b", "cancelled"),
            (2, "b", "killed"),
            (2, "a", "cancelled"),
            (4, "a", "killed"),
        ]
    exits = tree.rec.events(ChildExited)
    assert sorted((e.child, e.reason, e.abnormal) for e in exits) == [
        ("a", "shutdown", False),
        ("b", "shutdown", False),
    ]
    assert states(sup.snapshot()) == {"a": "stopped", "b": "stopped"}
    assert sup.snapshot().state is ChildState.STOPPED


async def test_parallel_shutdown_lets_each_child_clean_up_by_its_own_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A child already being stopped keeps its deadline; the others get theirs from the
    shutdown; a child that cleans up in time is not killed."""
    tree = Tree()
    hang = tree.worker("hang", then=Life(cleanup=HANG))
    slow = tree.worker("slow", then=Life(cleanup=HANG))
    tidy = tree.worker("tidy", then=Life(cleanup=1))
    specs = [
        hang.spec(shutdown_timeout=3),
        slow.spec(shutdown_timeout=2.5),
        tidy.spec(shutdown_timeout=5),
    ]
    sup = tree.supervisor("sup", specs, parallel_shutdown=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.start_soon(sup.stop_child, "hang")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert tree.now() == 3.5
    assert tree.of("hang")[2:] == [(0, "cancelled"), (3, "killed")]
    assert tree.of("slow")[2:] == [(1, "cancelled"), (3.5, "killed")]
    assert tree.of("tidy")[2:] == [(1, "cancelled"), (2, "cleaned")]
    assert sorted(k.child for k in tree.rec.events(ChildKilled)) == ["hang", "slow"]
    assert states(sup.snapshot()) == {"hang": "stopped", "slow": "stopped", "tidy": "stopped"}


# -- runtime changes -----------------------------------------------------------------------------


async def test_children_added_stopped_started_restarted_and_removed_at_runtime(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    a = tree.worker("a")
    b = tree.worker("b")
    c = tree.worker("c", then=Life(ready_after=2))
    sup = tree.supervisor("sup", [a.spec(), b.spec()])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)

        status = await sup.add_child(c.spec())  # answers once c is ready
        assert tree.now() == 2
        assert (status.name, status.path, status.state) == ("c", "sup/c", ChildState.RUNNING)
        assert [n.name for n in sup.snapshot().children] == ["a", "b", "c"]
        with pytest.raises(ChildExists, match="'c'"):
            await sup.add_child(tree.worker("c").spec())

        status = await sup.stop_child("a")
        assert status.state is ChildState.STOPPED
        await trio.sleep(10)  # permanent, but stopped on purpose: not restarted
        assert states(sup.snapshot())["a"] == "stopped"
        assert a.starts == [0]
        status = await sup.start_child("a")
        assert status.state is ChildState.RUNNING
        assert a.starts == [0, 12]
        status = await sup.start_child("a")  # already running: nothing happens
        assert a.starts == [0, 12]

        status = await sup.restart_child("b")
        assert (status.state, status.restarts, dict(status.restart_reasons)) == (
            ChildState.RUNNING,
            1,
            {"manual": 1},
        )
        assert tree.of("b")[2:] == [
            (12, "cancelled"),
            (12, "cleaned"),
            (12, "start"),
            (12, "ready"),
        ]
        assert b.attempts == [0, 1]

        await sup.remove_child("c")
        assert [n.name for n in sup.snapshot().children] == ["a", "b"]
        assert tree.of("c")[2:] == [(12, "cancelled"), (12, "cleaned")]

        with pytest.raises(UnknownChild, match="'c'; known: a, b") as unknown:
            await sup.stop_child("c")
        assert unknown.value.known == ["a", "b"]
        for command in (sup.start_child, sup.restart_child, sup.remove_child):
            with pytest.raises(UnknownChild):
                await command("nope")
        assert sup.snapshot().state is ChildState.RUNNING
        nursery.cancel_scope.cancel()
    assert tree.rec.steps("child_added", "child_removed") == [
        (0, "child_added", "c"),
        (12, "child_removed", "c"),
    ]
    manual = [s for s in tree.rec.events(RestartScheduled) if s.child == "b"]
    assert [(s.reason, s.delay, s.restarts) for s in manual] == [("manual", 0.0, 1)]


async def test_start_child_revives_a_fatal_child(autojump_clock: trio.testing.MockClock) -> None:
    tree = Tree()
    bad = tree.worker("bad", Life(run_for=0), Life(run_for=0))
    sup = tree.supervisor("sup", [bad.spec(intensity=Intensity(max_restarts=1, window=10))])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(1)
        assert states(sup.snapshot()) == {"bad": "fatal"}
        status = await sup.start_child("bad")
        assert status.state is ChildState.RUNNING
        nursery.cancel_scope.cancel()
    assert bad.starts == [0, 0, 1]


async def test_stopping_a_child_in_backoff_cancels_its_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    w = tree.worker("w", Life(run_for=1))
    sup = tree.supervisor("sup", [w.spec(backoff=Backoff(initial_delay=5, jitter=0))])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(2)
        assert states(sup.snapshot()) == {"w": "backoff"}
        await sup.stop_child("w")
        await trio.sleep(10)
        assert states(sup.snapshot()) == {"w": "stopped"}
        nursery.cancel_scope.cancel()
    assert w.starts == [0]


async def test_restart_child_with_a_reason_counts_against_intensity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A restart asked for by someone else (a health probe) paces and counts like a crash."""
    tree = Tree()
    w = tree.worker("w")
    sup = tree.supervisor(
        "sup",
        [
            w.spec(
                intensity=Intensity(max_restarts=1, window=100),
                backoff=Backoff(initial_delay=2, jitter=0),
            )
        ],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        status = await sup.restart_child("w", reason="unhealthy")
        assert status.state is ChildState.BACKOFF
        await trio.sleep(3)
        assert states(sup.snapshot()) == {"w": "running"}
        status = await sup.restart_child("w", reason="unhealthy")
        assert status.state is ChildState.FATAL
        nursery.cancel_scope.cancel()
    assert w.starts == [0, 2]
    assert [(e.reason, e.shutdown, e.abnormal) for e in tree.rec.events(ChildExited)] == [
        ("shutdown", "unhealthy", False),
        ("shutdown", "unhealthy", False),
    ]
    assert [(s.reason, s.delay) for s in tree.rec.events(RestartScheduled)] == [("unhealthy", 2.0)]
    assert tree.rec.steps("child_gave_up") == [(3, "child_gave_up", "w")]


class ExitCode(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"exited with {code}")
        self.details = {"exit_code": code}


async def test_exit_details_come_from_the_error(autojump_clock: trio.testing.MockClock) -> None:
    tree = Tree()

    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        task_status.started()
        await trio.sleep(1)
        raise ExitCode(3)

    sup = tree.supervisor("sup", [ChildSpec(name="p", start=start, restart=Restart.TEMPORARY)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(2)
        node = child(sup.snapshot(), "p")
        nursery.cancel_scope.cancel()
    assert node.last_exit is not None
    assert (node.last_exit.error, dict(node.last_exit.details)) == (
        "ExitCode: exited with 3",
        {"exit_code": 3},
    )
    exited = tree.rec.events(ChildExited)
    assert [dict(e.details) for e in exited] == [{"exit_code": 3}]
    assert node.to_dict()["last_exit"]["details"] == {"exit_code": 3}


# -- status --------------------------------------------------------------------------------------


async def test_snapshot_shows_every_state(autojump_clock: trio.testing.MockClock) -> None:
    tree = Tree()
    wall_before = time.time()
    specs = [
        tree.worker("running").spec(),
        tree.worker("exited", Life(run_for=1, ends="return")).spec(restart=Restart.TEMPORARY),
        tree.worker("fatal", then=Life(run_for=0)).spec(
            intensity=Intensity(max_restarts=0, window=9)
        ),
        tree.worker("backoff", Life(run_for=1)).spec(backoff=Backoff(initial_delay=5, jitter=0)),
        tree.worker("stopping", then=Life(cleanup=HANG)).spec(shutdown_timeout=50),
        tree.worker("stopped").spec(),
    ]
    sup = tree.supervisor("sup", specs)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(2)
        await sup.stop_child("stopped")
        nursery.start_soon(sup.stop_child, "stopping")
        await trio.testing.wait_all_tasks_blocked()
        snap = sup.snapshot()
        await trio.sleep(51)  # let the stop finish (killed at its timeout) before shutting down
        assert states(sup.snapshot())["stopping"] == "stopped"
        nursery.cancel_scope.cancel()
    assert snap.state is ChildState.RUNNING
    assert (snap.name, snap.path, snap.kind) == ("sup", "sup", "supervisor")
    assert states(snap) == {
        "running": "running",
        "exited": "exited",
        "fatal": "fatal",
        "backoff": "backoff",
        "stopping": "stopping",
        "stopped": "stopped",
    }
    for node in snap.children:
        assert node.kind == "worker"
        assert node.path == f"sup/{node.name}"
        assert wall_before <= node.since <= time.time()
    assert child(snap, "running").info == {"attempt": 0}
    assert child(snap, "backoff").restarts == 1
    exited = child(snap, "exited").last_exit
    assert exited is not None
    assert (exited.reason, exited.abnormal) == ("normal", False)
    data = snap.to_dict()
    assert data["state"] == "running"
    assert data["info"] == {"strategy": "one_for_one"}
    assert {c["name"]: c["state"] for c in data["children"]} == states(snap)
    assert data["children"][3]["restart_reasons"] == {"crash": 1}


async def test_snapshot_shows_a_child_starting(autojump_clock: trio.testing.MockClock) -> None:
    tree = Tree()
    sup = tree.supervisor("sup", [tree.worker("a").spec()])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.start_soon(sup.add_child, tree.worker("late", then=Life(ready_after=50)).spec())
        await trio.sleep(2)
        assert states(sup.snapshot()) == {"a": "running", "late": "starting"}
        nursery.cancel_scope.cancel()


@attrs.frozen(kw_only=True)
class Progress(Event):
    kind: ClassVar[str] = "progress"
    step: int


async def test_child_context_publishes_with_its_path_and_feeds_the_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()

    async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        ctx.info["port"] = 8080
        ctx.publish(Progress(step=1))
        ctx.publish(Progress(step=2, source="elsewhere"))
        task_status.started({"pid": 42})
        await trio.sleep_forever()

    sup = tree.supervisor("sup", [ChildSpec(name="svc", start=start)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        node = child(sup.snapshot(), "svc")
        nursery.cancel_scope.cancel()
    assert dict(node.info) == {"port": 8080, "pid": 42}
    progress = tree.rec.events(Progress)
    assert [(p.source, p.step) for p in progress] == [("sup/svc", 1), ("elsewhere", 2)]
    started = [e for _, e in tree.rec.log if e.kind == "child_started"]
    assert started[0].info == {"port": 8080, "pid": 42}  # type: ignore[attr-defined]


async def test_event_sequence_numbers_increase_across_the_tree(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    seqs: list[int] = []
    tree.bus.add_listener(lambda envelope: seqs.append(envelope.seq))
    inner = tree.supervisor("inner", [tree.worker("x", Life(run_for=1)).spec()])
    outer = tree.supervisor("outer", [inner.child_spec(), tree.worker("y", Life(run_for=2)).spec()])
    async with trio.open_nursery() as nursery:
        await nursery.start(outer.run)
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) > 10
    assert {e.source for _, e in tree.rec.log} >= {"outer/inner", "outer/inner/x", "outer/y"}


async def test_crash_child_fails_the_child_as_if_it_raised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from actors import ChildContext as _Ctx

    bus = EventBus()
    kinds: list[tuple[str, dict[str, Any]]] = []
    bus.add_listener(lambda envelope: kinds.append((envelope.event.kind, envelope.event.data())))

    async def forever(ctx: _Ctx, *, task_status: trio.TaskStatus[Any]) -> None:
        task_status.started()
        await trio.sleep_forever()

    supervisor = Supervisor("root", [ChildSpec(name="w", start=forever)], bus=bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await supervisor.crash_child("w")
        await trio.testing.wait_all_tasks_blocked()
        (node,) = supervisor.children()
        assert node.state is ChildState.RUNNING
        assert node.restarts == 1
        assert node.restart_reasons == {"crash": 1}
        assert node.last_exit is not None
        assert node.last_exit.error == "InjectedFault: crashed on request"
        nursery.cancel_scope.cancel()
    exited = [data for kind, data in kinds if kind == "child_exited"]
    assert exited[0]["abnormal"] is True


# -- one loop, no lock: slow stops and starts run in the child's own task -------------------------


def restart_delays(tree: Tree, name: str) -> list[float]:
    """For each restart of ``name``: the time from its exit to its next start."""
    exits = [t for t, kind, who in tree.rec.steps("child_exited", child=name)]
    starts = [t for t, who, what in tree.journal if who == name and what == "start"][1:]
    return [round(start - exit_, 6) for exit_, start in zip(exits, starts, strict=False)]


async def test_a_crash_is_restarted_within_its_backoff_while_a_sibling_takes_10s_to_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    slow = tree.worker("slow", then=Life(cleanup=10))
    flaky = tree.worker("flaky", then=Life(run_for=1))
    steady = tree.worker("steady")
    sup = tree.supervisor(
        "sup",
        [
            slow.spec(shutdown_timeout=15),
            flaky.spec(backoff=Backoff(initial_delay=0.1, min_delay=0.1, max_delay=0.1, jitter=0)),
            steady.spec(),
        ],
    )
    answered: dict[str, float] = {}

    async def stop_slow() -> None:
        status = await sup.stop_child("slow")
        answered["slow"] = tree.now()
        assert status.state is ChildState.STOPPED

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(0.5)
        nursery.start_soon(stop_slow)
        await trio.sleep(2.5)
        # An unrelated restart is answered at once, while "slow" is still stopping.
        assert sup.snapshot().children[0].state is ChildState.STOPPING
        status = await sup.restart_child("steady")
        answered["steady"] = tree.now()
        assert status.state is ChildState.RUNNING
        await trio.sleep(9)
        snap = sup.snapshot()
        nursery.cancel_scope.cancel()
    assert answered == {"steady": 3.0, "slow": 10.5}
    assert tree.of("slow")[-2:] == [(0.5, "cancelled"), (10.5, "cleaned")]
    # "flaky" crashed every second and was restarted 0.1 s later each time, all through the
    # 10 s that "slow" took to stop.
    flaky_starts = [t for t, what in tree.of("flaky") if what == "start"]
    assert len([t for t in flaky_starts if 0.5 < t < 10.5]) == 9
    assert set(restart_delays(tree, "flaky")) == {0.1}
    assert states(snap)["slow"] == "stopped"
    assert states(snap)["steady"] == "running"
    assert steady.starts == [0, 3.0]


async def test_a_crash_is_restarted_within_its_backoff_while_a_sibling_takes_8_6s_to_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    flaky = tree.worker("flaky", then=Life(run_for=0.5))
    steady = tree.worker("steady")
    slow = tree.worker("slow", then=Life(ready_after=8.6))
    sup = tree.supervisor(
        "sup",
        [
            flaky.spec(
                backoff=Backoff(initial_delay=0.1, min_delay=0.1, max_delay=0.2, factor=2, jitter=0)
            ),
            steady.spec(),
        ],
    )
    answered: dict[str, float] = {}

    async def add_slow() -> None:
        status = await sup.add_child(slow.spec(start_timeout=30))
        answered["slow"] = tree.now()
        assert status.state is ChildState.RUNNING

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.start_soon(add_slow)
        await trio.sleep(4)
        status = await sup.restart_child("steady")
        answered["steady"] = tree.now()
        assert status.state is ChildState.RUNNING
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert answered == {"steady": 4.0, "slow": 8.6}
    flaky_starts = [t for t, what in tree.of("flaky") if what == "start"]
    # Started at 0, then every 0.5 s run + 0.1, 0.2, 0.2 ... backoff: never held up by "slow".
    during_slow_start = [t for t in flaky_starts if 0 < t < 8.6]
    assert len(during_slow_start) >= 10
    assert set(restart_delays(tree, "flaky")) <= {0.1, 0.2}
    assert steady.starts == [0, 4.0]


async def test_a_non_critical_child_over_its_intensity_is_fatal_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Twenty crash-looping children each give up alone: the supervisor's own (small) intensity
    counts only children without one of their own, so it never trips, and the steady child is
    never restarted."""
    tree = Tree()
    bad = [tree.worker(f"bad{n}", then=Life(run_for=0.1)) for n in range(20)]
    steady = tree.worker("steady")
    sup = tree.supervisor(
        "sup",
        [
            *(
                b.spec(
                    intensity=Intensity(max_restarts=5, window=60),
                    backoff=Backoff(min_delay=0.1, max_delay=0.1, jitter=0),
                )
                for b in bad
            ),
            steady.spec(),
        ],
        intensity=Intensity(max_restarts=2, window=60),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(30)
        snap = sup.snapshot()
        nursery.cancel_scope.cancel()
    assert snap.state is ChildState.RUNNING
    assert states(snap) == {**{b.name: "fatal" for b in bad}, "steady": "running"}
    assert all(child(snap, b.name).restarts == 5 for b in bad)
    assert steady.starts == [0]
    assert child(snap, "steady").restarts == 0
    assert sorted(e.child for e in tree.rec.events(ChildGaveUp)) == sorted(b.name for b in bad)
    assert tree.rec.events(SupervisorEscalated) == []


@pytest.mark.parametrize("starting", [False, True])
async def test_a_stop_sticks_until_a_start(
    autojump_clock: trio.testing.MockClock, starting: bool
) -> None:
    """Stopping a crash-looping child (or one that never gets ready) keeps it stopped: no pending
    backoff, start timeout or group restart brings it back; a start does."""
    tree = Tree()
    life = Life(ready_after=None) if starting else Life(run_for=0.3)
    loop = tree.worker("loop", then=life)
    sup = tree.supervisor(
        "sup",
        [loop.spec(start_timeout=1, backoff=Backoff(min_delay=0.5, max_delay=0.5, jitter=0))],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run) if not starting else nursery.start_soon(sup.run)
        for _ in range(5):
            await trio.sleep(0.35)
            status = await sup.stop_child("loop")
            assert status.state is ChildState.STOPPED
            stopped_at = tree.now()
            await trio.sleep(5)
            assert child(sup.snapshot(), "loop").state is ChildState.STOPPED
            assert [t for t in loop.starts if t > stopped_at] == []
            before = len(loop.starts)
            nursery.start_soon(sup.start_child, "loop")
            await trio.testing.wait_all_tasks_blocked()
            assert len(loop.starts) == before + 1
        nursery.cancel_scope.cancel()


async def test_a_start_that_times_out_answers_with_the_state_decided_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    never = tree.worker("never", then=Life(ready_after=None))
    sup = tree.supervisor(
        "sup",
        [never.spec(start_timeout=1, backoff=Backoff(initial_delay=5, jitter=0))],
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.testing.wait_all_tasks_blocked()
        assert (await sup.stop_child("never")).state is ChildState.STOPPED
        start = tree.now()
        status = await sup.start_child("never")
        assert tree.now() - start == 1
        assert status.state is ChildState.BACKOFF
        assert status.last_exit is not None
        assert status.last_exit.reason == "start_timeout"
        nursery.cancel_scope.cancel()


async def test_a_start_during_a_slow_stop_waits_for_it_then_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = Tree()
    slow = tree.worker("slow", Life(cleanup=4), then=Life(ready_after=1))
    sup = tree.supervisor("sup", [slow.spec(shutdown_timeout=10)])
    answered: list[tuple[str, float, ChildState]] = []

    async def act(name: str, command: Any) -> None:
        status = await command("slow")
        answered.append((name, tree.now(), status.state))

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.start_soon(act, "stop", sup.stop_child)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(act, "start", sup.start_child)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert answered == [("stop", 4, ChildState.STOPPED), ("start", 5, ChildState.RUNNING)]
    assert slow.starts == [0, 4]
    # One stop, no spurious second one for the start (the last is the test's own shutdown).
    assert [t for t, _, _ in tree.rec.steps("child_stopped")][:-1] == [4]


async def test_child_states_read_what_children_snapshots_say() -> None:
    """``child_states()`` (name, state, info as they are) agrees with the full snapshots."""

    async def with_info(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        ctx.info["pid"] = len(ctx.name)
        task_status.started()
        await trio.sleep_forever()

    supervisor = Supervisor(
        "root",
        [ChildSpec(name="one", start=with_info), ChildSpec(name="three", start=with_info)],
        bus=EventBus(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.testing.wait_all_tasks_blocked()
        states = [(name, state, dict(info)) for name, state, info in supervisor.child_states()]
        assert states == [
            (node.name, node.state, dict(node.info)) for node in supervisor.children()
        ]
        assert states == [
            ("one", ChildState.RUNNING, {"pid": 3}),
            ("three", ChildState.RUNNING, {"pid": 5}),
        ]
        nursery.cancel_scope.cancel()


async def test_a_nested_supervisor_not_yet_running_shows_its_children_where_they_will_live(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A supervisor knows its path only once it runs: before that (held back behind a slow
    sibling, as dev8's services wait for their secrets) its children are still shown at their
    place in the tree, as callers will address them."""
    release = trio.Event()

    async def held(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        await release.wait()
        task_status.started()
        await trio.sleep_forever()

    async def forever(ctx: ChildContext, *, task_status: trio.TaskStatus[Any]) -> None:
        task_status.started()
        await trio.sleep_forever()

    inner = Supervisor("inner", [ChildSpec(name="leaf", start=forever)], bus=EventBus())
    root = Supervisor(
        "root",
        [ChildSpec(name="gate", start=held, start_timeout=math.inf), inner.child_spec()],
        bus=EventBus(),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(root.run)
        await trio.testing.wait_all_tasks_blocked()
        _, shown = root.snapshot().children
        assert [node.path for node in shown.children] == ["root/inner/leaf"]
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        _, shown = root.snapshot().children
        assert [(n.path, n.state) for n in shown.children] == [
            ("root/inner/leaf", ChildState.RUNNING)
        ]
        nursery.cancel_scope.cancel()
