"""CRIU's verdict on a host is asked once per CRIU binary, kernel and boot (migrate/hostinfo.py): a passing check
is cached, a failing one never, and another binary is asked afresh."""
from __future__ import annotations

import os

import pytest

from migrate import hostinfo
from transport.hosts import LocalHost

FAKE = """#!/bin/sh
echo "$@" >> {log}
case "$1" in --version) echo 'Version: {version}' ;; check) exit {status} ;; esac
"""


@pytest.fixture
def fake_criu(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the cache is root's (the agents run as root)")
    monkeypatch.setattr(hostinfo, "CHECK_CACHE", tmp_path / "cache" / "criu-check.json")
    log = tmp_path / "calls"

    def make(version: str = "4.2.1", status: int = 0):
        criu = tmp_path / "bin" / "criu"
        criu.parent.mkdir(exist_ok=True)
        criu.write_text(FAKE.format(log=log, version=version, status=status))
        criu.chmod(0o755)
        return str(criu)
    return make, log


def _calls(log) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_passing_check_is_asked_once(fake_criu):
    make, log = fake_criu
    criu = make()
    first = hostinfo.criu_info(LocalHost(), criu)
    asked = _calls(log)
    assert first.check_ok and first.version == "4.2.1" and asked == 4   # --version, check, two features
    again = hostinfo.criu_info(LocalHost(), criu)
    assert again == first and _calls(log) == asked, "asked CRIU again for the same binary, kernel and boot"


def test_another_binary_or_a_failing_check_is_asked_afresh(fake_criu):
    make, log = fake_criu
    criu = make()
    hostinfo.criu_info(LocalHost(), criu)
    asked = _calls(log)
    make(version="4.3", status=0)   # replaced (a new install): its identity changed
    assert hostinfo.criu_info(LocalHost(), criu).version == "4.3" and _calls(log) > asked
    make(version="4.3", status=1)
    failing = hostinfo.criu_info(LocalHost(), criu)
    asked = _calls(log)
    assert not failing.check_ok
    assert not hostinfo.criu_info(LocalHost(), criu).check_ok and _calls(log) > asked, "a failure was cached"
