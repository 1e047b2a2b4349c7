"""What an agent reads of its Docker daemon: the versions it reports, and the refusal of daemons cmigrate cannot
checkpoint from (not experimental; the containerd image store)."""
from __future__ import annotations

import pytest

from agents.dockerd import Docker
from migrate.errors import PreflightError
from migrate.hostinfo import docker_versions, platform_line

# GET /version of Docker 26.1.5 on Debian 13 (abridged)
VERSION_26 = {"Version": "26.1.5+dfsg1", "ApiVersion": "1.45", "Components": [
    {"Name": "Engine", "Version": "26.1.5+dfsg1"}, {"Name": "containerd", "Version": "1.7.24~ds1"},
    {"Name": "runc", "Version": "1.1.15+ds1"}, {"Name": "docker-init", "Version": "0.19.0"}]}


def daemon(info: dict) -> Docker:
    dk = Docker.__new__(Docker)   # no connection: the checks only read the daemon's info
    dk._info = info
    return dk


def test_versions_name_docker_containerd_and_runc():
    v = docker_versions(VERSION_26)
    assert v == {"docker": "26.1.5+dfsg1", "containerd": "1.7.24~ds1", "runc": "1.1.15+ds1"}
    assert platform_line(v) == "Docker 26.1.5+dfsg1, containerd 1.7.24~ds1, runc 1.1.15+ds1"
    assert platform_line({}) == "Docker ?, containerd ?, runc ?"


def test_overlay2_experimental_daemon_is_accepted():
    dk = daemon({"ExperimentalBuild": True, "Driver": "overlay2",
                 "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]]})
    dk.require_checkpointing()
    assert not dk.uses_containerd_store()


def test_containerd_image_store_is_refused_in_one_line_saying_what_to_change():
    dk = daemon({"ExperimentalBuild": True, "Driver": "overlayfs",
                 "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]})
    with pytest.raises(PreflightError) as exc:
        dk.require_checkpointing()
    assert "containerd's image store" in exc.value.message
    assert "containerd-snapshotter" in exc.value.hint and "\n" not in exc.value.line()


def test_non_experimental_daemon_is_refused():
    with pytest.raises(PreflightError, match="experimental"):
        daemon({"ExperimentalBuild": False, "Driver": "overlay2"}).require_checkpointing()
