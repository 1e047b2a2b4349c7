"""Containers whose processes hold ordinary kernel state move with it (issue 19): file locks stay held on the
destination, where another process trying them is still turned away; files in a tmpfs mount and in /dev/shm
arrive intact."""
from __future__ import annotations

import pytest

from tests.lab.conftest import cmigrate
from tests.lab.test_migrate import absent, both, no_work_left, running  # noqa: F401 (both: a fixture)

HELD = ["flock:busy", "posix:busy", "ofd:busy"]


def _locks(d, name: str) -> list[str]:
    """Another process in the container tries each lock without waiting (migrate/lab/workloads/locker.c)."""
    return d("exec", name, "locker", "-t", "/held.lock").out.split()


@pytest.mark.parametrize("mode", ["stop-copy", "post-copy"])
def test_held_file_locks_are_held_on_the_destination(both, mode):
    # locker holds an flock, a POSIX and an OFD lock on a file in the writable layer, and counts
    a, b = both
    name = a.run_detached("busybox", "locker", "/held.lock")
    before = a.wait_logs(name, lambda lines: len(lines) >= 3)
    assert before[0] == "locked", before
    assert _locks(a, name) == HELD, "the workload does not hold its locks: the test would prove nothing"
    res = cmigrate("--mode", mode, name, "hostA", "hostB")
    assert res.status == 0, res.err
    assert absent(a, name) and running(b, name)
    assert _locks(b, name) == HELD, "a lock is free after the move"
    n = [int(x) for x in b.wait_logs(name, lambda lines: len(lines) >= 2)]
    assert n == list(range(n[0], n[0] + len(n))) and n[0] >= int(before[-1]), (before[-3:], n[:5])
    assert no_work_left()


def test_tmpfs_and_dev_shm_files_arrive_intact(both):
    a, b = both
    name = a.run_detached("--tmpfs", "/run", "busybox", "sh", "-c",
                          "seq 1 20000 > /run/data; seq 5 30000 > /dev/shm/data; md5sum /run/data /dev/shm/data; "
                          "echo ready; sleep 1000")
    sums = a.wait_logs(name, lambda lines: "ready" in lines)[:-1]
    res = cmigrate(name, "hostA", "hostB")
    assert res.status == 0, res.err
    after = b("exec", name, "md5sum", "/run/data", "/dev/shm/data").out.split()
    assert len(sums) == 4 and after == sums, (sums, after)
    assert b("exec", name, "sh", "-c", "mount | grep -E ' /run | /dev/shm ' | grep -c tmpfs").out.strip() == "2"
    assert no_work_left()
