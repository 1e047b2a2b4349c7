"""The file locks a container's processes hold, for a refusal before the freeze where they cannot move.

CRIU dumps held locks (flock, POSIX, OFD) only when told to (``file-locks``), and the source tells it so only when
the destination can take them back (its restore runs through cmigrate-runc: agents/destination.py). Otherwise
CRIU fails the dump after the freeze ("Some file locks are hold by dumping tasks"); this says so before, naming
each lock's process, descriptor and file. The kernel lists the locks on a descriptor's file in its fdinfo
("lock:" lines, as /proc/locks prints them).
"""
from __future__ import annotations

from pathlib import Path

from agents import tasks
from migrate.errors import PreflightError


def held(init_pid: int) -> list[str]:
    """One "pid P fd N (KIND on PATH)" per descriptor of the container's processes whose file is locked."""
    found = []
    for pid, fd, target in tasks.descriptors(init_pid):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        kinds = sorted({line.split()[2] for line in info.splitlines() if line.startswith("lock:")
                        and len(line.split()) > 2})
        if kinds:
            found.append(f"pid {pid} fd {fd} ({'/'.join(kinds)} on {target})")
    return found


def refuse_unmovable(init_pid: int, container: str, destination: str) -> None:
    locks = held(init_pid)
    if locks:
        raise PreflightError(f"container {container} holds file locks {destination} cannot restore (no "
                             f"cmigrate-runc runtime there, or --keep-source): " + "; ".join(locks)[:300],
                             container=container, hint=f"install cmigrate on {destination} (./install.sh), or "
                             "have the processes release their locks")
