"""dev8.resources.sampler and dev8.resources.cgroups: figures of real process trees and
cgroups, limits, OOM kills."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support.dev8_harness import (
    UNSHARE_PID1,
    open_dev8,
    pids_with_marker,
    python_service,
    wait_until,
    write_config,
)
from support.net import free_port

from actors import ChildContext, EventBus, Mailbox, Supervisor
from dev8.app import DEV8_OOM_SCORE_ADJ
from dev8.config import ConfigError, ServiceConfig, load_config
from dev8.pid1.reaper import OwnPids
from dev8.resources.cgroups import (
    CgroupFiles,
    ContainerFigures,
    Hierarchy,
    ServiceCgroup,
    detect_hierarchy,
    parse_v1_container,
)
from dev8.resources.sampler import (
    ContainerCpuThrottled,
    OomKilled,
    ProcessSampler,
    ProcStat,
    ResourceBoard,
    ResourceThresholdCleared,
    ResourceThresholdCrossed,
    SampleNow,
    ServiceFigures,
    make_sampler_spec,
    owners,
    parse_proc_stat,
    service_figures,
)
from dev8.services.factory import DEFAULT_OOM_SCORE_ADJ, limits_of
from dev8.services.process import (
    Limits,
    ProcessSettings,
    SpawnError,
    _limits_prefix,
    may_lower_oom_score,
    run_process,
)

REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------- /proc, pure


def test_parse_proc_stat_survives_a_command_with_spaces_and_parentheses() -> None:
    line = (
        "4242 (my (odd) name) S 17 4242 4242 0 -1 4194560 120 0 0 0 7 3 2 1 20 0 5 0 "
        "123 1000000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
    )
    assert parse_proc_stat(line) == ProcStat(
        pid=4242, ppid=17, session=4242, cpu_ticks=7 + 3 + 2 + 1, threads=5, rss_pages=250
    )
    assert parse_proc_stat("garbage") is None


def test_parse_proc_stat_reads_this_process() -> None:
    with open("/proc/self/stat", encoding="utf-8") as handle:
        stat = parse_proc_stat(handle.read())
    assert stat is not None
    assert stat.pid == os.getpid()
    assert stat.ppid == os.getppid()
    assert stat.session == os.getsid(0)
    assert stat.threads >= 1
    assert stat.rss_pages > 0


def _stat(pid: int, ppid: int, session: int) -> ProcStat:
    return ProcStat(pid=pid, ppid=ppid, session=session, cpu_ticks=1, threads=1, rss_pages=1)


def test_owners_follow_ancestry_and_session() -> None:
    table = {
        1: _stat(1, 0, 1),  # dev8
        10: _stat(10, 1, 10),  # service a's leader
        11: _stat(11, 10, 10),
        12: _stat(12, 11, 12),  # a login that called setsid: still a's by ancestry
        13: _stat(13, 1, 10),  # daemonised (reparented to dev8), kept a's session
        20: _stat(20, 1, 20),  # service b
        30: _stat(30, 1, 30),  # nobody's
    }
    assert owners(table, {10: "a", 20: "b"}) == {10: "a", 11: "a", 12: "a", 13: "a", 20: "b"}


# ------------------------------------------------------------------------ /proc, real trees

TREE = """
import os, subprocess, sys, time
children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "%s"])
            for _ in range(2)]
