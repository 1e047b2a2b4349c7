"""A migration's records on this host: its work directory and journal, the container's migration lock, and the
agent process that owns it.

Work directories: ``<work root>/<id>-src`` and ``<id>-dst`` (the role keeps the two ends apart where hosts share a
disk), each with a ``journal.json`` written atomically and fsynced: what ``cmigrate recover`` reads to finish or
roll back a migration whose CLI died. The commit point is the destination's ``state: committed``.

Locks: one migration of a container at a time, an exclusive flock on ``/run/cmigrate/locks/<container id>`` held by
the source agent's process (the kernel drops it when that process exits, however it exits).

Owners: a fresh agent that rolls back a migration (``dest.abandon``: the CLI lost its own session, e.g. after Ctrl-C in
the middle of a call) must not race the agent that still works on it: that one may be about to restore the
container. It is stopped first, with every process it started (CRIU's page server, lazy-pages daemon). The
identity is the pid and the process's start time (/proc/PID/stat field 22), so a reused pid is never mistaken for
it.
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import signal
import time
from pathlib import Path

from agents import paths
from agents.paths import replace_json
from migrate.errors import MigrationError, PreflightError

JOURNAL = "journal.json"
CHECKPOINT = "migration"   # the images' directory in a work dir (Docker's checkpoint name there)
IMAGES = "images"          # archive prefix of the images in a transfer
PREDUMP_DIR = re.compile(r"pre-[1-9][0-9]?")   # pre-copy's iterations, beside CHECKPOINT
LOCKS = Path("/run/cmigrate/locks")

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


# ---------------------------------------------------------------- work directories and journals
@functools.cache
def work_root() -> Path:
    """Where migrations keep their files on this host (agents/paths.py ``work_root``), found once."""
    return paths.work_root()


def workdir(migration_id: str, role: str, create: bool = False) -> Path:
    """``<work root>/<id>-<role>`` (role: src, dst); with ``create``, made 0700 (it must not exist yet)."""
    if not isinstance(migration_id, str) or not migration_id.isalnum():
        raise PreflightError(f"invalid migration id {migration_id!r}")
    root = work_root()
    path = root / f"{migration_id}-{role}"
    if create:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    return path


def predump_dir(name: str) -> str:
    """``name`` if it names a pre-dump's directory in a work dir; MigrationError otherwise."""
    if not PREDUMP_DIR.fullmatch(name or ""):
        raise MigrationError(f"invalid pre-dump directory {name!r}")
    return name


def write(work: Path, **fields) -> None:
    """Add ``fields`` to the journal in ``work``, replaced atomically and on disk before this returns."""
    path = work / JOURNAL
    old = json.loads(path.read_text()) if path.exists() else {}
    replace_json(path, old | fields | {"updated": time.time()}, 0o600, durable=True)


def read(work: Path) -> dict | None:
    try:
        return json.loads((work / JOURNAL).read_text())
    except (OSError, ValueError):
        return None


def journals(role: str, container: str | None) -> list[dict]:
    """The journals of this host's migrations in ``role`` (src, dst), of ``container`` (name or id) if given."""
    root = work_root()
    found = [read(w) for w in sorted(root.glob(f"*-{role}"))] if root.is_dir() else []
    return [j for j in found if j and (not container or container in (j.get("name"), j.get("container_id")))]


# ---------------------------------------------------------------- locks
class ContainerLock:
    """The migration lock of one container, held by this process until ``release`` or its exit."""

    def __init__(self, container_id: str, name: str) -> None:
        self.container_id = container_id
        LOCKS.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(LOCKS / container_id, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise PreflightError(f"container {name} is already being migrated (cmigrate agent pid "
                                 f"{holder or '?'})", container=name, hint="wait for that migration to end") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
