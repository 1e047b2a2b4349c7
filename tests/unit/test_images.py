"""agents/images.py against a real CRIU dump of a small process tree made here: a parent and its child, a TCP
listener, a file, a pipe and a secret in memory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from agents.images import Checkpoint

WORKLOAD = """
import os, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 0)); s.listen()
f = open(sys.argv[1], "w"); f.write("x"); f.flush()
secret = "the database password is " + "hunter" + str(2 * 1000 + 2)
r, w = os.pipe()
print(s.getsockname()[1], flush=True)
if os.fork() == 0:
    time.sleep(10000)
time.sleep(10000)
"""


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    if shutil.which("criu") is None or os.geteuid() != 0:
        pytest.fail("CRIU and root are needed (./install.sh)")
    d = tmp_path_factory.mktemp("dump")
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(d / "data.txt")], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    port = int(proc.stdout.readline())
    time.sleep(0.2)   # the child forked
    images = d / "images"
    images.mkdir()
    res = subprocess.run(["criu", "dump", "-t", str(proc.pid), "-D", str(images), "-o", "dump.log",
                          "--shell-job"], capture_output=True, text=True)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert res.returncode == 0, (images / "dump.log").read_text()[-2000:]
    return Checkpoint(images), proc.pid, port, d


def test_the_process_tree_with_command_lines(dumped):
    cp, pid, _, d = dumped
    procs = cp.processes()
    assert [p["pid"] for p in procs][0] == pid and len(procs) == 2
    parent, child = procs
    assert child["ppid"] == pid and parent["state"] == child["state"] == "alive"
    assert parent["cmdline"][:2] == [sys.executable, "-c"] and parent["cmdline"][-1] == str(d / "data.txt")
    assert parent["uid"] == 0 and parent["threads"] == 1
    assert 0 < parent["dumped_bytes"] <= parent["memory_bytes"]


def test_open_files_and_sockets_are_named(dumped):
    cp, _, port, d = dumped
    files = {f["what"] for f in cp.processes()[0]["files"]}
    assert f"tcp listening on 127.0.0.1:{port}" in files
    assert str(d / "data.txt") in files
    assert sum(w.startswith("pipe ") for w in files) >= 1


def test_search_finds_the_secret_and_says_where(dumped):
    cp, pid, _, _ = dumped
    found = cp.search("password is hunter2002")
    assert found and {m["pid"] for m in found} >= {pid}
    m = next(m for m in found if m["pid"] == pid)
    assert int(m["address"], 16) > 0 and "hunter2002" in m["context"]
    assert cp.search("no such text anywhere 8c1f") == []


def test_stats_and_namespaces(dumped):
    cp = dumped[0]
    assert cp.stats()["pages_written"] > 0
    assert set(cp.namespaces()) >= {"pid", "net", "mnt"}
    assert cp.layer() == {} and cp.meta() == {}


class Fake:
    def __init__(self, procs, files):
        self.procs, self.files = procs, files

    def processes(self):
        return self.procs

    def layer_files(self):
        return self.files


def proc(pid, name, mem, state="alive"):
    return {"pid": pid, "name": name, "cmdline": [name], "memory_bytes": mem, "state": state}


def test_diff_names_processes_memory_and_files():
    from agents.images import diff
    a = Fake([proc(1, "sh", 100), proc(7, "old", 5), proc(8, "died", 0)],
             {"/kept": "h1", "/edited": "h2", "/gone": "h3", "/etc/x": "deleted"})
    b = Fake([proc(1, "sh", 160), proc(9, "new", 7), proc(8, "died", 0, "zombie")],
             {"/kept": "h1", "/edited": "h4", "/added": "h5", "/etc/x": "deleted", "/etc/y": "deleted"})
    d = diff(a, b)
    assert d["processes_added"] == [{"pid": 9, "name": "new", "cmdline": ["new"]}]
    assert d["processes_removed"] == [{"pid": 7, "name": "old", "cmdline": ["old"]}]
    assert d["processes_changed"] == [{"pid": 8, "name": "died", "before": "alive", "after": "zombie"}]
    assert d["memory"][0] == {"pid": 1, "name": "sh", "before": 100, "after": 160, "change": 60}
    assert d["memory_change"] == 167 - 105
    assert (d["files_added"], d["files_removed"], d["files_changed"]) == (["/added"], ["/etc/y", "/gone"], ["/edited"])