# A grandchild in a session of its own: still in the tree.
children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "%s"],
                                 start_new_session=True))
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def process_tree() -> Iterator[subprocess.Popen[str]]:
    marker = f"dev8-test-tree-{os.getpid()}"
    leader = subprocess.Popen(
        [sys.executable, "-c", TREE % (marker, marker), marker],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert leader.stdout is not None
        assert leader.stdout.readline().strip() == "ready"
        yield leader
    finally:
        children = subprocess.run(
            ["pgrep", "-f", marker], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        leader.kill()
        leader.wait()
        if leader.stdout is not None:
            leader.stdout.close()


def test_service_figures_sum_the_whole_process_tree(
    process_tree: subprocess.Popen[str],
) -> None:
    figures = service_figures({process_tree.pid: "tree"})["tree"]
    leader_only = _leader_rss(process_tree.pid)
    assert figures.processes == 4
    assert figures.threads >= 4
    assert figures.memory_bytes > leader_only  # the children's memory counts too
    assert figures.open_fds is not None
    assert figures.open_fds >= 4 * 3  # stdin, stdout, stderr of each at least
    assert figures.cpu_seconds > 0  # four Python start-ups


def _leader_rss(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
        stat = parse_proc_stat(handle.read())
    assert stat is not None
    return stat.rss_pages * os.sysconf("SC_PAGE_SIZE")


def test_a_service_whose_leader_is_gone_has_zero_figures() -> None:
    figures = service_figures({2**22 + 1: "gone"})
    assert figures == {"gone": ServiceFigures()}


# A leader that changes its tree on command; its child burns CPU in a second thread on SIGUSR1
# (and then creates the file named in its argv), so that a descendant runs while the leader sleeps.
BURNER = """
import pathlib, signal, subprocess, sys, threading, time
def burn():
    end = time.thread_time() + 0.3
    while time.thread_time() < end:
        pass
def on_signal(*_):
    thread = threading.Thread(target=burn)
    thread.start()
    thread.join()
    pathlib.Path(sys.argv[1]).touch()
signal.signal(signal.SIGUSR1, on_signal)
# A grandchild in a session of its own: in the tree only while its parent lives.
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", sys.argv[2]],
                              start_new_session=True)
print(grandchild.pid, flush=True)
while True:
    time.sleep(60)
"""

DRIVEN_LEADER = """
import subprocess, sys
child = None
blob = b""
for line in sys.stdin:
    word = line.split()
    if word[0] == "child":
        child = subprocess.Popen([sys.executable, "-c", sys.argv[1], word[1], word[2]],
                                 stdout=subprocess.PIPE, text=True)
        print(child.pid, child.stdout.readline().strip(), flush=True)
    elif word[0] == "grow":
        blob = b"x" * (48 << 20)  # written: resident
        print("grown", flush=True)
    elif word[0] == "reap":
        print(child.wait(), flush=True)
"""


@pytest.fixture
def driven_leader() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """DRIVEN_LEADER in a session of its own, and the marker in its tree's command lines."""
    marker = f"dev8-test-driven-{os.getpid()}"
    leader = subprocess.Popen(
        [sys.executable, "-c", DRIVEN_LEADER, BURNER, marker],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield leader, marker
    finally:
        for pid in pids_with_marker(marker):
            os.kill(pid, signal.SIGKILL)
        leader.kill()
        leader.wait()
        for pipe in (leader.stdin, leader.stdout):
            if pipe is not None:
                pipe.close()


async def test_the_sampler_reads_again_only_what_ran_and_misses_no_change(
    tmp_path: Path, driven_leader: tuple[subprocess.Popen[str], str]
) -> None:
    """Sample after sample, a kept ``ProcessSampler`` gives what reading every process gives:
    through a child and a grandchild appearing, a descendant burning CPU in a second thread
    while the leader sleeps, the leader's memory growing, the child's death (a zombie; its
    grandchild, of another session, leaves the tree) and its reaping. And an idle tree costs no
    stat read at all."""
    leader, marker = driven_leader
    burnt = tmp_path / "burnt"
    leaders = {leader.pid: "driven"}
    sampler = ProcessSampler(refresh_every=0)  # no re-reading of idle processes: clocks alone

    def ask(command: str) -> list[str]:
        assert leader.stdin is not None
        assert leader.stdout is not None
        leader.stdin.write(command + "\n")
        leader.stdin.flush()
        return leader.stdout.readline().split()

    async def agree(what: str) -> ServiceFigures:
        """The kept sampler ends up where a fresh full read is (a missed change never does)."""
        seen: list[ServiceFigures] = []

        def same() -> bool:
            kept = sampler.sample(leaders)["driven"]
            seen[:] = [kept]
            return kept == service_figures(leaders)["driven"]

        await wait_until(same, timeout=10, what=f"the kept sampler to agree {what}")
        return seen[0]

    def idle_sample_reads_nothing() -> bool:
        sampler.sample(leaders)
        return sampler.stats_read == 0

    first = await agree("at the start")
    assert first.processes == 1
    child, _grandchild = map(int, ask(f"child {burnt} {marker}"))
    with_child = await agree("with a child and a grandchild")
    assert with_child.processes == 3
    await wait_until(
        idle_sample_reads_nothing, timeout=10, what="a sample of the idle tree reading no stat"
    )
    os.kill(child, signal.SIGUSR1)
    await wait_until(burnt.exists, timeout=20, what="the child's burn")
    burnt_figures = await agree("after the child burnt CPU while the leader slept")
    assert burnt_figures.cpu_seconds >= with_child.cpu_seconds + 0.25
    assert ask("grow") == ["grown"]
    grown = await agree("after the leader grew")
    assert grown.memory_bytes >= burnt_figures.memory_bytes + (40 << 20)
    os.kill(child, signal.SIGKILL)
    await wait_until(lambda: _state(child) == "Z", timeout=10, what="the child to become a zombie")
    orphaned = await agree("after the child died, its grandchild orphaned")
    assert orphaned.processes == 2  # the leader and its zombie child
    assert ask("reap") == ["-9"]
    reaped = await agree("after the leader reaped its child")
    assert reaped.processes == 1


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return handle.read().rpartition(b")")[2].split()[0].decode()


def test_idle_processes_are_read_again_within_refresh_every_samples(
    process_tree: subprocess.Popen[str],
) -> None:
    """The kernel may reclaim a sleeping process's memory: a slice is read again each sample."""
    leaders = {process_tree.pid: "tree"}
    sampler = ProcessSampler(refresh_every=2)
    sampler.sample(leaders)
    read = 0
    for _ in range(2):
        sampler.sample(leaders)
        read += sampler.stats_read
    assert read >= 4  # each of the tree's four processes once (more if one ran meanwhile)


# ------------------------------------------------------------------------- cgroups

V2_FILES = {
    "memory.current": "7340032\n",
    "memory.max": "536870912\n",
    "memory.events": "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n",
    "cpu.stat": (
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\n"
        "nr_throttled 7\nthrottled_usec 350000\nnr_bursts 0\nburst_usec 0\n"
    ),
    "cpu.max": "50000 100000\n",
}


def _lay_out(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="ascii")
    return directory


def test_cgroup_v2_figures_from_a_tree_of_real_file_formats(tmp_path: Path) -> None:
    group = _lay_out(tmp_path / "sys/fs/cgroup/workspace", V2_FILES)
    proc_cgroup = "0::/workspace\n"
    mountinfo = f"30 23 0:26 / {tmp_path}/sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    hierarchy = detect_hierarchy(proc_cgroup, mountinfo)
    assert hierarchy == Hierarchy(version=2, v2=str(group))
    figures = CgroupFiles(hierarchy).container()
    assert figures == ContainerFigures(
        memory_bytes=7340032,
        memory_limit_bytes=536870912,
        cpu_seconds=2.5,
        cpu_limit_cores=0.5,
        throttled_periods=7,
        throttled_seconds=0.35,
        oom_kills=2,
    )
    assert CgroupFiles(hierarchy).oom_kills() == 2


def test_cgroup_v2_unlimited_is_null(tmp_path: Path) -> None:
    group = _lay_out(tmp_path, {**V2_FILES, "memory.max": "max\n", "cpu.max": "max 100000\n"})
    figures = CgroupFiles(Hierarchy(version=2, v2=str(group))).container()
    assert figures.memory_limit_bytes is None
    assert figures.cpu_limit_cores is None
    assert figures.memory_bytes == 7340032


def test_a_missing_cgroup_file_is_unknown_with_one_warning(tmp_path: Path) -> None:
    files = {k: v for k, v in V2_FILES.items() if k not in ("memory.current", "memory.events")}
    group = _lay_out(tmp_path, files)
    (group / "cpu.max").chmod(0)  # unreadable, unless root: then it still reads
    reader = CgroupFiles(Hierarchy(version=2, v2=str(group)))
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            figures = reader.container()
            assert figures.memory_bytes is None
            assert figures.oom_kills is None
            assert figures.cpu_seconds == 2.5  # what can be read still is
    warned = sorted(e["file"] for e in logs if e["event"] == "resource_unavailable")
    assert warned[:2] == [str(group / "memory.current"), str(group / "memory.events")]
    assert len(warned) == len(set(warned))  # once per file, however many samples


def test_no_cgroup_at_all_is_unknown_not_a_crash() -> None:
    with structlog.testing.capture_logs() as logs:
        reader = CgroupFiles(None)
        assert reader.container() == ContainerFigures()
        assert reader.container() == ContainerFigures()
    assert len([e for e in logs if e["event"] == "resource_unavailable"]) == 1


def test_cgroup_v1_live_on_this_machine() -> None:
    """This machine mounts v1 controllers: the figures come from them."""
    reader = CgroupFiles.detect()
    hierarchy = reader.hierarchy
    assert hierarchy is not None
    assert hierarchy.version == 1
    memory_dir = Path(hierarchy.v1["memory"])
    assert (memory_dir / "memory.usage_in_bytes").exists()
    figures = reader.container()
    assert figures.memory_bytes is not None
    assert figures.memory_bytes > 0
    assert figures.cpu_seconds is not None
    assert figures.cpu_seconds > 0
    assert figures.throttled_periods is not None
    assert figures.oom_kills is not None
    raw_limit = int((memory_dir / "memory.limit_in_bytes").read_text())
    assert figures.memory_limit_bytes == (None if raw_limit >= 1 << 62 else raw_limit)


def test_cgroup_v1_parser_on_real_formats() -> None:
    files = {
        ("memory", "memory.usage_in_bytes"): "1365356544\n",
        ("memory", "memory.limit_in_bytes"): "2147483648\n",
        ("memory", "memory.oom_control"): "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n",
        ("cpu", "cpu.cfs_quota_us"): "150000\n",
        ("cpu", "cpu.cfs_period_us"): "100000\n",
        ("cpu", "cpu.stat"): "nr_periods 10\nnr_throttled 3\nthrottled_time 2500000000\n",
        ("cpuacct", "cpuacct.usage"): "16357058914310\n",
    }
    figures = parse_v1_container(lambda c, n: files.get((c, n)))
    assert figures == ContainerFigures(
        memory_bytes=1365356544,
        memory_limit_bytes=2147483648,
        cpu_seconds=16357.05891431,
        cpu_limit_cores=1.5,
        throttled_periods=3,
        throttled_seconds=2.5,
        oom_kills=4,
    )
    unlimited = {**files, ("memory", "memory.limit_in_bytes"): "9223372036854771712\n"}
    unlimited[("cpu", "cpu.cfs_quota_us")] = "-1\n"
    figures = parse_v1_container(lambda c, n: unlimited.get((c, n)))
    assert figures.memory_limit_bytes is None
    assert figures.cpu_limit_cores is None


def test_a_service_cgroup_is_made_limited_and_removed() -> None:
    hierarchy = CgroupFiles.detect().hierarchy
    group = ServiceCgroup.create(hierarchy, "limited", memory=64 << 20, cpu=0.25)
    assert group is not None, "root on this machine may create v1 sub-groups"
    try:
        memory = Path(group.dirs["memory"])
        assert int((memory / "memory.limit_in_bytes").read_text()) == 64 << 20
        cpu = Path(group.dirs["cpu"])
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == 25_000
        assert group.oom_kills() == 0
    finally:
        group.remove()
    assert not memory.exists()
    assert not memory.parent.exists()  # dev8-<pid>, the last one gone


# ------------------------------------------------------------------------- the board

GIB = 1 << 30


def test_board_crosses_and_clears_memory_threshold_once_each() -> None:
    board = ResourceBoard(memory_limits={"web": 1000}, memory_threshold=0.8)
    container = ContainerFigures()
    events = board.update(0.0, 0.0, {"web": ServiceFigures(memory_bytes=900)}, container)
    assert events == [
        ResourceThresholdCrossed(
            scope="service", service="web", resource="memory", value=0.9, threshold=0.8
        )
    ]
    assert board.update(1.0, 1.0, {"web": ServiceFigures(memory_bytes=950)}, container) == []
    events = board.update(2.0, 2.0, {"web": ServiceFigures(memory_bytes=100)}, container)
    assert [type(e) for e in events] == [ResourceThresholdCleared]


def test_board_cpu_against_the_service_cores_and_container_events() -> None:
    board = ResourceBoard(cpu_limits={"web": 0.5}, cpu_threshold=0.8)
    before = ContainerFigures(
        memory_bytes=GIB // 2,
        memory_limit_bytes=GIB,
        cpu_seconds=100.0,
        cpu_limit_cores=2.0,
        throttled_periods=5,
        throttled_seconds=1.0,
        oom_kills=0,
    )
    assert board.update(10.0, 0.0, {"web": ServiceFigures(cpu_seconds=1.0)}, before) == []
    after = ContainerFigures(
        memory_bytes=GIB - 1,
        memory_limit_bytes=GIB,
        cpu_seconds=101.0,  # half a core of two over the two seconds
        cpu_limit_cores=2.0,
        throttled_periods=8,
        throttled_seconds=1.25,
        oom_kills=1,
    )
    events = board.update(12.0, 2.0, {"web": ServiceFigures(cpu_seconds=1.9)}, after)
    assert ContainerCpuThrottled(periods=3, seconds=0.25) in events
    assert OomKilled(scope="container", service=None) in events
    crossed = {
        (e.scope, e.resource): e.value for e in events if isinstance(e, ResourceThresholdCrossed)
    }
    assert crossed == {("service", "cpu"): 0.9, ("container", "memory"): 1.0}
    snapshot = board.snapshot()
    assert snapshot["services"]["web"]["cpuUsage"] == 0.45
    assert snapshot["container"]["cpuUsage"] == 0.5


# ------------------------------------------------------------------------- the actor


async def test_sampler_actor_answers_sample_now_and_publishes_crossings(
    process_tree: subprocess.Popen[str],
) -> None:
    bus = EventBus(history=100)
    board = ResourceBoard(memory_limits={"tree": 1 << 20})  # 1 MiB: always over
    mailbox = Mailbox[SampleNow]("resources", capacity=4)
    spec = make_sampler_spec(
        board,
        mailbox,
        leaders=lambda: {process_tree.pid: "tree"},
        cgroup=CgroupFiles.detect(),
        interval=3600.0,  # only SampleNow samples after the first
    )
    supervisor = Supervisor("top", [spec], bus=bus)
    ctx = ChildContext(name="top", path="top", attempt=0, publish=bus.publish)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run, ctx)
        snapshot = await mailbox.call(SampleNow, timeout=10)
        nursery.cancel_scope.cancel()
    tree = snapshot["services"]["tree"]
    assert tree["processes"] == 4
    assert tree["memoryLimitBytes"] == 1 << 20
    assert snapshot["container"]["memoryBytes"] > 0
    crossed = [
        envelope.event
        for envelope in bus.history()
        if isinstance(envelope.event, ResourceThresholdCrossed)
        and envelope.event.service == "tree"
        and envelope.event.resource == "memory"  # (its CPU, starting, may cross too)
    ]
    assert len(crossed) == 1  # the first sample crossed; the second, still over, did not again
    assert crossed[0].source == "top/resources"
    assert crossed[0].value > 1.0


async def test_the_sampler_keeps_one_thread_for_its_life(
    process_tree: subprocess.Popen[str],
) -> None:
    """trio's thread cache lets an idle worker go after 10 s (the default interval): the sampler
    keeps its own, so that an idle sample does not start a thread; it ends with the sampler."""

    def own_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "dev8-resources"]

    assert own_threads() == []
    board = ResourceBoard()
    mailbox = Mailbox[SampleNow]("resources", capacity=4)
    spec = make_sampler_spec(
        board,
        mailbox,
        leaders=lambda: {process_tree.pid: "tree"},
        cgroup=CgroupFiles.detect(),
        interval=3600.0,
    )
    bus = EventBus(history=10)
    supervisor = Supervisor("top", [spec], bus=bus)
    ctx = ChildContext(name="top", path="top", attempt=0, publish=bus.publish)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run, ctx)
        first = own_threads()
        for _ in range(3):
            snapshot = await mailbox.call(SampleNow, timeout=10)
            assert snapshot["services"]["tree"]["processes"] == 4
        assert len(first) == 1
        assert own_threads() == first
        nursery.cancel_scope.cancel()
    await wait_until(lambda: not own_threads(), timeout=10, what="the sampler's thread to end")


# ------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("limits", "where", "expected"),
    [
        ({"memory": "12X"}, "memory", 'expected a size in bytes (an integer, or e.g. "512M"'),
        ({"memory": True}, "memory", "expected a size in bytes"),
        ({"memory": 1000}, "memory", "expected an integer >= 1.04858e+06"),
        ({"cpu": 0}, "cpu", "expected a number > 0"),
        ({"nofile": -1}, "nofile", "expected an integer >= 1"),
        ({"nproc": "many"}, "nproc", "expected an integer"),
        ({"swap": 1}, "swap", "unknown key"),
    ],
)
def test_bad_limits_name_file_field_and_expectation(
    tmp_path: Path, limits: dict[str, Any], where: str, expected: str
) -> None:
    path = tmp_path / "dev8.yaml"
    path.write_text(
        yaml.safe_dump({"services": {"web": {"command": ["true"], "limits": limits}}}),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert str(path) in message
    assert f"services.web.limits.{where}: {expected}" in message


def test_bad_limits_exit_2_from_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "dev8.yaml"
    path.write_text("services:\n  web:\n    command: [x]\n    limits: {memory: lots}\n")
    result = subprocess.run(
        [sys.executable, "-m", "dev8", "config", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "services.web.limits.memory" in result.stderr
    assert str(path) in result.stderr


def test_limits_accept_sizes_and_cores(tmp_path: Path) -> None:
    path = tmp_path / "dev8.yaml"
    path.write_text(
        "resources: {interval: 2.5, memory_threshold: 0.9}\n"
        "services:\n  web:\n    command: [x]\n    oom_score_adj: 500\n"
        "    limits: {memory: 1.5G, cpu: 0.5, nofile: 4096, nproc: 100}\n"
        "  api:\n    command: [x]\n    limits: {memory: 512Mi}\n"
        "  db:\n    command: [x]\n    limits: {memory: 67108864}\n"
    )
    config = load_config(str(path))
    web = config.services["web"].limits
    assert (web.memory, web.cpu, web.nofile, web.nproc) == (3 * (1 << 29), 0.5, 4096, 100)
    assert config.services["api"].limits.memory == 512 << 20
    assert config.services["db"].limits.memory == 64 << 20
    assert config.services["web"].oom_score_adj == 500
    assert (config.resources.interval, config.resources.memory_threshold) == (2.5, 0.9)


def test_limits_prefix_keeps_the_spawn_a_chain_of_execs() -> None:
    limits = Limits(memory=64 << 20, nofile=256, nproc=50, oom_score_adj=300)
    prefix = _limits_prefix(limits, in_cgroup=False)
    assert prefix[0].endswith("prlimit")
    assert prefix[1:5] == [f"--as={64 << 20}", "--nofile=256", "--nproc=50", "--"]
    assert prefix[5].endswith("choom")
    assert prefix[6:] == ["-n", "300", "--"]
    # With a sub-group the kernel limits memory itself: no address-space rlimit.
    assert not any(p.startswith("--as=") for p in _limits_prefix(limits, in_cgroup=True))
    # The score dev8 already has is inherited: no choom.
    assert _limits_prefix(Limits(oom_score_adj=_own_score()), in_cgroup=False) == []


def _own_score() -> int:
    with open("/proc/self/oom_score_adj", encoding="ascii") as handle:
        return int(handle.read())


# ------------------------------------------------------------------------- end to end

HOG = """
import sys
print("allocating", flush=True)
chunks = []
for _ in range(64):
    chunks.append(b"x" * (8 << 20))  # 512 MiB in all, touched
print("survived", flush=True)
"""

TREE_SERVICE = """
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", sys.argv[1]])
        for _ in range(2)]
print("up", flush=True)
time.sleep(120)
"""


def _metric(scrape: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def test_oom_kill_limits_and_figures_end_to_end(tmp_path: Path) -> None:
    """A service over its memory limit is OOM-killed in its own cgroup: reason `oom` everywhere;
    another service's tree is measured whole, carries its rlimits and its OOM score."""
    port = free_port()
    marker = f"dev8-res-e2e-{os.getpid()}"
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "hog": python_service(HOG, marker, restart="temporary", limits={"memory": "64M"}),
            "tree": python_service(
                TREE_SERVICE,
                marker,
                limits={"nofile": 300, "cpu": 0.5, "memory": "1G"},
                oom_score_adj=300,
            ),
        },
        port=port,
    )
    data = yaml.safe_load(config.read_text())
    data["resources"] = {"interval": 0.2}
    config.write_text(yaml.safe_dump(data))
    async with open_dev8(config, port=port, marker=marker) as dev8:
        exited = await dev8.wait_log(
            lambda e: e.get("message") == "child_exited" and e.get("child") == "hog",
            timeout=30,
            what="hog's exit",
        )
        assert exited["reason"] == "oom"
        assert exited["details"]["signal"] == "SIGKILL"
        assert dev8.messages("oom_killed", service="hog", scope="service")

        async def status() -> dict[str, Any]:
            response = await dev8.http.get("/status")
            assert response.status_code == 200
            return dict(response.json())

        async def measured() -> bool:
            tree = (await status())["services"]["tree"]["resources"]
            return bool(tree["processes"] == 3)

        with trio.fail_after(20):
            while not await measured():  # noqa: ASYNC110 - the sampler's figures: poll the API
                await trio.sleep(0.1)
        document = await status()
        hog = document["services"]["hog"]
        assert hog["lastExit"]["reason"] == "oom"
        assert hog["resources"]["oomKills"] == 1
        tree = document["services"]["tree"]
        assert tree["resources"]["memoryLimitBytes"] == 1 << 30
        assert tree["resources"]["cpuLimitCores"] == 0.5
        assert tree["resources"]["threads"] >= 3
        assert document["resources"]["container"]["memoryBytes"] > 0
        assert document["resources"]["interval"] == 0.2

        pid = tree["pid"]
        limits = await trio.Path(f"/proc/{pid}/limits").read_text()
        assert re.search(r"Max open files\s+300\s+300", limits)
        assert (await trio.Path(f"/proc/{pid}/oom_score_adj").read_text()).strip() == "300"
        dev8_pid = await dev8.dev8_pid()
        cgroups = await trio.Path(f"/proc/{pid}/cgroup").read_text()
        memory_group = re.search(rf"memory:(.*/dev8-{dev8_pid}-[0-9a-f]+)/tree$", cgroups, re.M)
        assert memory_group is not None, cgroups
        assert re.search(rf"cpu:.*/dev8-{dev8_pid}-[0-9a-f]+/tree$", cgroups, re.MULTILINE)

        scrape = (await dev8.http.get("/metrics")).text
        lint = await trio.run_process(
            ["promtool", "check", "metrics"], stdin=scrape.encode(), capture_stdout=True,
            capture_stderr=True, check=False,
        )  # fmt: skip
        assert lint.returncode == 0, lint.stdout + lint.stderr
        assert _metric(scrape, "dev8_service_oom_kills_total", service="hog") == 1.0
        assert _metric(scrape, "dev8_service_processes", service="tree") == 3.0
        assert _metric(scrape, "dev8_service_memory_limit_bytes", service="tree") == 1 << 30
        assert (_metric(scrape, "dev8_service_memory_bytes", service="tree") or 0) > 0
        assert _metric(scrape, "dev8_container_memory_bytes") is not None
        assert _metric(scrape, "dev8_container_oom_kills_total") is not None
        mount = next(
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()  # noqa: ASYNC240
            if line.endswith(",memory") and " cgroup " in line
        )
        memory_dir = Path(mount + memory_group[1])
        assert memory_dir.is_dir()  # noqa: ASYNC240 - a cgroupfs stat
    await wait_until(
        lambda: not memory_dir.exists(), timeout=10, what="the service sub-groups removed"
    )


def test_oom_scores_put_the_users_services_first() -> None:
    cgroup = CgroupFiles.detect()
    service = ServiceConfig(command=("x",))
    assert limits_of(service, cgroup).oom_score_adj == DEFAULT_OOM_SCORE_ADJ == 0
    assert limits_of(attrs.evolve(service, oom_score_adj=700), cgroup).oom_score_adj == 700
    code = limits_of(ServiceConfig(builtin="code-server"), cgroup).oom_score_adj
    sshd = limits_of(ServiceConfig(builtin="sshd"), cgroup).oom_score_adj
    assert code is not None
    assert sshd is not None
    assert DEV8_OOM_SCORE_ADJ < sshd < code < DEFAULT_OOM_SCORE_ADJ


async def test_as_pid1_dev8_protects_itself_and_scores_its_services(tmp_path: Path) -> None:
    port = free_port()
    marker = f"dev8-res-pid1-{os.getpid()}"
    config = write_config(
        tmp_path / "dev8.yaml",
        {
            "web": python_service("import time; time.sleep(120)", marker),
            "batch": python_service("import time; time.sleep(120)", marker, oom_score_adj=500),
        },
        port=port,
    )
    async with open_dev8(config, port=port, prefix=UNSHARE_PID1, marker=marker) as dev8:
        dev8_pid = await dev8.dev8_pid()
        own = int(await trio.Path(f"/proc/{dev8_pid}/oom_score_adj").read_text())
        if may_lower_oom_score():
            assert own == DEV8_OOM_SCORE_ADJ
        else:  # this machine: root without CAP_SYS_RESOURCE may only raise scores
            assert own == 0
            assert dev8.messages("oom_score_adj_unset", error="Permission denied")
        await wait_until(
            lambda: len(pids_with_marker(marker)) == 2, timeout=10, what="the services' processes"
        )
        scores = set()
        for pid in pids_with_marker(marker):
            scores.add(int(await trio.Path(f"/proc/{pid}/oom_score_adj").read_text()))
        # The default (0): not dev8's -999, which it would inherit; and a configured score.
        assert scores == {DEFAULT_OOM_SCORE_ADJ, 500}


def test_a_lower_score_than_allowed_does_not_break_the_start() -> None:
    """Without CAP_SYS_RESOURCE, choom -n -900 would fail the spawn: sshd keeps dev8's score."""
    limits = Limits(oom_score_adj=-900)
    prefix = _limits_prefix(limits, in_cgroup=False)
    result = subprocess.run(
        [*prefix, "cat", "/proc/self/oom_score_adj"], capture_output=True, text=True, check=True
    )
    expected = -900 if may_lower_oom_score() else _own_score()
    assert int(result.stdout) == expected


def test_a_v2_service_group_writes_the_v2_limit_formats(tmp_path: Path) -> None:
    """On a v2 tree (laid out here: this machine's v2 mount has no controllers) the limits are
    `memory.max` and `cpu.max` ("QUOTA PERIOD"), the OOM count `memory.events`' oom_kill."""
    _lay_out(tmp_path, {"cgroup.subtree_control": ""})
    group = ServiceCgroup.create(
        Hierarchy(version=2, v2=str(tmp_path)), "web", memory=64 << 20, cpu=0.5, parent="dev8-x"
    )
    assert group is not None
    leaf = tmp_path / "dev8-x" / "web"
    assert (leaf / "memory.max").read_text() == str(64 << 20)
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +cpu"
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert group.oom_kills() == 1


def test_without_a_sub_group_memory_is_an_address_space_rlimit() -> None:
    """The fallback where no cgroup may be made: an allocation over the limit fails (no OOM)."""
    prefix = _limits_prefix(Limits(memory=256 << 20, nofile=64), in_cgroup=False)
    code = (
        "from resource import *\n"
        "print(getrlimit(RLIMIT_AS)[0], getrlimit(RLIMIT_NOFILE)[0])\n"
        "try:\n    bytearray(512 << 20)\nexcept MemoryError:\n    print('MemoryError')\n"
    )
    result = subprocess.run(
        [*prefix, sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == [str(256 << 20), "64", "MemoryError"]


async def test_behind_the_limits_prefix_a_bad_command_is_still_a_spawn_error(
    tmp_path: Path,
) -> None:
    """prlimit would exec it and exit 126: dev8 resolves the program first, as Popen would."""
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)  # not executable
    ctx = ChildContext(name="svc", path="test/svc", attempt=0, publish=lambda event: None)
    settings = ProcessSettings(command=[str(script)], limits=Limits(nofile=64))
    with pytest.raises(SpawnError, match="Permission denied"):
        await run_process(ctx, settings, own=OwnPids())
