"""The history of a migration under a fault, not only its end: a sampler that reads both lab hosts' runc state
every few milliseconds and counts the samples in which the container runs (not frozen) on both hosts at once.

The hosts share this machine's files, so the sampler reads runc's own state (``<root>/<id>/state.json``: the init
pid and its start time, the freezer cgroup) the way ``runc list`` computes a status, without a process per sample:
a container "runs" when its init process is alive (same start time, not a zombie, not stopped by a tracer, no
SIGKILL pending) and its cgroup is not frozen. On the destination, any container that was not there when sampling
began counts; on the source, the migrating container. Each sample reads the destination, then the source, then the destination again,
and counts as "both" only if all three say running: the destination's copy runs over an interval, so that proves
both ran at the moment the source was read.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

INTERVAL = 0.005   # seconds between samples (each takes well under a millisecond)


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _frozen(state: dict) -> bool:
    paths = state.get("cgroup_paths") or {}
    if paths.get("freezer"):   # cgroup v1
        try:
            return Path(paths["freezer"], "freezer.state").read_text().strip() != "THAWED"
        except OSError:
            return False
    unified = paths.get("") or ""
    try:
        return "frozen 1" in Path(unified, "cgroup.events").read_text()
    except OSError:
        return False


def _killed(pid: int) -> bool:
    """SIGKILL is pending: the task dies on its way back to user mode and runs no instruction of its own (how the
    source lets go of its frozen copy: kill, then thaw)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            masks = [int(line.split()[1], 16) for line in f if line.startswith(("SigPnd:", "ShdPnd:"))]
    except (OSError, ValueError, IndexError):
        return True   # gone
    return any(m & (1 << 8) for m in masks)


def runs(state_dir: Path) -> bool:
    """Does the runc container whose state is in ``state_dir`` run its own code (alive, not frozen, not killed)?"""
    try:
        state = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return False
    fields = _stat(int(state.get("init_process_pid") or 0))
    if not fields or fields[0] in ("Z", "X", "t", "T"):
        return False
    if int(fields[19]) != int(state.get("init_process_start") or -1):
        return False
    return not _frozen(state) and not _killed(int(state["init_process_pid"]))


def runc_roots(exec_root: Path) -> list[Path]:
    """Where a dockerd keeps runc's state: Docker 20.10 under runtime-runc for every runc-based runtime, later
    releases under each runtime's own name (the destination's container runs under cmigrate-runc)."""
    return [exec_root / f"runtime-{name}" / "moby" for name in ("runc", "cmigrate-runc")]


class Sampling:
    """The ``with`` block of a sampler: ``_ready`` (set up, and refuse to watch nothing), then ``_loop`` in a
    thread until the block ends and sets ``_done``."""

    def _ready(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._ready()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


@dataclass
class TwiceWatch(Sampling):
    """Sample, in a thread, while in its ``with``: container ``container_id`` on the source (dockerd exec-root
    ``src_exec_root``), every new container of the destination's dockerd (``dst_exec_root``). ``samples`` counts
    them all, ``both`` those in which the container ran on both hosts."""

    src_exec_root: Path
    container_id: str
    dst_exec_root: Path
    samples: int = 0
    both: int = 0
    first_both: float | None = None          # seconds after start of the first "both" sample
    src_ran: int = 0
    dst_ran: int = 0
    _known: set[str] = field(default_factory=set)
    _done: threading.Event = field(default_factory=threading.Event)

    def _dst_dirs(self) -> list[Path]:
        found = []
        for root in runc_roots(self.dst_exec_root):
            try:
                found += list(root.iterdir())
            except OSError:
                pass
        return found

    def _dst_runs(self) -> bool:
        return any(runs(d) for d in self._dst_dirs() if d.name not in self._known)

    def _src_runs(self) -> bool:
        return any(runs(root / self.container_id) for root in runc_roots(self.src_exec_root))

    def _loop(self) -> None:
        started = time.monotonic()
        while not self._done.is_set():
            b1 = self._dst_runs()
            a = self._src_runs()
            b2 = self._dst_runs()
            self.samples += 1
            self.src_ran += a
            self.dst_ran += b1 and b2
            if a and b1 and b2:
                self.both += 1
                if self.first_both is None:
                    self.first_both = time.monotonic() - started
            self._done.wait(INTERVAL)

    def _ready(self) -> None:
        self._known = {d.name for d in self._dst_dirs()}
        if not self._src_runs():
            raise AssertionError(f"the sampler sees no running container {self.container_id[:12]} under "
                                 f"{self.src_exec_root}: it would watch nothing")

    def summary(self) -> str:
        return (f"{self.samples} samples: source ran in {self.src_ran}, destination in {self.dst_ran}, "
                f"both in {self.both}" + (f" (first at {self.first_both:.2f} s)" if self.both else ""))
