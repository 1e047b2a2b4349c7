"""Containers whose processes hold ordinary kernel state move with it (issue 19): file locks stay held on the
destination, where another process trying them is still turned away; files in a tmpfs mount and in /dev/shm
arrive intact; inotify watches and fanotify marks fire on the destination; containers of a non-root user move
with their limits; many processes under docker-init (threads, pipes, zombies) all come back; a docker exec session
makes the move refuse before the freeze; health checks resume on the destination."""
from __future__ import annotations

import subprocess
import threading
import time
import uuid

import pytest

from agents.dockerd import Docker, _last_probe_end
from migrate import lab
from tests.lab.conftest import COUNTER, cmigrate
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


def test_locks_the_destination_cannot_take_back_are_refused_before_the_freeze(both):
    # --keep-source dumps without CRIU's file-locks (the copy must not hold the source's locks too): CRIU would
    # fail after the freeze; the source agent names the locks first
    a, b = both
    name = a.run_detached("busybox", "locker", "/held.lock")
    a.wait_logs(name, lambda lines: len(lines) >= 2)
    with Watch(both, name, "{{.State.Running}} {{.State.Paused}}") as seen:
        res = cmigrate("--keep-source", name, "hostA", "hostB")
    assert res.status != 0
    lines = res.err.strip().splitlines()
    assert "holds file locks hostB cannot restore" in lines[0] and "/held.lock" in lines[0], res.err
    assert {s for h, s in seen.seen if h == "hostA"} == {"true false"}, "the container stopped or froze"
    assert {s for h, s in seen.seen if h == "hostB"} <= {"absent", "false false"}   # created, never started
    assert absent(b, name) and _locks(a, name) == HELD
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


def test_an_empty_tmpfs_keeps_its_root_s_mode_owner_and_time(both):
    """An empty tmpfs crosses without tar (CRIU patch 0004): its root must still come back as it was, here other
    than its mount options say, and another, not empty, as before."""
    a, b = both
    name = a.run_detached("--tmpfs", "/scratch:mode=0700", "--tmpfs", "/full", "busybox", "sh", "-c",
                          "chmod 0751 /scratch; chown 999:998 /scratch; touch -d '2021-02-03 04:05:06' /scratch; "
                          "echo kept > /full/f; chmod 0705 /full; stat -c '%a %u %g %Y' /scratch /full; echo ready; "
                          "sleep 1000")
    before = a.wait_logs(name, lambda words: "ready" in words)[:-1]   # mode, uid, gid, mtime of each
    assert before[:4] == ["751", "999", "998", "1612325106"] and before[4] == "705", before
    res = cmigrate(name, "hostA", "hostB")
    assert res.status == 0, res.err
    after = b("exec", name, "stat", "-c", "%a %u %g %Y", "/scratch", "/full").out.split()
    assert after == before, (before, after)
    assert b("exec", name, "ls", "-A", "/scratch").out == "" and b("exec", name, "cat", "/full/f").out == "kept\n"
    assert no_work_left()


class Watch:
    """Samples ``docker inspect`` of a container on each host, in a thread, while a move runs: what a user polling
    both hosts would have seen."""

    def __init__(self, hosts, name: str, fmt: str) -> None:
        self.hosts, self.name, self.fmt, self.seen = hosts, name, fmt, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for d in self.hosts:
                res = d("inspect", "-f", self.fmt, self.name, check=False)
                self.seen.append((d.name, res.out.strip() if res.status == 0 else "absent"))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _watch_lines(d, name: str, count: int) -> list[str]:
    return d.wait_logs(name, lambda lines: len(lines) >= count)


def _events(d, name: str, count: int, timeout: float = 30.0) -> list[str]:
    """The first ``count`` lines the container's watcher printed after "watching"."""
    deadline = time.monotonic() + timeout
    while True:
        lines = d("logs", name).out.splitlines()
        if len(lines) >= count:
            return lines[:count]
        assert time.monotonic() < deadline, f"{d.name}: {name} printed only {lines}"
        time.sleep(0.1)


