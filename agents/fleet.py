"""What a host holds, for fleet moves (``host.load``): its memory and its running containers with theirs.

The CLI's placement and balancing (migrate/fleet.py) decide from this; the moves themselves are ordinary
migrations. A container with a migration pending here (an interrupted one, waiting for ``cmigrate recover``) is
marked, so that a fleet move leaves it where it is.
"""
from __future__ import annotations

from pathlib import Path

from agents import journal
from agents.dockerd import Docker
from agents.source import memory_bytes


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def load(args: dict, ch) -> dict:
    """The host's memory (Docker's MemTotal, the kernel's MemAvailable) and its running containers: name, id,
    memory in use (its cgroup's), labels, image; ``pending`` where an interrupted migration holds it."""
    dk = Docker(timeout=60)
    try:
        info = dk.info()
        listed = dk.running()
    finally:
        dk.close()
    pending = {j.get("container_id") for j in journal.journals("src", None)}
    containers = [{"name": c["Names"][0].lstrip("/"), "id": c["Id"], "memory_bytes": memory_bytes(c["Id"]),
                   "labels": c.get("Labels") or {}, "image": c.get("Image", ""), "pending": c["Id"] in pending}
                  for c in listed]
    return {"mem_total": int(info.get("MemTotal") or 0), "mem_available": _mem_available(),
            "ncpu": int(info.get("NCPU") or 0), "containers": sorted(containers, key=lambda c: c["name"])}


OPERATIONS = {"host.load": load}
