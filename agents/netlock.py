"""A container's network, locked for the move, and announced where it now is.

With ``--keep-ip`` two hosts hold the container's address for a while: the frozen source, and the destination
whose copy Docker gives the same address and MAC before the freeze. Neither may answer for it while the other
could. The lock is two nftables tables in the container's network namespace, dropping every IP packet (but
loopback) and every ARP packet both ways: no reply, no retransmission, no reset leaves it and nothing reaches its
sockets, so a segment in flight is dropped and retransmitted by the peer, never answered. (iptables cannot filter
ARP; CRIU's own lock is lifted at the end of a ``--leave-running`` dump and comes too late on restore.)

- source: locked after the freeze's pause, before the dump, and kept until the frozen copy is killed; a rollback
  unlocks it before the thaw.
- destination: locked by restore_gate.py in the new namespace before Docker's hook moves the endpoint in, and
  unlocked once the restored container runs; then an unsolicited ARP for each IPv4 address, and an unsolicited
  neighbour advertisement for each IPv6 one, tells the segment (switches' tables, peers' caches) where the
  address now is.
"""
from __future__ import annotations

import json
import subprocess
import sys

TABLE = "cmigrate_lock"
RULES = f"""table inet {TABLE} {{
  chain in {{ type filter hook input priority -300; policy drop; iif lo accept; }}
  chain out {{ type filter hook output priority -300; policy drop; oif lo accept; }}
}}
table arp {TABLE} {{
  chain in {{ type filter hook input priority -300; policy drop; }}
  chain out {{ type filter hook output priority -300; policy drop; }}
}}
"""
# run inside the namespace: for each (interface, MAC, address), IPv4: an ARP request and reply for its own
# address, to the broadcast address; IPv6: an unsolicited neighbour advertisement (override set) to all nodes,
# hop limit 255 as receivers demand, with the MAC as its target link-layer address (RFC 4861 7.2.6)
ANNOUNCE = r"""
import socket, struct, sys
for name, mac, ip in (a.split(",") for a in sys.argv[1:]):
    hw = bytes.fromhex(mac.replace(":", ""))
    if ":" in ip:
        index = socket.if_nametoindex(name)
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        na = struct.pack("!BBHI16sBB6s", 136, 0, 0, 0x20000000, socket.inet_pton(socket.AF_INET6, ip), 2, 1, hw)
        try:   # from the address itself: the link-local one may still be in its duplicate address detection
            s.bind((ip, 0, 0, index))
        except OSError:
            pass
        try:
            s.sendto(na, ("ff02::1", 0, 0, index))   # the kernel fills in the ICMPv6 checksum
        except OSError as exc:   # no usable source address yet, say: the others still go out
            print(f"neighbour advertisement for {ip}: {exc}", file=sys.stderr)
        s.close()
        continue
    addr = socket.inet_aton(ip)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((name, 0x0806))
    for op in (1, 2):   # a request for its own address, then a reply: peers update on either
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, hw, addr, b"\xff" * 6 if op == 2 else b"\0" * 6,
                          addr)
        s.send(b"\xff" * 6 + hw + b"\x08\x06" + arp)
    s.close()
"""


def _in(netns: str, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={netns}", "--", *argv], input=input, capture_output=True, text=True,
                          timeout=30)


def lock(netns: str) -> None:
    """Lock the network namespace at ``netns`` (a path: /proc/PID/ns/net, a sandbox key); OSError if it cannot."""
    res = _in(netns, ["nft", "-f", "-"], RULES)
    if res.returncode != 0:
        raise OSError(f"nft could not lock the container's network: {res.stderr.strip()[-200:]}")


def unlock(netns: str) -> None:
    """Remove the lock (nothing if there is none)."""
    for family in ("inet", "arp"):
        _in(netns, ["nft", "delete", "table", family, TABLE])


def open_up(netns: str) -> None:
    """If the namespace is locked: unlock it and announce its addresses (the other host may have announced them
    meanwhile, with the same MAC)."""
    if locked(netns):
        unlock(netns)
        announce(netns)


def locked(netns: str) -> bool:
    return _in(netns, ["nft", "list", "table", "inet", TABLE]).returncode == 0


def addresses(netns: str) -> list[tuple[str, str, str]]:
    """(interface, MAC, address) of each IPv4 and IPv6 address of each Ethernet interface in the namespace."""
    res = _in(netns, ["ip", "-j", "addr", "show"])
    found = []
    for link in json.loads(res.stdout or "[]") if res.returncode == 0 else []:
        if link.get("link_type") != "ether":
            continue
        for a in link.get("addr_info", []):
            if a.get("family") in ("inet", "inet6"):
                found.append((link["ifname"], link["address"], a["local"]))
    return found


def announce(netns: str) -> None:
    """Unsolicited ARP for every IPv4 address of the namespace, a neighbour advertisement for every IPv6 one."""
    found = addresses(netns)
    if found:
        _in(netns, [sys.executable, "-I", "-c", ANNOUNCE, *(",".join(a) for a in found)])