def _events_including(d, name: str, wanted: set[str], timeout: float = 30.0) -> list[str]:
    """The lines the container's watcher printed, once they include all of ``wanted``."""
    deadline = time.monotonic() + timeout
    while True:
        lines = d("logs", name).out.splitlines()
        if wanted <= set(lines):
            return lines
        assert time.monotonic() < deadline, f"{d.name}: {name} printed only {lines}, not all of {sorted(wanted)}"
        time.sleep(0.1)


@pytest.mark.parametrize("mode", ["stop-copy", "post-copy"])
def test_inotify_watches_fire_on_the_destination(both, mode):
    # watches on directories of the writable layer (CRIU cannot open their overlayfs handles: the agent finds
    # their paths), of a volume (opened by handle) and of the image (/etc)
    a, b = both
    volume = f"w-{uuid.uuid4().hex[:8]}"
    name = a.run_detached("-v", f"{volume}:/v", "busybox", "sh", "-c",
                          "mkdir -p /w/sub && exec watcher /w /w/sub /v /etc")
    try:
        assert _watch_lines(a, name, 1) == ["watching"]
        res = cmigrate("--mode", mode, name, "hostA", "hostB")
        assert res.status == 0, res.err
        assert absent(a, name) and running(b, name)
        b("exec", name, "touch", "/w/after", "/w/sub/after", "/v/after", "/etc/after")
        events = _events(b, name, 4)
        assert sorted(events) == ["inotify /etc after create", "inotify /v after create",
                                  "inotify /w after create", "inotify /w/sub after create"], events
        assert no_work_left()
    finally:
        for d in both:
            d("rm", "-f", name, check=False)
            d("volume", "rm", "-f", volume, check=False)


def test_fanotify_marks_fire_on_the_destination(both):
    # fanotify needs CAP_SYS_ADMIN in the container, which the destination grants only with --allow-privileged
    a, b = both
    name = a.run_detached("--cap-add", "SYS_ADMIN", "busybox", "sh", "-c", "mkdir -p /w && exec watcher -f /w")
    assert _watch_lines(a, name, 1) == ["watching"]
    res = cmigrate("--allow-privileged", name, "hostA", "hostB")
    assert res.status == 0, res.err
    b("exec", name, "sh", "-c", "echo x > /w/after")
    # inotify create and modify, fanotify modify and close-write (which fanotify may merge into one), in no
    # fixed order between the two
    events = _events_including(b, name, {"inotify /w after create", "fanotify close-write"})
    assert no_work_left()


def _limits(d, name: str) -> str:
    return d("exec", name, "cat", "/proc/1/limits").out


def test_non_root_counter_moves_with_its_limits(both):
    # CRIU reads another user's limits with prlimit(2), which root here may not (no CAP_SYS_RESOURCE):
    # patches/criu/0002 reads them from /proc/PID/limits, and restores a hard limit within what it may set
    a, b = both
    name = a.run_detached("--user", "999", "--ulimit", "nofile=1024:2048", "--ulimit", "nproc=500:700",
                          "busybox", "sh", "-c", COUNTER)
    before = _watch_lines(a, name, 3)
    limits = _limits(a, name)
    assert "Max open files            1024                 2048" in limits, limits
    res = cmigrate(name, "hostA", "hostB")
    assert res.status == 0, res.err
    assert absent(a, name) and running(b, name)
    assert b("exec", name, "sh", "-c", "grep Uid /proc/1/status").out.split()[1:] == ["999"] * 4
    assert _limits(b, name) == limits
    n = [int(x) for x in _watch_lines(b, name, 2)]
    assert n[0] >= int(before[-1]) and n == list(range(n[0], n[0] + len(n))), (before, n)
    assert no_work_left()


def _processes(d, name: str) -> list[str]:
    """pid, user and command line of the container's lasting processes (not ps, nor the counter's sleep)."""
    lines = d("exec", name, "ps", "-o", "pid,user,args").out.splitlines()[1:]
    return sorted(p for p in lines if not p.split(None, 2)[2].startswith(("ps ", "sleep ")))


