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
