"""cmigrate checkpoint create / ls / rm and cmigrate start --checkpoint, on the lab's hosts over SSH."""
from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest

from migrate import lab
from tests.lab.conftest import COUNTER, cmigrate, consecutive

# The counter also appends to a file it holds open in its writable layer: CRIU refuses to restore an open file
# whose size changed, so this only restores if the writable layer comes back with the memory.
APPENDER = 'i=0; mkdir -p /data; exec 3>>/data/log; while true; do echo $i; echo $i >&3; i=$(expr $i + 1); sleep 1; done'


def counter_value_after_restore(d, name, before: list[str]) -> int:
    """The first number the counter printed after a restore (the log keeps what came before)."""
    lines = d.wait_logs(name, lambda lines: len(lines) >= len(before) + 1)
    return int(lines[len(before)])


def test_seed_example_counter_stops_then_resumes_without_reset(docker_a):
    name = docker_a.run_detached("--security-opt=seccomp:unconfined", "busybox", "/bin/sh", "-c", COUNTER)
    docker_a.wait_logs(name, lambda lines: len(lines) >= 3)
    res = cmigrate("-H", "hostA", "checkpoint", "create", name, "checkpoint1")
    assert res.status == 0, res.err
    assert res.out.strip() == "checkpoint1"
    assert docker_a.state(name) == "exited"
    frozen = docker_a.logs(name)
    time.sleep(2.2)
    assert docker_a.logs(name) == frozen
    res = cmigrate("start", "-H", "hostA", "--checkpoint", "checkpoint1", name)
    assert res.status == 0, res.err
    after = docker_a.wait_logs(name, lambda lines: len(lines) >= len(frozen) + 2)
    assert consecutive(after), after


def test_leave_running_keeps_counting_and_restores_later(docker_a):
    name = docker_a.run_detached("busybox", "sh", "-c", COUNTER)
    docker_a.wait_logs(name, lambda lines: len(lines) >= 2)
    before = docker_a.logs(name)
    assert cmigrate("-H", "hostA", "checkpoint", "create", "--leave-running", name, "early").status == 0
    at_checkpoint = docker_a.logs(name)
    assert docker_a.state(name) == "running"
    docker_a.wait_logs(name, lambda lines: len(lines) >= len(at_checkpoint) + 2)   # it kept counting
    docker_a("stop", "-t", "1", name)
    logged = docker_a.logs(name)
    assert cmigrate("-H", "hostA", "start", "--checkpoint", "early", name).status == 0
    first = counter_value_after_restore(docker_a, name, logged)
    assert int(before[-1]) + 1 <= first <= int(at_checkpoint[-1]) + 1


def test_rewind_to_the_first_of_two_checkpoints_brings_memory_and_files_back(docker_a):
    name = docker_a.run_detached("busybox", "sh", "-c", APPENDER)
    docker_a.wait_logs(name, lambda lines: len(lines) >= 2)
    docker_a.sh(name, "echo precious > /data/keep")
    b1 = docker_a.logs(name)
    assert cmigrate("-H", "hostA", "checkpoint", "create", "--leave-running", name, "first").status == 0
    a1 = docker_a.logs(name)
    docker_a.wait_logs(name, lambda lines: len(lines) >= len(a1) + 2)
    docker_a.sh(name, "rm /data/keep; echo later > /data/added")
    assert cmigrate("-H", "hostA", "checkpoint", "create", name, "second").status == 0
    logged = docker_a.logs(name)
    assert int(logged[-1]) > int(a1[-1]) + 1
    assert cmigrate("-H", "hostA", "start", "--checkpoint", "first", name).status == 0
    first = counter_value_after_restore(docker_a, name, logged)
    assert int(b1[-1]) + 1 <= first <= int(a1[-1]) + 1, "the counter did not rewind to the first checkpoint"
    # files rewound with the memory: the deleted file is back, the later one gone, the open log goes on
    assert docker_a.sh(name, "cat /data/keep").strip() == "precious"
    assert docker_a.sh(name, "ls /data").split() == ["keep", "log"]
    docker_a.wait_logs(name, lambda lines: len(lines) >= len(logged) + 2)
    log = docker_a.sh(name, "cat /data/log").split()
    assert consecutive(log), f"the appended file is not continuous after the rewind: {log}"
    # and the same checkpoint restores again (Docker alone can fail this with "content ... already exists")
    docker_a("stop", "-t", "1", name)
    assert cmigrate("-H", "hostA", "start", "--checkpoint", "first", name).status == 0
    assert docker_a.state(name) == "running"
    # containerd's unpacked copies of our restores (it never removes them, containerd#10166) are gone
    leaked = [d for d in (lab.host("hostA").exec_root / "tmp").glob("ctrd-checkpoint*")
              if (d / "cmigrate-nonce").exists()]
    assert leaked == []