def test_non_root_multi_process_server_moves_whole(both):
    a, b = both
    name = a.run_detached("--user", "999", "busybox", "sh", "-c",
                          "httpd -f -p 8080 -h /var/www & httpd -f -p 8081 -h /var/www & " + COUNTER)
    _watch_lines(a, name, 2)
    before = _processes(a, name)
    assert len(before) == 3 and all(p.split()[1] == "999" for p in before), before
    res = cmigrate(name, "hostA", "hostB")
    assert res.status == 0, res.err
    assert _processes(b, name) == before
    for port in (8080, 8081):
        page = b("exec", name, "wget", "-qO-", f"http://127.0.0.1:{port}/").out
        assert page == "hello from cmigrate's lab\n", (port, page)
    assert no_work_left()


def test_non_root_container_checkpoints_and_starts(both):
    a, _ = both
    name = a.run_detached("--user", "999", "busybox", "sh", "-c", COUNTER)
    _watch_lines(a, name, 3)
    res = cmigrate("-H", "hostA", "checkpoint", "create", name, "nonroot")
    assert res.status == 0, res.err
    assert not running(a, name)
    res = cmigrate("-H", "hostA", "start", "--checkpoint", "nonroot", name)
    assert res.status == 0, res.err
    assert running(a, name)
    assert a("exec", name, "sh", "-c", "grep Uid /proc/1/status").out.split()[1:] == ["999"] * 4


def test_many_processes_under_docker_init_move_whole(both):
    # docker-init (tini) as pid 1, 50 workers in a ring of pipes (a token goes round), each with a second
    # thread, and 5 zombies; forest -l lists them (pid, parent, alive or zombie, threads)
    a, b = both
    name = a.run_detached("--init", "busybox", "forest", "50")
    _watch_lines(a, name, 3)
    before = a("exec", name, "forest", "-l").out.splitlines()
    assert len(before) == 1 + 1 + 50 + 5, before
    assert before[0].endswith(" docker-init") and sum(" zombie " in p for p in before) == 5
    assert sum(p.split()[2:4] == ["alive", "2"] for p in before) == 50
    laps = int(a.logs(name)[-1])
    res = cmigrate(name, "hostA", "hostB")
    assert res.status == 0, res.err
    assert absent(a, name) and running(b, name)
    assert b("exec", name, "forest", "-l").out.splitlines() == before
    later = b.wait_logs(name, lambda lines: len(lines) >= 2)
    assert int(later[-1]) > int(later[0]) >= laps, (laps, later)   # the ring is whole: the token goes round
    assert no_work_left()


def test_a_docker_exec_session_is_refused_before_the_freeze(both):
    a, b = both
    name = a.run_detached("busybox", "sh", "-c", COUNTER)
    _watch_lines(a, name, 2)
    a("exec", "-d", name, "sleep", "300")
    with Watch(both, name, "{{.State.Running}} {{.State.Paused}}") as seen:
        res = cmigrate(name, "hostA", "hostB")
    assert res.status != 0
    line = res.err.strip().splitlines()
    assert len(line) == 1 and "1 docker exec session(s) running (sleep 300)" in line[0], res.err
    assert {s for h, s in seen.seen if h == "hostA"} == {"true false"}, "the container stopped or froze"
    assert {s for h, s in seen.seen if h == "hostB"} == {"absent"}
    assert "sleep 300" in a("top", name).out, "the exec session did not live on"
    assert no_work_left()


