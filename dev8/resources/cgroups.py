"""The container's cgroup (v1 or v2): its figures, and one sub-group per service with limits.

Which version is found from ``/proc/self/cgroup`` and ``/proc/self/mountinfo``: a v1 ``memory``
hierarchy wins (hybrid hosts mount an empty v2 tree beside v1 controllers, as this CI machine
does); else the v2 tree. A file that cannot be read is ``None`` ("unknown"), with one warning per
file for the life of the reader: a missing controller must not fill the log every interval.

Parsing is pure (file text in, numbers out); only ``CgroupFiles`` touches the file system, and
only off the event loop (the sampler calls it from a thread).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import structlog

__all__ = [
    "CgroupFiles",
    "ContainerFigures",
    "Hierarchy",
    "ServiceCgroup",
    "detect_hierarchy",
    "parse_flat_keyed",
    "parse_v1_container",
    "parse_v2_container",
]

#: v1 prints "no limit" as the largest page-aligned 64-bit number; anything this big is unlimited.
_V1_UNLIMITED = 1 << 62


@attrs.frozen(kw_only=True)
class ContainerFigures:
    """The container's figures; ``None`` where unknown (or, for limits, unlimited)."""

    memory_bytes: int | None = None
    memory_limit_bytes: int | None = None
    cpu_seconds: float | None = None
    cpu_limit_cores: float | None = None
    throttled_periods: int | None = None
    throttled_seconds: float | None = None
    oom_kills: int | None = None


def parse_flat_keyed(text: str | None) -> dict[str, int]:
    """``key value`` lines (cpu.stat, memory.events, memory.oom_control); bad lines skipped."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value.strip())
    return out


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _v2_max(text: str | None) -> int | None:
    """``memory.max``: a number, or ``max`` (unlimited: None)."""
    return None if text is None or text.strip() == "max" else _int(text)


def _v2_cpu_max(text: str | None) -> float | None:
    """``cpu.max``: ``QUOTA PERIOD`` in µs, QUOTA ``max`` when unlimited."""
    if text is None:
        return None
    quota, _, period = text.strip().partition(" ")
    try:
        return None if quota == "max" else int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def parse_v2_container(read: Callable[[str], str | None]) -> ContainerFigures:
    """From a v2 group's files (``read(name)``: its text, or None when unreadable)."""
    cpu_text = read("cpu.stat")
    cpu = parse_flat_keyed(cpu_text)
    events_text = read("memory.events")
    events = parse_flat_keyed(events_text)
    return ContainerFigures(
        memory_bytes=_int(read("memory.current")),
        memory_limit_bytes=_v2_max(read("memory.max")),
        cpu_seconds=cpu["usage_usec"] / 1e6 if "usage_usec" in cpu else None,
        cpu_limit_cores=_v2_cpu_max(read("cpu.max")),
        throttled_periods=cpu.get("nr_throttled"),
        throttled_seconds=cpu["throttled_usec"] / 1e6 if "throttled_usec" in cpu else None,
        oom_kills=events.get("oom_kill") if events_text is not None else None,
    )


def parse_v1_container(read: Callable[[str, str], str | None]) -> ContainerFigures:
    """From v1 controllers' files (``read(controller, name)``)."""
    limit = _int(read("memory", "memory.limit_in_bytes"))
    quota = _int(read("cpu", "cpu.cfs_quota_us"))
    period = _int(read("cpu", "cpu.cfs_period_us"))
    usage = _int(read("cpuacct", "cpuacct.usage"))
    cpu = parse_flat_keyed(read("cpu", "cpu.stat"))
    oom = parse_flat_keyed(read("memory", "memory.oom_control"))
    return ContainerFigures(
        memory_bytes=_int(read("memory", "memory.usage_in_bytes")),
        memory_limit_bytes=None if limit is None or limit >= _V1_UNLIMITED else limit,
        cpu_seconds=None if usage is None else usage / 1e9,
        cpu_limit_cores=quota / period if quota and quota > 0 and period else None,
        throttled_periods=cpu.get("nr_throttled"),
        throttled_seconds=cpu["throttled_time"] / 1e9 if "throttled_time" in cpu else None,
        # Kernels before 4.13 have no oom_kill line: unknown, not zero.
        oom_kills=oom.get("oom_kill"),
    )


