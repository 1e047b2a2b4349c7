"""The network lock, on real network namespaces and nftables: locked, a peer gets neither ARP nor IP answers;
unlocked, it does again; the announcement moves a peer's neighbour entry to the announced MAC."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest

from agents import netlock

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@pytest.fixture
def pair():
    """Two namespaces joined by a veth: ``mine`` (10.99.0.1 and fd99::1, locked by the tests) and ``peer``
    (10.99.0.2 and fd99::2)."""
    tag = uuid.uuid4().hex[:6]
    mine, peer = f"cmt-a-{tag}", f"cmt-b-{tag}"
    sh("ip", "netns", "add", mine)
    sh("ip", "netns", "add", peer)
    try:
        sh("ip", "link", "add", "v0", "netns", mine, "type", "veth", "peer", "name", "v1", "netns", peer)
        for ns, dev, addr in ((mine, "v0", "10.99.0.1/24"), (peer, "v1", "10.99.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "addr", "add", addr.replace("10.99.0.", "fd99::").replace("/24", "/64"), "dev", dev,
               "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        deadline = time.monotonic() + 10   # both ends up (carrier) before anything is sent across
        while any(json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", dev).stdout)[0]["operstate"] != "UP"
                  for ns, dev in ((mine, "v0"), (peer, "v1"))):
            assert time.monotonic() < deadline, "the veth pair did not come up"
            time.sleep(0.05)
        yield f"/run/netns/{mine}", peer
    finally:
        sh("ip", "netns", "del", mine, check=False)
        sh("ip", "netns", "del", peer, check=False)


def reachable(peer: str) -> bool:
    sh("ip", "-n", peer, "neigh", "flush", "dev", "v1", check=False)
    return sh("ip", "netns", "exec", peer, "busybox", "ping", "-c1", "-W1", "10.99.0.1", check=False).returncode == 0


def test_locked_nothing_answers_and_unlocked_all_does(pair):
    netns, peer = pair
    assert reachable(peer) and not netlock.locked(netns)
    netlock.lock(netns)
    assert netlock.locked(netns)
    assert not reachable(peer)
    neigh = sh("ip", "-n", peer, "neigh", "show", "10.99.0.1").stdout
    assert "lladdr" not in neigh, f"the locked side answered ARP: {neigh}"
    netlock.unlock(netns)
    netlock.unlock(netns)   # twice: nothing to remove, no error
    assert not netlock.locked(netns) and reachable(peer)


@pytest.mark.parametrize("ip", ["10.99.0.1", "fd99::1"])
def test_the_announcement_moves_a_peer_s_neighbour_entry(pair, ip):
    netns, peer = pair
    found = {a: (dev, mac) for dev, mac, a in netlock.addresses(netns)}
    assert {"10.99.0.1", "fd99::1"} <= set(found), found
    dev, mac = found[ip]
    assert dev == "v0"
    sh("ip", "-n", peer, "neigh", "replace", ip, "lladdr", "02:00:00:00:00:99", "dev", "v1", "nud", "stale")
    netlock.announce(netns)
    neigh = sh("ip", "-n", peer, "neigh", "show", ip).stdout
    assert f"lladdr {mac}" in neigh, neigh
