"""No wait without a bound: an agent that starts but never answers (a hung host, a stuck sshd) ends a migration
and a recover within the I/O timeout (an agent gets at least 5 s to start), with one clear line, and touches
nothing."""
from __future__ import annotations

import time

import pytest

from migrate import lab
from tests.lab.conftest import COUNTER, cmigrate


@pytest.fixture
def silent_agent(the_lab):
    """An 'agent' that reads what it is sent and never answers (the hosts share this machine's files)."""
    path = lab.LAB_ROOT / "silent-agent"
    path.write_text("#!/bin/sh\nexec cat >/dev/null\n")
    path.chmod(0o755)
    yield str(path)
    path.unlink()


def test_a_silent_agent_ends_a_migration_within_the_io_timeout(docker_a, docker_b, silent_agent):
    name = docker_a.run_detached("busybox", "sh", "-c", COUNTER)
    docker_a.wait_logs(name, lambda lines: len(lines) >= 1)
    t0 = time.monotonic()
    res = cmigrate("--io-timeout", "3", name, "hostA", "hostB", env={"CMIGRATE_AGENT": silent_agent}, timeout=60)
    took = time.monotonic() - t0
    assert res.status == 1, res.out + res.err
    lines = [ln for ln in res.err.splitlines() if ln.startswith("cmigrate: error:")]
    assert len(lines) == 1 and "did not answer within 5 s of its start" in lines[0], res.err
    assert took < 20, f"took {took:.1f} s"
    assert docker_a.state(name) == "running" and docker_b("inspect", name, check=False).status != 0


def test_a_silent_agent_ends_recover_within_the_io_timeout(silent_agent):
    t0 = time.monotonic()
    res = cmigrate("recover", "--io-timeout", "3", "hostA", env={"CMIGRATE_AGENT": silent_agent}, timeout=60)
    took = time.monotonic() - t0
    assert res.status == 1, res.out + res.err
    assert "did not answer within 5 s of its start" in res.err.strip().splitlines()[-1], res.err
    assert took < 20, f"took {took:.1f} s"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_io_timeout_must_be_a_positive_number(value):
    res = cmigrate("--io-timeout", value, "cr", "hostA", "hostB")
    assert res.status == 2 and "positive number of seconds" in res.err, res.err
