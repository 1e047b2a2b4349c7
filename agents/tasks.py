"""A container's processes and their open descriptors, as /proc shows them to an agent on the container's host."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def container_pids(init_pid: int) -> list[int]:
    """``init_pid`` and its descendants (every thread's children), as /proc lists them now."""
    pids, todo = [], [init_pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                todo += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    return pids


def descriptors(init_pid: int) -> Iterator[tuple[int, int, str]]:
    """(pid, fd, what it refers to) for every open descriptor of the container's processes; those closed while
    this looks are left out."""
    for pid in container_pids(init_pid):
        try:
            fds = sorted(os.listdir(f"/proc/{pid}/fd"), key=int)
        except OSError:
            continue
        for fd in fds:
            try:
                yield pid, int(fd), os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