@attrs.frozen(kw_only=True)
class Hierarchy:
    """Where dev8's own cgroup is: ``version`` 2 with ``v2`` set, or 1 with a directory per
    controller in ``v1`` (memory, cpu, cpuacct)."""

    version: int
    v2: str | None = None
    v1: Mapping[str, str] = attrs.field(factory=dict)


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(fstype, root, mount point, super options) of each cgroup mount."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] in ("cgroup", "cgroup2"):
            found.append((tail[0], fields[3], fields[4], set(tail[2].split(","))))
    return found


def _join(mount_point: str, root: str, path: str) -> str:
    """The directory of cgroup ``path`` under a mount of ``root`` (a namespaced mount's root is
    the group itself: the path is then the mount point)."""
    relative = os.path.relpath(path, root) if path.startswith(root) else "."
    return os.path.normpath(os.path.join(mount_point, relative))


def detect_hierarchy(proc_cgroup: str, mountinfo: str) -> Hierarchy | None:
    """dev8's cgroup directories, from ``/proc/self/cgroup`` and ``/proc/self/mountinfo``."""
    paths: dict[str, str] = {}
    v2_path: str | None = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        for controller in parts[1].split(","):
            if controller:
                paths[controller] = parts[2]
    v1: dict[str, str] = {}
    v2: str | None = None
    for fstype, root, point, options in _mounts(mountinfo):
        if fstype == "cgroup":
            for controller in ("memory", "cpu", "cpuacct"):
                if controller in options and controller in paths:
                    v1[controller] = _join(point, root, paths[controller])
        elif v2_path is not None:
            v2 = _join(point, root, v2_path)
    if "memory" in v1:
        return Hierarchy(version=1, v1=v1)
    if v2 is not None:
        return Hierarchy(version=2, v2=v2)
    return None


class CgroupFiles:
    """Reads the container's figures; each unreadable file warns once, then is quietly None."""

    def __init__(self, hierarchy: Hierarchy | None, *, log: Any = None) -> None:
        self.hierarchy = hierarchy
        self._warned: set[str] = set()
        self._log = log if log is not None else structlog.get_logger("dev8.resources.sampler")

    @classmethod
    def detect(cls, proc: str = "/proc") -> CgroupFiles:
        try:
            with open(os.path.join(proc, "self", "cgroup"), encoding="utf-8") as handle:
                own = handle.read()
            with open(os.path.join(proc, "self", "mountinfo"), encoding="utf-8") as handle:
                mounts = handle.read()
        except OSError:
            return cls(None)
        return cls(detect_hierarchy(own, mounts))

    def read_file(self, path: str) -> str | None:
        try:
            with open(path, encoding="ascii") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as error:
            if path not in self._warned:
                self._warned.add(path)
                reason = errno.errorcode.get(getattr(error, "errno", 0) or 0, type(error).__name__)
                self._log.warning("resource_unavailable", file=path, error=reason)
            return None

    def oom_kills(self) -> int | None:
        """The container's OOM kills so far (one small read; fine on the event loop)."""
        hierarchy = self.hierarchy
        if hierarchy is None:
            return None
        if hierarchy.version == 2:
            assert hierarchy.v2 is not None
            path, key = os.path.join(hierarchy.v2, "memory.events"), "oom_kill"
        else:
            path, key = os.path.join(hierarchy.v1["memory"], "memory.oom_control"), "oom_kill"
        text = self.read_file(path)
        return None if text is None else parse_flat_keyed(text).get(key)

    def container(self) -> ContainerFigures:
        """The figures now (blocking: call from a thread)."""
        hierarchy = self.hierarchy
        if hierarchy is None:
            if "cgroup" not in self._warned:
                self._warned.add("cgroup")
                self._log.warning("resource_unavailable", file="/proc/self/cgroup", error="none")
            return ContainerFigures()
        if hierarchy.version == 2:
            assert hierarchy.v2 is not None
            base = hierarchy.v2
            return parse_v2_container(lambda name: self.read_file(os.path.join(base, name)))
        dirs = hierarchy.v1

        def read_v1(controller: str, name: str) -> str | None:
            directory = dirs.get(controller) or dirs.get(
                "cpu" if controller == "cpuacct" else "cpuacct"
            )
            return None if directory is None else self.read_file(os.path.join(directory, name))

        return parse_v1_container(read_v1)