def _healthy(d, name: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while d("inspect", "-f", "{{.State.Health.Status}}", name, check=False).out.strip() != "healthy":
        assert time.monotonic() < deadline, f"never healthy on {d.name}"
        time.sleep(0.1)


def test_health_checks_stay_meaningful_and_resume_on_the_destination(both):
    # Docker probes a frozen container too, and runc's refusal ("cannot exec in a paused container") is a failed
    # check: with one retry a probe falling in the freeze turned the running source "unhealthy". The source
    # freezes only with a whole interval ahead. Four moves, hostA -> hostB -> hostA ..., watched throughout. (A
    # copy on its way out is "unhealthy" in Docker's eyes once it has stopped, as after any docker stop: not
    # counted.)
    a, b = both
    name = a.run_detached("--health-cmd", "test -d /", "--health-interval", "2s", "--health-retries", "1",
                          "busybox", "sh", "-c", COUNTER)
    _healthy(a, name)
    with Watch(both, name, "{{.State.Health.Status}} {{.State.Status}}") as seen:
        for src, dst in ((a, b), (b, a), (a, b), (b, a)):
            res = cmigrate(name, src.name, dst.name)
            assert res.status == 0, res.err
            _healthy(dst, name)   # probes resume there
    running = {s.split()[0] for _, s in seen.seen if s.endswith(" running")}
    assert len(seen.seen) > 40 and running == {"healthy", "starting"}, \
        [(i, x) for i, x in enumerate(seen.seen) if x[1] == "unhealthy running"]


def test_a_freeze_waits_for_the_health_probe_due_within_it(both, monkeypatch):
    # The mechanism, timed on purpose: at the moment the next probe is due in 0.3-0.7 s, the source agent's wait
    # (agents/dockerd.py between_health_probes), then a freeze of 1 s through runc as a dump's. Without the wait
    # the probe falls in the freeze, fails ("cannot exec in a paused container") and the container is unhealthy.
    a, _ = both
    name = a.run_detached("--health-cmd", "test -d /", "--health-interval", "2s", "--health-retries", "1",
                          "busybox", "sleep", "1000")
    _healthy(a, name)
    h = lab.host("hostA")
    monkeypatch.setenv("DOCKER_HOST", h.docker_url)
    dk = Docker()
    try:
        info = dk.inspect(name)
        deadline = time.monotonic() + 10
        while not 0.3 < _last_probe_end(dk.inspect(name)) + 2.0 - time.time() < 0.7:
            assert time.monotonic() < deadline, "no moment with a probe due soon"
            time.sleep(0.01)
        dk.between_health_probes(info)
        runc = ["runc", "--root", str(h.runc_root)]
        subprocess.run([*runc, "pause", info["Id"]], check=True)
        time.sleep(1.0)
        subprocess.run([*runc, "resume", info["Id"]], check=True)
        time.sleep(0.3)
        health = dk.inspect(name)["State"]["Health"]
        assert health["Status"] == "healthy" and {e["ExitCode"] for e in health["Log"]} == {0}, health["Log"]
    finally:
        dk.close()


def test_checkpoint_create_and_start_keep_locks_and_watches_under_cmigrate_runc(both):
    # cmigrate checkpoint goes through Docker's checkpoint; the cmigrate-runc runtime hands that dump CRIU's
    # file-locks and the watched files' paths, and the restore file-locks
    a, _ = both
    name = a.run_detached("--runtime", "cmigrate-runc", "busybox", "sh", "-c",
                          "mkdir -p /w && (watcher /w > /watch.log &) && exec locker /held.lock")
    a.wait_logs(name, lambda lines: len(lines) >= 3)
    assert _locks(a, name) == HELD
    res = cmigrate("-H", "hostA", "checkpoint", "create", name, "held")
    assert res.status == 0, res.err
    res = cmigrate("-H", "hostA", "start", "--checkpoint", "held", name)
    assert res.status == 0, res.err
    assert _locks(a, name) == HELD, "a lock is free after the restore"
    a("exec", name, "touch", "/w/after")
    deadline = time.monotonic() + 10
    while "inotify /w after create" not in a("exec", name, "cat", "/watch.log").out:
        assert time.monotonic() < deadline, a("exec", name, "cat", "/watch.log").out
        time.sleep(0.1)


def test_checkpoint_of_a_runc_container_holding_locks_is_refused_before_the_pause(both):
    a, _ = both
    name = a.run_detached("busybox", "locker", "/held.lock")
    a.wait_logs(name, lambda lines: len(lines) >= 2)
    with Watch([a], name, "{{.State.Running}} {{.State.Paused}}") as seen:
        res = cmigrate("-H", "hostA", "checkpoint", "create", name, "held")
    assert res.status != 0
    line = res.err.strip().splitlines()[0]
    assert "holds file locks" in line and "/held.lock" in line and "runc runtime" in line, res.err
    assert {s for _, s in seen.seen} == {"true false"}, "the container stopped or paused"
    assert _locks(a, name) == HELD