def test_custom_checkpoint_dir_is_private_and_restores(docker_a, tmp_path):
    name = docker_a.run_detached("busybox", "sh", "-c", COUNTER)
    docker_a.wait_logs(name, lambda lines: len(lines) >= 2)
    cdir = tmp_path / "checkpoints"
    res = cmigrate("-H", "hostA", "checkpoint", "create", "--checkpoint-dir", str(cdir), name, "custom")
    assert res.status == 0, res.err
    for d in (cdir, cdir / "custom"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    res = cmigrate("-H", "hostA", "checkpoint", "ls", "--checkpoint-dir", str(cdir), name)
    assert res.status == 0 and res.out.splitlines()[1].split()[0] == "custom"
    frozen = docker_a.logs(name)
    res = cmigrate("-H", "hostA", "start", "--checkpoint", "custom", "--checkpoint-dir", str(cdir), name)
    assert res.status == 0, res.err
    assert consecutive(docker_a.wait_logs(name, lambda lines: len(lines) >= len(frozen) + 1))


def test_restore_into_a_container_removed_and_created_again(docker_a, tmp_path):
    name = docker_a.run_detached("busybox", "sh", "-c", APPENDER)
    docker_a.wait_logs(name, lambda lines: len(lines) >= 3)
    cdir = tmp_path / "cp"
    assert cmigrate("-H", "hostA", "checkpoint", "create", "--checkpoint-dir", str(cdir), name, "saved").status == 0
    last = int(docker_a.logs(name)[-1])
    docker_a("rm", name)
    docker_a("create", "--name", name, "busybox", "sh", "-c", APPENDER)
    res = cmigrate("-H", "hostA", "start", "--checkpoint", "saved", "--checkpoint-dir", str(cdir), name)
    assert res.status == 0, res.err
    lines = docker_a.wait_logs(name, lambda lines: len(lines) >= 2)
    assert int(lines[0]) == last + 1, "the new container did not continue from the checkpoint"
    assert consecutive(docker_a.sh(name, "cat /data/log").split())


def test_tty_container_checkpoints_and_restores(docker_a):
    name = docker_a.run_detached("-t", "busybox", "sh", "-c", COUNTER)
    docker_a.wait_logs(name, lambda lines: len(lines) >= 2)
    assert cmigrate("-H", "hostA", "checkpoint", "create", name, "tty1").status == 0
    frozen = docker_a.logs(name)
    res = cmigrate("-H", "hostA", "start", "--checkpoint", "tty1", name)
    assert res.status == 0, res.err
    after = docker_a.wait_logs(name, lambda lines: len(lines) >= len(frozen) + 2)
    assert consecutive([x.strip() for x in after])


def test_same_commands_on_hostB_with_ls_and_rm(docker_b):
    name = docker_b.run_detached("busybox", "sh", "-c", COUNTER)
    docker_b.wait_logs(name, lambda lines: len(lines) >= 2)
    for cp in ("one", "two"):
        assert cmigrate("-H", "hostB", "checkpoint", "create", "--leave-running", name, cp).status == 0
    res = cmigrate("-H", "hostB", "--json", "checkpoint", "ls", name)
    listed = __import__("json").loads(res.out)
    assert [c["name"] for c in listed] == ["one", "two"]
    assert all(c["bytes"] > 0 and c["created"] <= time.time() for c in listed)
    assert cmigrate("-H", "hostB", "checkpoint", "rm", name, "one").status == 0
    res = cmigrate("-H", "hostB", "checkpoint", "ls", name)
    assert [ln.split()[0] for ln in res.out.splitlines()[1:]] == ["two"]
    docker_b("stop", "-t", "1", name)
    assert cmigrate("-H", "hostB", "start", "--checkpoint", "two", name).status == 0
    assert docker_b.state(name) == "running"


# ---------------------------------------------------------------------- bad input
def one_line_error(res, *expected: str, status: int = 1) -> None:
    assert res.status == status, (res.status, res.out, res.err)
    first = res.err.splitlines()[0]
    assert first.startswith("cmigrate: error: ")
    for e in expected:
        assert e in first, first


def test_errors_are_one_line_and_change_nothing(docker_a):
    name = docker_a.run_detached("busybox", "sh", "-c", COUNTER)
    docker_a.wait_logs(name, lambda lines: len(lines) >= 1)
    one_line_error(cmigrate("-H", "hostA", "checkpoint", "create", "nosuch", "c1"), "hostA", "no such container")
    one_line_error(cmigrate("-H", "hostA", "checkpoint", "create", name, "x"), "invalid checkpoint name", status=2)
    one_line_error(cmigrate("-H", "hostA", "checkpoint", "create", name, "../evil"), "invalid checkpoint name",
                   status=2)
    one_line_error(cmigrate("-H", "hostA", "start", "--checkpoint", "c1", name), "already running")
    assert cmigrate("-H", "hostA", "checkpoint", "create", "--leave-running", name, "c1").status == 0
    one_line_error(cmigrate("-H", "hostA", "checkpoint", "create", "--leave-running", name, "c1"), "already exists")
    docker_a("stop", "-t", "1", name)
    one_line_error(cmigrate("-H", "hostA", "checkpoint", "create", name, "c2"), "is not running")
    one_line_error(cmigrate("-H", "hostA", "start", "--checkpoint", "nope", name), "no checkpoint nope")
    one_line_error(cmigrate("-H", "hostA", "checkpoint", "rm", name, "nope"), "no checkpoint nope")
    one_line_error(cmigrate("-H", "nosuchhost", "checkpoint", "ls", name), "nosuchhost")
    assert docker_a.state(name) == "exited"
    res = cmigrate("-H", "hostA", "checkpoint", "ls", name)
    assert [ln.split()[0] for ln in res.out.splitlines()[1:]] == ["c1"]


def _local_agent_env(tmp_path, path: str) -> dict:
    """Run the agent on this machine against hostA's dockerd, with a PATH of the test's choosing."""
    return {"DOCKER_HOST": lab.host("hostA").docker_url, "PATH": path}


def test_criu_missing_or_too_old_is_refused_before_touching_the_container(docker_a, tmp_path):
    name = docker_a.run_detached("busybox", "sh", "-c", COUNTER)
    no_criu = "/usr/bin:/bin:/usr/sbin:/sbin"      # the lab's CRIU lives in /usr/local/sbin
    res = cmigrate("checkpoint", "create", name, "c1", env=_local_agent_env(tmp_path, no_criu))
    one_line_error(res, "CRIU is not installed", "install.sh")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "criu").write_text("#!/bin/sh\necho 'Version: 4.1.1'\n")
    (fake / "criu").chmod(0o755)
    res = cmigrate("checkpoint", "create", name, "c1", env=_local_agent_env(tmp_path, f"{fake}:{no_criu}"))
    one_line_error(res, "CRIU 4.1.1 is too old", "4.2")
    assert docker_a.state(name) == "running"
    assert cmigrate("-H", "hostA", "checkpoint", "ls", name).out.splitlines()[1:] == []


