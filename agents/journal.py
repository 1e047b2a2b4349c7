"""Who owns a migration on this host: the agent process named in its journal, and how a fresh agent stops it.

A fresh agent that rolls back a migration (``dest.abandon``: the CLI lost its own session, e.g. after Ctrl-C in
the middle of a call) must not race the agent that still works on it: that one may be about to restore the
container. It is stopped first, with every process it started (CRIU's page server, lazy-pages daemon). The
identity is the pid and the process's start time (/proc/PID/stat field 22), so a reused pid is never mistaken for
it. (The journal itself and the locks move here with the agents' split into source and destination.)
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

STOP_TIMEOUT = 10.0


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def identity(pid: int | None = None) -> dict:
    """This process (or ``pid``), as a journal records its owner."""
    pid = os.getpid() if pid is None else pid
    fields = _stat(pid) or []
    return {"agent_pid": pid, "agent_started": int(fields[19]) if len(fields) > 19 else None}


def _alive(owner: dict) -> bool:
    fields = _stat(int(owner.get("agent_pid") or 0))
    return bool(fields) and fields[0] != "Z" and owner.get("agent_started") is not None \
        and int(fields[19]) == owner["agent_started"]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_owner(owner: dict) -> bool:
    """SIGKILL the agent ``owner`` names (``identity()`` of it) and what it started, and wait until it is gone.
    False if there was nothing to stop (gone already, or it is this very process)."""
    pid = int(owner.get("agent_pid") or 0)
    if pid <= 1 or pid == os.getpid() or not _alive(owner):
        return False
    victims = [pid] + _descendants(pid)
    for p in victims:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(owner) and time.monotonic() < deadline:
        time.sleep(0.01)
    return True
