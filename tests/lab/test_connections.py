"""Containers that hold TCP connections: refused in one line before the freeze, naming the connections and the
option; moved with --tcp-close, after which the client sees its connection end, reconnects to the container's
new address, and the server goes on from where it was (hostA -> hostB in stop-copy, back in post-copy); moved
with --keep-ip on the lab's shared network, in stop-copy and in post-copy, hostA -> hostB and back, while the
lab's client (its own network namespace on the segment) keeps one TCP connection numbering lines through both
moves, or a UDP flow."""
from __future__ import annotations

import socket
import time

import pytest

from migrate import lab
from migrate.lab.echo import EchoClient
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
        _first_packet(d, name)
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


def _first_packet(d, name: str) -> None:
    """A new container on the shared network has sent nothing yet, and Docker derives its MAC from its address: a
    container of an earlier test that had the address, last seen on the other host, leaves the bridge sending
    that MAC to the other host's port until this one sends (as any first packet would)."""
    d("exec", name, "ping", "-c", "1", "-W", "2", lab.BRIDGE_ADDR)


def _on_shared(d, *args: str) -> tuple[str, str]:
    """An echo server (and counter) on the shared network: its name and address."""
    name = d.run_detached("--network", lab.SHARED_NETWORK, *args, "busybox", "sh", "-c", SERVER)
    _first_packet(d, name)
    ip = d("inspect", "-f", f"{{{{.NetworkSettings.Networks.{lab.SHARED_NETWORK}.IPAddress}}}}", name).out.strip()
    return name, ip


MODES = ("stop-copy", "post-copy")


@pytest.mark.parametrize("mode", MODES)
def test_keep_ip_keeps_the_address_and_a_tcp_connection_through_both_moves(both, mode):
    a, b = both
    name, ip = _on_shared(a)
    client = EchoClient(ip)
    time.sleep(1)
    for src, dst, d_dst in (("hostA", "hostB", b), ("hostB", "hostA", a)):
        res = cmigrate("--keep-ip", "--mode", mode, name, src, dst)
        assert res.status == 0, res.err
        moved_ip = d_dst("inspect", "-f", f"{{{{.NetworkSettings.Networks.{lab.SHARED_NETWORK}.IPAddress}}}}",
                         name).out.strip()
        assert moved_ip == ip
        client.goes_on(f"the connection stalled after the move to {dst}")
        print(f"{src} -> {dst} ({mode}): {client.got} echoes so far, longest stall {client.longest:.3f} s")
        assert client.error is None, f"the connection broke: {client.error}"
    client.finish()
    assert client.error is None and client.wrong == [] and client.got >= 40, (client.error, client.wrong[:5])


def test_keep_ip_is_refused_where_the_address_cannot_be_kept(both):
    a, b = both
    on_bridge = a.run_detached("busybox", "sh", "-c", SERVER)
    res = cmigrate("--keep-ip", on_bridge, "hostA", "hostB")
    assert res.status == 1 and "--keep-ip: this host has no network bridge with subnet" in res.err, res.err
    assert running(a, on_bridge) and absent(b, on_bridge)
    name, ip = _on_shared(a)
    squatter = b.run_detached("--network", lab.SHARED_NETWORK, "--ip", ip, "busybox", "sleep", "600")
    res = cmigrate("--keep-ip", name, "hostA", "hostB")
    assert res.status == 1 and f"--keep-ip: address {ip} is in use here, by {squatter}" in res.err, res.err
    assert running(a, name) and absent(b, name) and no_work_left()


def test_keep_ip_rolled_back_after_the_restore_keeps_the_connection_on_the_source(both):
    # Ctrl-C once the destination runs, before the commit point: the destination's copy goes, never having
    # answered the client (its network opens only at the commit), and the source thaws with the connection as
    # the client left it
    a, b = both
    name, ip = _on_shared(a)
    client = EchoClient(ip)
    time.sleep(1)
    res = cmigrate("--keep-ip", name, "hostA", "hostB", env={"CMIGRATE_FAULT": "int-cli@restored"})
    assert res.status == 130, res.err
    assert running(a, name) and absent(b, name)
    client.goes_on("the connection stalled after the rollback")
    client.finish()
    print(f"rolled back: {client.got} echoes, longest stall {client.longest:.3f} s")
    assert client.error is None and client.wrong == [], (client.error, client.wrong[:5])
    assert no_work_left()


@pytest.mark.parametrize("mode", MODES)
def test_keep_ip_a_udp_flow_gets_answers_again_from_the_same_address(both, mode):
    # the game-server case: the lab's client sends a datagram every 20 ms; after each move the answers come back,
    # from the same address, within the move's downtime plus one second
    import json
    import threading
    a, b = both
    name = a.run_detached("--network", lab.SHARED_NETWORK, "busybox", "udpecho", "7001")
    _first_packet(a, name)
    ip = a("inspect", "-f", f"{{{{.NetworkSettings.Networks.{lab.SHARED_NETWORK}.IPAddress}}}}", name).out.strip()
    sock = lab.client_socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((ip, 7001))
    assert sock.getsockname()[0] == lab.CLIENT_ADDR, sock.getsockname()
    sock.settimeout(0.02)
    answers: list[tuple[float, tuple]] = []
    stop = threading.Event()

    def flow() -> None:
        n = 0
        while not stop.is_set():
            sock.sendto(f"{n}\n".encode(), (ip, 7001))
            n += 1
            try:
                data, peer = sock.recvfrom(64)
                answers.append((time.monotonic(), peer))
            except socket.timeout:
                pass
    thread = threading.Thread(target=flow, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not answers:
            assert time.monotonic() < deadline, f"no UDP answer from {ip}:7001"
            time.sleep(0.1)
        for src, dst in (("hostA", "hostB"), ("hostB", "hostA")):
            res = cmigrate("--keep-ip", "--json", "--mode", mode, name, src, dst)
            assert res.status == 0, res.err
            downtime = json.loads(res.out)["downtime"]
            settled = time.monotonic()
            time.sleep(downtime + 1.5)
            after = [t for t, _ in answers if t > settled - downtime - 0.5]
            gaps = [t2 - t1 for t1, t2 in zip([t for t, _ in answers][:-1], [t for t, _ in answers][1:])]
            print(f"{src} -> {dst} ({mode}): downtime {downtime:.3f} s, longest gap between answers {max(gaps):.3f} s")
            assert after, f"no answer after the move to {dst}"
            assert max(gaps) <= downtime + 1.0, f"answers stopped for {max(gaps):.3f} s (downtime {downtime:.3f} s)"
            assert {peer for _, peer in answers} == {(ip, 7001)}
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def test_keep_ip_a_failed_dump_unlocks_the_source_and_its_connection_goes_on(both, failing_criu):
    a, b = both
    name, ip = _on_shared(a, "-e", "CMIGRATE_TEST_FAIL=1")
    client = EchoClient(ip)
    time.sleep(1)
    res = cmigrate("--keep-ip", name, "hostA", "hostB")
    assert res.status == 1 and "checkpoint failed" in res.err and "runs on hostA again" in res.err, res.err
    assert running(a, name) and absent(b, name)
    client.goes_on("the source's network stayed locked after the failed dump")
    client.finish()
    assert client.error is None and client.wrong == [], (client.error, client.wrong[:5])
    assert no_work_left()
