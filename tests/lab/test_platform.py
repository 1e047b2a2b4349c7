"""What each lab host runs (Docker, containerd, runc) is reported, and Docker's containerd image store, where the
daemon has it (Docker 24+: the containerd-snapshotter feature), is refused before anything is touched."""
from __future__ import annotations

import json

import pytest

from migrate import lab
from tests.lab.conftest import COUNTER, cmigrate


def docker_major(name: str) -> int:
    return int((lab.platform_versions(lab.host(name)).get("docker") or "0").split(".")[0])


def test_lab_status_and_the_report_name_docker_containerd_and_runc(docker_a, docker_b):
    st = cmigrate("lab", "status", "--json")
    assert st.status == 0, st.out + st.err
    for row in json.loads(st.out)["hosts"]:
        assert row["platform"]["docker"] and row["platform"]["containerd"] and row["platform"]["runc"], row
    human = cmigrate("lab", "status").out
    assert "containerd" in human and "runc" in human
    name = docker_a.run_detached("busybox", "/bin/sh", "-c", COUNTER)
    docker_b.made.append(name)
    docker_a.wait_logs(name, lambda lines: len(lines) >= 2)
    res = cmigrate("--json", name, "hostA", "hostB")
    assert res.status == 0, res.err
    report = json.loads(res.out)
    for h in ("hostA", "hostB"):
        assert report["platform"][h] == lab.platform_versions(lab.host(h))


@pytest.fixture
def hostB_on_containerd_store(the_lab):
    if docker_major("hostB") < 24:
        pytest.skip(f"Docker {lab.platform_versions(lab.host('hostB')).get('docker')} has no containerd image store")
    lab.restart_dockerd("hostB", {"features": {"containerd-snapshotter": True}})
    try:
        info = lab.docker_get(lab.host("hostB").docker_socket, "/info")
        assert ["driver-type", "io.containerd.snapshotter.v1"] in info["DriverStatus"], info["DriverStatus"]
        lab.import_test_image(lab.host("hostB"), lab.busybox_rootfs_tar())
        yield
    finally:
        lab.restart_dockerd("hostB")


def test_containerd_image_store_is_refused_in_one_line_both_ways(docker_a, docker_b, hostB_on_containerd_store):
    to_b = docker_a.run_detached("busybox", "/bin/sh", "-c", COUNTER)
    docker_a.wait_logs(to_b, lambda lines: len(lines) >= 2)
    res = cmigrate(to_b, "hostA", "hostB")
    assert res.status == 1, res.out + res.err
    line = res.err.strip().splitlines()[0]
    assert "hostB" in line and "containerd's image store" in line, res.err
    assert "containerd-snapshotter" in res.err   # what to change
    assert docker_a.state(to_b) == "running" and docker_b("inspect", to_b, check=False).status != 0

    from_b = docker_b.run_detached("busybox", "/bin/sh", "-c", COUNTER)
    docker_b.wait_logs(from_b, lambda lines: len(lines) >= 2)
    for args in ((from_b, "hostB", "hostA"), ("checkpoint", "create", "-H", "hostB", from_b, "c1")):
        res = cmigrate(*args)
        assert res.status == 1, (args, res.out + res.err)
        assert "containerd's image store" in res.err.strip().splitlines()[0], (args, res.err)
    assert docker_b.state(from_b) == "running"
    assert docker_a("inspect", from_b, check=False).status != 0
