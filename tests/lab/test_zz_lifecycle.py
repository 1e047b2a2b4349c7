"""lab up / down: idempotent, recovers after a crash, and leaves nothing behind. Runs last (it tears the lab down)."""
from __future__ import annotations

import os
import signal
import subprocess
import time

from migrate import lab
from migrate.cli import main


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_lab_up_twice_is_harmless(the_lab, capsys):
    before = {h.name: lab._read_pid(h.dockerd_pidfile) for h in lab.hosts()}
    assert main(["lab", "up"]) == 0
    assert "already up" in capsys.readouterr().err
    assert {h.name: lab._read_pid(h.dockerd_pidfile) for h in lab.hosts()} == before


def test_lab_up_recovers_after_a_crash(the_lab):
    h = lab.host("hostA")
    for pidfile in (h.dockerd_pidfile, h.sshd_pidfile):
        pid = lab._read_pid(pidfile)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not lab.is_up()
    assert main(["lab", "up", "-q"]) == 0
    assert lab.is_up()
    assert main(["lab", "status"]) == 0


def test_lab_down_leaves_nothing_behind(the_lab):
    assert main(["lab", "down", "-q"]) == 0
    assert lab.leftovers() == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "cmlab" not in netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "cmlab" not in links
    with open("/proc/self/mountinfo") as f:
        assert "cmigrate-lab" not in f.read()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "cmigrate-lab" not in ps
    assert not lab.LAB_ROOT.exists() and not lab.RUN_ROOT.exists()
    # down twice is harmless
    assert main(["lab", "down", "-q"]) == 0
