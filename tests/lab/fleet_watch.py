"""A sampler for fleet moves: which lab host runs each of a set of containers, every few milliseconds, and whether
any ever ran on two hosts at once.

Containers are told apart by an environment variable (``FLEET_NAME``) read from their init process's
/proc/PID/environ: CRIU restores the process's memory, environment included, so the copy on a destination carries
the name the original had (its runc id does not). As in tests/faults/history.py, a sample reads every host, then
every host again, and counts a container as on two hosts only if both reads say so for both.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from migrate import lab
from tests.faults.history import INTERVAL, Sampling, runc_roots, runs

VAR = b"FLEET_NAME="


def _name(state_dir: Path) -> str | None:
    try:
        pid = int(json.loads((state_dir / "state.json").read_text()).get("init_process_pid") or 0)
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (OSError, ValueError):
        return None
    for item in environ.split(b"\0"):
        if item.startswith(VAR):
            return item[len(VAR):].decode(errors="replace")
    return None


def running_names(exec_root: Path) -> set[str]:
    """The FLEET_NAMEs of the containers that run (alive, not frozen) under this dockerd."""
    found = set()
    for root in runc_roots(exec_root):
        try:
            dirs = list(root.iterdir())
        except OSError:
            continue
        for d in dirs:
            if runs(d):
                name = _name(d)
                if name:
                    found.add(name)
    return found


@dataclass
class FleetWatch(Sampling):
    names: set[str]
    samples: int = 0
    twice: dict[str, int] = field(default_factory=dict)      # name -> samples on two hosts at once
    seen_on: dict[str, set[str]] = field(default_factory=dict)   # name -> hosts it ran on
    _done: threading.Event = field(default_factory=threading.Event)

    def _read(self) -> dict[str, set[str]]:
        return {h.name: running_names(h.exec_root) & self.names for h in self._hosts}

    def _loop(self) -> None:
        while not self._done.is_set():
            first, second = self._read(), self._read()
            self.samples += 1
            for name in self.names:
                hosts = {h for h in first if name in first[h] and name in second[h]}
                for h in hosts:
                    self.seen_on.setdefault(name, set()).add(h)
                if len(hosts) > 1:
                    self.twice[name] = self.twice.get(name, 0) + 1
            self._done.wait(INTERVAL)

    def _ready(self) -> None:
        self._hosts = lab.hosts()
        missing = self.names - set().union(*self._read().values())
        if missing:
            raise AssertionError(f"the sampler sees no running {sorted(missing)}: it would watch nothing")

    def summary(self) -> str:
        return f"{self.samples} samples; on two hosts at once: {self.twice or 'never'}; seen on {self.seen_on}"
