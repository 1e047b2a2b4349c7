"""Container memory never on a port another local process can reach: an unprivileged process on the source host
(uid 65534, in its network namespace) that connects to every new loopback listener during migrations gets no
page, in stop-copy with pages streamed and in post-copy, and every migration still succeeds.

Before the fix the stop-copy page relay listened on 127.0.0.1 for >= 100 ms while the container was frozen, and
post-copy's CRIU lazy page server listened there and served the first connection: such a process connected to the
relay in 2 of 2 migrations and broke them ("Can't read pagemap from socket"). Now CRIU is handed one end of a
socketpair (``ps-socket``): there is no listener at all.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from migrate import lab
from tests.lab.conftest import cmigrate

STRANGER = Path(__file__).with_name("stranger.py")
CLONE_NEWNET = 0x40000000


class Stranger:
    def __init__(self, host: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cmigrate-stranger-"))
        self.dir.chmod(0o777)
        self.log = self.dir / "log"
        netns = lab.host(host).netns
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", "setpriv", "--reuid", "65534", "--regid", "65534",
             "--clear-groups", sys.executable, "-S", str(STRANGER), str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.netns = netns

    def lines(self) -> list[str]:
        try:
            return self.log.read_text().splitlines()
        except OSError:
            return []

    def wait_for(self, line: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.lines():
            assert self.proc.poll() is None, f"the stranger died: {self.proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, f"the stranger never said {line!r}: {self.lines()[-5:]}"
            time.sleep(0.02)

    def decoy(self) -> int:
        """A listener of our own in that namespace: the stranger must find it, connect and read (it works)."""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        target = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        own = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            assert libc.setns(target, CLONE_NEWNET) == 0   # this thread only, for the socket's creation
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(1)
        finally:
            libc.setns(own, CLONE_NEWNET)
            os.close(own)
            os.close(target)
        with s:
            s.settimeout(10)
            conn, _ = s.accept()
            with conn:
                conn.sendall(b"decoy bytes")
            return s.getsockname()[1]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stderr.close()


@pytest.fixture
def strangers(the_lab):
    """One on each host: each host is the source once."""
    found = []
    try:
        for host in ("hostA", "hostB"):
            s = Stranger(host)
            found.append(s)
            s.wait_for("ready 65534")
            s.decoy_port = s.decoy()
            s.wait_for(f"read {s.decoy_port} 11")   # it found our listener, connected and read what we sent
        yield found
    finally:
        for s in found:
            s.stop()


def foreign(s: Stranger) -> list[str]:
    return [ln for ln in s.lines() if ln.split()[0] in ("listen", "connected", "read")
            and ln.split()[1] != str(s.decoy_port)]


@pytest.mark.parametrize("mode,args", [("stop-copy", ["--stream-pages", "always"]), ("post-copy", [])])
def test_a_local_stranger_gets_no_page_and_breaks_no_migration(docker_a, docker_b, strangers, mode, args):
    name = docker_a.run_detached("busybox", "memhog", "96", "10")
    docker_b.made.append(name)
    docker_a.wait_logs(name, lambda lines: "verified" in lines)
    for src, dst, d in (("hostA", "hostB", docker_b), ("hostB", "hostA", docker_a)):
        res = cmigrate("--mode", mode, *args, name, src, dst)
        assert res.status == 0, res.err
        d.wait_logs(name, lambda lines: lines.count("verified") >= 2, timeout=30)
    for s in strangers:
        scans = [int(ln.split()[1]) for ln in s.lines() if ln.startswith("scans ")]
        assert scans and scans[-1] >= 500, f"the stranger in {s.netns} was not scanning during the migrations"
        assert foreign(s) == [], f"{s.netns}: {foreign(s)}"