def test_failed_checkpoint_leaves_the_container_running_and_quotes_criu_log(docker_a, failing_criu):
    name = docker_a.run_detached("-e", "CMIGRATE_TEST_FAIL=1", "busybox", "sh", "-c", COUNTER)
    docker_a.wait_logs(name, lambda lines: len(lines) >= 1)
    res = cmigrate("-H", "hostA", "checkpoint", "create", name, "doomed")
    one_line_error(res, "hostA", f"checkpoint of {name} failed, CRIU says:")
    assert "Error" in res.err and "dump.log" in res.err, res.err   # CRIU's own words, not only a path
    assert docker_a.state(name) == "running"
    before = docker_a.logs(name)
    docker_a.wait_logs(name, lambda lines: len(lines) >= len(before) + 1)   # still counting
    assert cmigrate("-H", "hostA", "checkpoint", "ls", name).out.splitlines()[1:] == []


@pytest.fixture
def plain_dockerd(the_lab):
    """A third dockerd on this machine, without --experimental (under the lab's dirs, so lab down cleans it)."""
    import docker
    data, run = lab.LAB_ROOT / "plain", lab.RUN_ROOT / "plain"
    run.mkdir(parents=True, exist_ok=True)
    sock = run / "docker.sock"
    with open(lab.LAB_ROOT / "plain-dockerd.log", "ab") as log:
        subprocess.run(["setsid", "--fork", "dockerd", "--data-root", str(data), "--exec-root", str(run),
                        "-H", f"unix://{sock}", "--pidfile", str(run / "docker.pid"), "--bridge", "none",
                        "--iptables=false", "--ip-masq=false"], stdout=log, stderr=log, check=True)
    deadline = time.monotonic() + 60
    while lab.docker_get(sock, "/version") is None:
        assert time.monotonic() < deadline, "the plain dockerd did not start"
        time.sleep(0.2)
    client = docker.DockerClient(base_url=f"unix://{sock}", timeout=30)
    client.api.import_image_from_data(lab.busybox_rootfs_tar(), repository="busybox", tag="latest")
    client.containers.run("busybox", ["sleep", "1000"], name="plain", detach=True, network_mode="none")
    yield f"unix://{sock}"
    client.containers.get("plain").remove(force=True)
    client.close()
    pid = int((run / "docker.pid").read_text())
    lab._kill(pid)


