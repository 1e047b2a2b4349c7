"""The destination's judgement of the HostConfig a source sends: what would hand the container the host."""
from __future__ import annotations

import pytest

from agents.trust import dangerous_settings, require_trusted
from migrate.errors import PreflightError

ORDINARY = {"Binds": ["/srv/data:/data:ro"], "CapAdd": ["NET_BIND_SERVICE"], "NetworkMode": "bridge",
            "CgroupnsMode": "host", "IpcMode": "private",   # Docker's defaults on cgroup v1
            "SecurityOpt": ["seccomp=unconfined"], "RestartPolicy": {"Name": "always"}}


def test_an_ordinary_container_is_fine():
    assert dangerous_settings(ORDINARY) == []
    require_trusted(ORDINARY, "web", "hostA", allowed=False)


def test_each_way_to_the_host_is_named():
    hc = {"Privileged": True, "CapAdd": ["CAP_SYS_ADMIN", "chown"], "Devices": [{"PathOnHost": "/dev/sda"}],
          "Binds": ["/:/host", "/var/run/docker.sock:/var/run/docker.sock"], "PidMode": "host",
          "Mounts": [{"Type": "bind", "Source": "/etc/"}], "SecurityOpt": ["apparmor=unconfined"]}
    assert dangerous_settings(hc) == ["privileged", "capability SYS_ADMIN", "device /dev/sda", "PidMode host",
                                      "bind of /", "bind of /var/run/docker.sock", "bind of /etc",
                                      "security-opt apparmor=unconfined"]


def test_refused_in_one_line_unless_allowed():
    with pytest.raises(PreflightError) as exc:
        require_trusted({"Privileged": True}, "cr", "hostA", allowed=False)
    assert "cr from hostA asks for privileged" in exc.value.line() and "--allow-privileged" in exc.value.line()
    require_trusted({"Privileged": True}, "cr", "hostA", allowed=True)