@attrs.define
class ServiceCgroup:
    """A service's own sub-group (``<parent>/<service>`` under dev8's group), where dev8 may
    create one: memory and CPU limits the kernel enforces on the whole process tree, and an OOM
    counter of the service's own (its OOM kills told apart from the container's)."""

    dirs: dict[str, str]  # controller ("memory", "cpu"; "unified" on v2) -> directory
    version: int

    @classmethod
    def create(
        cls,
        hierarchy: Hierarchy | None,
        service: str,
        *,
        memory: int | None,
        cpu: float | None,
        parent: str | None = None,
    ) -> ServiceCgroup | None:
        """Blocking; None when dev8 may not create sub-groups here (not root, read-only ...).

        ``parent``: the group of this run of dev8 (``dev8-<pid>`` by default; as PID 1 every dev8
        is pid 1, and a v1 hierarchy mounted at its root is shared by the host's containers)."""
        if hierarchy is None:
            return None
        group = os.path.join(parent or f"dev8-{os.getpid()}", service)
        dirs: dict[str, str] = {}
        if hierarchy.version == 2:
            assert hierarchy.v2 is not None
            dirs["unified"] = os.path.join(hierarchy.v2, group)
            # The controllers must be enabled down the path. dev8's own group holds dev8, and v2
            # keeps processes in leaves only: there the write fails (EBUSY) unless the group is
            # a namespace's root or already delegates them; the limits' files are then missing
            # and the service runs with rlimits alone.
            parent_dir = os.path.dirname(dirs["unified"])
            with contextlib.suppress(OSError):
                os.makedirs(parent_dir, exist_ok=True)
            for directory in (hierarchy.v2, parent_dir):
                with (
                    contextlib.suppress(OSError),
                    open(
                        os.path.join(directory, "cgroup.subtree_control"), "w", encoding="ascii"
                    ) as handle,
                ):
                    handle.write("+memory +cpu")
        else:
            for controller in ("memory", "cpu"):
                if controller in hierarchy.v1:
                    dirs[controller] = os.path.join(hierarchy.v1[controller], group)
        made = cls(dirs, hierarchy.version)
        try:
            for directory in dirs.values():
                os.makedirs(directory, exist_ok=True)
            made._set_limits(memory, cpu)
        except OSError:
            made.remove()
            return None
        return made

    def _write(self, controller: str, name: str, value: str) -> None:
        directory = self.dirs.get("unified" if self.version == 2 else controller)
        if directory is not None:
            with open(os.path.join(directory, name), "w", encoding="ascii") as handle:
                handle.write(value)

    def _set_limits(self, memory: int | None, cpu: float | None) -> None:
        period = 100_000
        if self.version == 2:
            self._write("memory", "memory.max", str(memory) if memory else "max")
            quota = f"{int(cpu * period)} {period}" if cpu else f"max {period}"
            self._write("cpu", "cpu.max", quota)
            return
        if memory:
            self._write("memory", "memory.limit_in_bytes", str(memory))
        if cpu:
            self._write("cpu", "cpu.cfs_period_us", str(period))
            self._write("cpu", "cpu.cfs_quota_us", str(int(cpu * period)))

    def add(self, pid: int) -> None:
        """Move a process (and so the children it starts from now on) into the group."""
        for directory in self.dirs.values():
            with open(os.path.join(directory, "cgroup.procs"), "w", encoding="ascii") as handle:
                handle.write(str(pid))

    def oom_kills(self) -> int | None:
        """The OOM killer's kills in this group so far."""
        if self.version == 2:
            name, controller = "memory.events", "unified"
        else:
            name, controller = "memory.oom_control", "memory"
        directory = self.dirs.get(controller)
        if directory is None:
            return None
        try:
            with open(os.path.join(directory, name), encoding="ascii") as handle:
                return parse_flat_keyed(handle.read()).get("oom_kill")
        except OSError:
            return None

    def remove(self) -> None:
        """Remove the group (empty once the service's processes are gone), and dev8's parent
        group when it is the last."""
        for directory in self.dirs.values():
            with contextlib.suppress(OSError):
                os.rmdir(directory)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(directory))
