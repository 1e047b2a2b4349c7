"""CRIU options cmigrate adds to one restore: the destination container's cgroup on cgroup v2 (runc 1.1 names it
to CRIU on v1 only; without it the task went back into the source container's cgroup)."""
from __future__ import annotations

import pytest

from agents.checkpoint import _cgroup_root, _slice_path


class Daemon:
    def __init__(self, version: str, driver: str) -> None:
        self.data = {"CgroupVersion": version, "CgroupDriver": driver}

    def info(self) -> dict:
        return self.data


@pytest.mark.parametrize("version,driver,parent,expected", [
    ("1", "cgroupfs", "", ""),
    ("2", "systemd", "", "cgroup-root /system.slice/docker-c0ffee.scope\n"),
    ("2", "systemd", "my-app.slice", "cgroup-root /my.slice/my-app.slice/docker-c0ffee.scope\n"),
    ("2", "cgroupfs", "", "cgroup-root /docker/c0ffee\n"),
    ("2", "cgroupfs", "/apps/", "cgroup-root /apps/c0ffee\n"),
])
def test_cgroup_root_names_the_destination_containers_own_cgroup(version, driver, parent, expected):
    info = {"Id": "c0ffee", "HostConfig": {"CgroupParent": parent}}
    assert _cgroup_root(Daemon(version, driver), info) == expected


def test_slice_paths_nest_like_systemds():
    assert _slice_path("system.slice") == "/system.slice"
    assert _slice_path("a-b-c.slice") == "/a.slice/a-b.slice/a-b-c.slice"


def test_runc_is_told_what_its_request_to_criu_would_otherwise_turn_off():
    from agents.criu import runc_flags
    assert runc_flags("") == []
    assert runc_flags("network-lock skip\nfile-locks\n") == ["--file-locks"]
    assert runc_flags("tcp-established\nfile-locks\n") == ["--tcp-established", "--file-locks"]


@pytest.mark.parametrize("args,runtime,expected", [
    ({}, "cmigrate-runc", "file-locks\n"),
    ({}, "runc", ""),
    ({"keep_ip": True}, "cmigrate-runc", "tcp-established\nfile-locks\n"),
    ({"tcp_close": True}, "cmigrate-runc", "tcp-close\nfile-locks\n"),
])
def test_the_restore_takes_file_locks_back_where_the_wrapper_can_say_so(args, runtime, expected):
    from agents.destination import _restore_options
    assert _restore_options(args, runtime, "c") == expected


@pytest.mark.parametrize("host_config, runtime, expected", [
    ({}, "cmigrate-runc", "file-locks\n"),
    ({"Init": True}, "cmigrate-runc", "file-locks\nmntns-compat-mode\n"),
    ({"Init": True}, "runc", ""),
])
def test_a_container_with_dockers_init_is_restored_with_criu_s_older_mount_engine(host_config, runtime, expected):
    # CRIU 4.2's mount-v2 took /etc/hosts, hostname and resolv.conf for binds of the init's file mount and failed
    from agents.destination import _restore_options
    assert _restore_options({"host_config": host_config}, runtime, "c1") == expected
