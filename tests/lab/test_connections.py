"""Containers that hold TCP connections: refused in one line before the freeze, naming the connections and the
option; moved with --tcp-close, after which the client sees its connection end, reconnects to the container's
new address, and the server goes on from where it was (hostA -> hostB in stop-copy, back in post-copy)."""
from __future__ import annotations

import socket
import time

from migrate import lab
from tests.lab.conftest import cmigrate
from tests.lab.test_migrate import absent, both, no_work_left, running  # noqa: F401 (both: a fixture)

PORT = 17000
# an echo service (one connection at a time, as busybox nc serves) beside a counter: the server's own state
SERVER = ('i=0; (while true; do echo $i; i=$(expr $i + 1); sleep 1; done) & '
          'while true; do nc -l -p 7000 -e cat; done')


def _connect(host: str, timeout: float = 20.0) -> socket.socket:
    """A client on the lab's segment, connected through ``host``'s published port, that gets its echo."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = socket.create_connection((lab.host(host).address, PORT), timeout=5)
            conn.sendall(b"hello\n")
            if _line(conn) == b"hello\n":
                return conn
            conn.close()
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no echo through {host}:{PORT}"
        time.sleep(0.3)


def _line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            return data
        data += chunk
    return data


def _ends(conn: socket.socket, timeout: float = 20.0) -> str:
    """Wait until the client's connection ends: how (an end of stream or a reset)."""
    conn.settimeout(timeout)
    try:
        conn.sendall(b"still there?\n")
        while True:
            data = conn.recv(64)
            if not data:
                return "end of stream"
            if b"still there?" in data:   # the old copy answered: it must not, once moved
                return "answered"
    except ConnectionResetError:
        return "reset"
    except socket.timeout:
        return "silence"
    finally:
        conn.close()


def test_a_connected_container_is_refused_fast_naming_its_connection(both):
    a, b = both
    name = a.run_detached("-p", f"{PORT}:7000", "busybox", "sh", "-c", SERVER)
    conn = _connect("hostA")
    try:
        t0 = time.monotonic()
        res = cmigrate(name, "hostA", "hostB")
        took = time.monotonic() - t0
        print(f"refused after {took:.1f} s: {res.err.strip()}")
        assert res.status == 1
        lines = res.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"cmigrate: error: hostA: container {name} holds 1 TCP "
                                                       "connection ("), lines
        assert ":7000 <-> " in lines[0] and "--tcp-close" in lines[0]
        assert took < 10, f"refused only after {took:.1f} s"
        assert running(a, name) and absent(b, name) and no_work_left()
        conn.sendall(b"again\n")   # nothing was frozen: the connection goes on
        assert _line(conn) == b"again\n"
    finally:
        conn.close()


def test_tcp_close_moves_it_and_the_client_reconnects_to_the_new_address(both):
    a, b = both
    name = a.run_detached("-p", f"{PORT}:7000", "busybox", "sh", "-c", SERVER)
    a.wait_logs(name, lambda lines: len(lines) >= 2)
    last = -1
    for src, dst, d_src, d_dst, mode in (("hostA", "hostB", a, b, "stop-copy"), ("hostB", "hostA", b, a, "post-copy")):
        conn = _connect(src)
        before = [int(x) for x in d_src.wait_logs(name, lambda lines: len(lines) >= 1)]
        res = cmigrate("--tcp-close", "--mode", mode, name, src, dst)
        assert res.status == 0, res.err
        assert absent(d_src, name) and running(d_dst, name)
        how = _ends(conn)
        print(f"{src} -> {dst} ({mode}): the client's connection ended with {how}")
        assert how in ("end of stream", "reset"), how
        again = _connect(dst)   # the new address: the server there answers
        again.close()
        n = [int(x) for x in d_dst.wait_logs(name, lambda lines: len(lines) >= 2)]
        assert n == list(range(n[0], n[0] + len(n))) and n[0] >= max(before[-1], last), \
            f"the server's counter did not go on on {dst}: {before[-3:]} then {n[:5]}"
        last = n[-1]
    assert no_work_left()


FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"


def test_the_lab_has_a_shared_network_and_a_client_on_the_segment(both):
    import ipaddress
    import subprocess
    import sys
    a, b = both
    seen = {}
    for d, host in ((a, "hostA"), (b, "hostB")):
        name = d.run_detached("--network", lab.SHARED_NETWORK, "busybox", "sh", "-c",
                              f"echo from-{host} > /index.html; httpd -f -p 80 -h /")
        ip = d("inspect", "-f", f"{{{{.NetworkSettings.Networks.{lab.SHARED_NETWORK}.IPAddress}}}}", name).out.strip()
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(lab.SHARED_RANGES[host]), ip
        seen[host] = ip
    assert seen["hostA"] != seen["hostB"]
    for host, ip in seen.items():   # each reachable from the client, at layer 2 through the bridge
        deadline = time.monotonic() + 20
        while True:
            res = subprocess.run(lab.client([sys.executable, "-c", FETCH, f"http://{ip}/"]),
                                 capture_output=True, text=True)
            if res.returncode == 0:
                assert res.stdout.strip() == f"from-{host}"
                break
            assert time.monotonic() < deadline, f"the client cannot reach {host}'s {ip}: {res.stderr}"
            time.sleep(0.3)
