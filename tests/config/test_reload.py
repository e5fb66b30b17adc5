"""The reloader actor on its own: answers before applying, coalesces, reports a failed pass."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from support.dev8_harness import shell_service, write_config

from actors import ActorNotFound, ChildContext, Event
from dev8.config import Config, ConfigError, load_config
from dev8.reload import (
    Reloader,
    ReloadFailed,
    ReloadFinished,
    ReloadPlan,
    ReloadStarted,
    Status,
)


class Passes:
    """The ``apply`` of a reloader under test: each pass waits for the test to let it end."""

    def __init__(self) -> None:
        self.plans: list[ReloadPlan] = []
        self.entered = trio.Event()
        self.gate = trio.Event()
        self.fail_next = False

    async def apply(self, _old: Config, _new: Config, plan: ReloadPlan) -> None:
        self.plans.append(plan)
        gate = self.gate
        self.entered.set()
        await gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the services supervisor did not answer")

    async def finish(self) -> None:
        """Let the running pass end (waiting for it to begin)."""
        await self.entered.wait()
        gate = self.gate
        self.entered, self.gate = trio.Event(), trio.Event()
        gate.set()


def config_with(path: Path, *names: str) -> Path:
    return write_config(
        path, {name: shell_service("exec sleep 1000", "reload-test") for name in names}, port=9
    )


class Events(list[Event]):
    """What the reloader published; ``wait_for`` waits for it without polling."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def publish(self, event: Event) -> None:
        self.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, kind: type[Event], count: int) -> None:
        with trio.fail_after(10):
            while len([e for e in self if isinstance(e, kind)]) < count:
                await self._changed.wait()


@asynccontextmanager
async def running(reloader: Reloader, events: Events) -> AsyncIterator[None]:
    ctx = ChildContext(name="reloader", path="dev8/reloader", attempt=0, publish=events.publish)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: reloader.run(ctx, task_status=task_status))
        yield
        nursery.cancel_scope.cancel()


async def test_answers_with_the_plan_before_applying_and_coalesces(tmp_path: Path) -> None:
    path = config_with(tmp_path / "dev8.yaml", "a", "b")
    passes, events = Passes(), Events()
    reloader = Reloader(str(path), load_config(path), apply=passes.apply)
    async with running(reloader, events):
        config_with(path, "a", "b", "c")
        first = await reloader.reload(timeout=10)
        assert (first.reload, first.queued) == (1, False)
        assert (first.plan.added, first.plan.unchanged) == (("c",), ("a", "b"))
        await passes.entered.wait()  # the pass runs; the answer did not wait for it

        # Two more while it runs: each planned against the one before, applied as one pass.
        config_with(path, "a", "c", "d")
        second = await reloader.reload(timeout=10)
        config_with(path, "c", "d")
        third = await reloader.reload(timeout=10)
        assert (second.reload, second.queued, third.reload, third.queued) == (2, True, 3, True)
        assert (second.plan.added, second.plan.removed) == (("d",), ("b",))
        assert (third.plan.removed, third.plan.unchanged) == (("a",), ("c", "d"))

        await passes.finish()
        await passes.finish()
        await events.wait_for(ReloadFinished, 2)
    assert [(p.added, p.removed) for p in passes.plans] == [(("c",), ()), (("d",), ("a", "b"))]
    started = [e for e in events if isinstance(e, ReloadStarted)]
    finished = [e for e in events if isinstance(e, ReloadFinished)]
    assert [(e.reload, e.includes) for e in started] == [(1, [1]), (3, [2, 3])]
    assert [(e.reload, e.outcome, e.removed) for e in finished] == [
        (1, "applied", []),
        (3, "applied", ["a", "b"]),
    ]
    assert all(e.source == "dev8/reloader" for e in events)


async def test_a_failed_pass_is_an_event_and_the_next_reload_applies_the_rest(
    tmp_path: Path,
) -> None:
    path = config_with(tmp_path / "dev8.yaml", "a")
    passes, events = Passes(), Events()
    reloader = Reloader(str(path), load_config(path), apply=passes.apply)
    async with running(reloader, events):
        config_with(path, "a", "b")
        passes.fail_next = True
        await reloader.reload(timeout=10)
        await passes.finish()
        await events.wait_for(ReloadFailed, 1)
        failed = next(e for e in events if isinstance(e, ReloadFailed))
        assert (failed.reload, failed.reason) == (
            1,
            "RuntimeError: the services supervisor did not answer",
        )

        # The next reload (same file) applies again what the failed pass was to do.
        again = await reloader.reload(timeout=10)
        assert again.plan.added == ()  # planned against the accepted file...
        await passes.finish()
        await events.wait_for(ReloadFinished, 1)
    assert passes.plans[1].added == ("b",)  # ...applied against what is in effect


async def test_a_refused_file_is_the_callers_error_and_changes_nothing(tmp_path: Path) -> None:
    path = config_with(tmp_path / "dev8.yaml", "a")
    passes, events = Passes(), Events()
    reloader = Reloader(str(path), load_config(path), apply=passes.apply)
    async with running(reloader, events):
        path.write_text("services: [\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="invalid YAML"):
            await reloader.reload(timeout=10)
        config_with(path, "a", "b")
        accepted = await reloader.reload(timeout=10)
        assert (accepted.reload, accepted.plan.added) == (1, ("b",))
        await passes.finish()
        await events.wait_for(ReloadFinished, 1)
    assert len(passes.plans) == 1


async def test_a_reload_accepted_before_a_restart_is_applied_by_the_next_incarnation(
    tmp_path: Path,
) -> None:
    """The reloader's state outlives it: the pass cut short by a restart is done again."""
    path = config_with(tmp_path / "dev8.yaml", "a")
    passes, events = Passes(), Events()
    reloader = Reloader(str(path), load_config(path), apply=passes.apply)
    async with running(reloader, events):
        config_with(path, "a", "b")
        await reloader.reload(timeout=10)
        await passes.entered.wait()  # the pass is applying when the actor goes away
        assert await reloader.ref.call(Status(), timeout=10) == {
            "accepted": 1,
            "applied": 0,
            "applying": True,
        }
    with pytest.raises(ActorNotFound):  # between incarnations: a clear error, not a hang
        await reloader.ref.call(Status(), timeout=10)
    passes.entered = trio.Event()
    async with running(reloader, events):
        await passes.finish()
        await events.wait_for(ReloadFinished, 1)
        assert await reloader.ref.call(Status(), timeout=10) == {
            "accepted": 1,
            "applied": 1,
            "applying": False,
        }
    assert [plan.added for plan in passes.plans] == [("b",), ("b",)]
    assert len([e for e in events if isinstance(e, ReloadStarted)]) == 2
