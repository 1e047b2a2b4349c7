"""Fixtures for tests on the real two-host lab (real dockerd, CRIU and sshd)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from migrate import lab
from transport.ssh import SSHHost

DOCKER = "/usr/bin/docker"   # Debian's client, the same release as the lab's dockerd
COUNTER = 'i=0; while true; do echo $i; i=$(expr $i + 1); sleep 1; done'


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def the_lab():
    lab.up()   # a no-op when .ci/run or the developer brought it up already
    return lab


@pytest.fixture(autouse=True)
def this_checkouts_agent(monkeypatch):
    # The lab's hosts share this machine's files: run the agent of the code under test, not whichever
    # checkout last linked /usr/local/bin/cmigrate-agent.
    monkeypatch.setenv("CMIGRATE_AGENT", str(Path(sys.prefix) / "bin" / "cmigrate-agent"))


@dataclass
class CLI:
    status: int
    out: str
    err: str


def cmigrate(*args: str, env: dict | None = None, timeout: float = 180) -> CLI:
    """The cmigrate command as a user runs it."""
    res = subprocess.run([str(Path(sys.prefix) / "bin" / "cmigrate"), *args], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **(env or {})})
    return CLI(res.returncode, res.stdout, res.stderr)


class RemoteDocker:
    """The docker CLI on one lab host, over SSH; removes the containers it made when the test ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.host = SSHHost(name, str(lab.SSH_CONFIG))
        self.made: list[str] = []

    def __call__(self, *args: str, check: bool = True, input: bytes | None = None):
        return self.host.run([DOCKER, *args], check=check, input=input, timeout=120)

    def run_detached(self, *args: str, name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:8]}"
        self.made.append(name)
        self("run", "-d", "--name", name, *args)
        return name

    def logs(self, name: str) -> list[str]:
        return self("logs", name).out.split()

    def state(self, name: str) -> str:
        return self("inspect", "-f", "{{.State.Status}}", name).out.strip()

    def sh(self, name: str, script: str) -> str:
        return self("exec", name, "sh", "-c", script).out

    def wait_logs(self, name: str, predicate, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.logs(name)
            if predicate(lines):
                return lines
            assert time.monotonic() < deadline, f"{self.name}: logs of {name} never matched: {lines[-5:]}"
            time.sleep(0.2)

    def cleanup(self) -> None:
        for name in self.made:
            self("rm", "-f", name, check=False)
        self.host.close()


@pytest.fixture
def docker_a(the_lab):
    d = RemoteDocker("hostA")
    yield d
    d.cleanup()


@pytest.fixture
def docker_b(the_lab):
    d = RemoteDocker("hostB")
    yield d
    d.cleanup()


def consecutive(lines: list[str]) -> bool:
    """The counter's output is 0, 1, 2, ... with no reset and no gap."""
    return [int(x) for x in lines] == list(range(len(lines)))


@pytest.fixture
def failing_criu():
    """CRIU fails the dump of containers started with CMIGRATE_TEST_FAIL=1 (an action script, via runc.conf)."""
    conf = Path("/etc/criu/runc.conf")
    assert not conf.exists(), "a runc.conf is already there; not touching it"
    script = lab.LAB_ROOT / f"fail-dump-{uuid.uuid4().hex[:6]}.sh"
    script.write_text('#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = pre-dump ] || exit 0\n'
                      'tr "\\0" "\\n" < /proc/$CRTOOLS_INIT_PID/environ | grep -qx CMIGRATE_TEST_FAIL=1 && '
                      '{ echo "injected dump failure" >&2; exit 1; }\nexit 0\n')
    script.chmod(0o755)
    conf.parent.mkdir(exist_ok=True)
    conf.write_text(f"action-script {script}\n")
    yield
    conf.unlink()
    script.unlink()