def test_daemon_without_experimental_mode_is_refused(plain_dockerd):
    res = cmigrate("checkpoint", "create", "plain", "c1", env={"DOCKER_HOST": plain_dockerd})
    one_line_error(res, "not in experimental mode", "--experimental")


def test_checkpoint_of_a_restart_always_container_is_not_restarted_fresh(docker_a):
    name = docker_a.run_detached("--restart", "always", "busybox", "sh", "-c", COUNTER)
    docker_a.wait_logs(name, lambda lines: len(lines) >= 2)
    assert cmigrate("-H", "hostA", "checkpoint", "create", name, "held").status == 0
    frozen = docker_a.logs(name)
    time.sleep(2)
    assert docker_a.state(name) == "exited" and docker_a.logs(name) == frozen, "Docker restarted it from scratch"
    # held aside until the restore (a restarting daemon would start it afresh: test_archive.py), then back
    assert docker_a("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", name).out.strip() == "no"
    assert cmigrate("-H", "hostA", "start", "--checkpoint", "held", name).status == 0
    assert consecutive(docker_a.wait_logs(name, lambda lines: len(lines) >= len(frozen) + 1))
    assert docker_a("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", name).out.strip() == "always"


def test_a_checkpoint_dir_another_user_owns_is_refused(docker_a, tmp_path):
    # such a user could put a symlink there (target/cmigrate -> /etc) and have root chmod what it points to
    name = docker_a.run_detached("busybox", "sh", "-c", COUNTER)
    cdir = tmp_path / "ck"
    cdir.mkdir()
    os.chown(cdir, 65534, 65534)
    res = cmigrate("-H", "hostA", "checkpoint", "create", "--checkpoint-dir", str(cdir), name, "c1")
    assert res.status == 1 and "belongs to uid 65534, not root" in res.err.strip().splitlines()[0], res.err
    assert list(cdir.iterdir()) == [] and docker_a.state(name) == "running"
