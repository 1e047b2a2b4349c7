"""The TCP connections a container's processes hold, as the preflight must know them before anything is frozen.

CRIU cannot dump a connected TCP socket unless told what to do with it (``--tcp-established``: keep it, which needs
the same address on the destination; ``--tcp-close``: restore it closed). Without either, the dump fails after
the freeze; cmigrate says so before, naming each connection.

A container's processes are those in its init's PID namespace; their sockets are the ``socket:[inode]`` links
in their fd tables; the kernel's table of the init's network namespace (``/proc/PID/net/tcp``, ``tcp6``) gives
each such inode's addresses and state. Listening sockets move as they are, so they are not connections.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
from pathlib import Path

# /proc/net/tcp states (include/net/tcp_states.h) that are not connections to carry or close
LISTEN, CLOSE = "0A", "07"
STATES = {"01": "established", "02": "syn-sent", "03": "syn-recv", "04": "fin-wait1", "05": "fin-wait2",
          "06": "time-wait", "08": "close-wait", "09": "last-ack", "0B": "closing"}


def _address(hex_addr: str) -> str:
    """``0100007F:1F90`` -> ``127.0.0.1:8080``; IPv6 as ``[addr]:port`` (the kernel prints 32-bit words in host
    order)."""
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    words = struct.unpack(f"<{len(raw) // 4}I", raw) if len(raw) in (4, 16) else ()
    packed = struct.pack(f">{len(words)}I", *words)
    if len(packed) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, packed)}:{int(port, 16)}"
    addr = ipaddress.IPv6Address(packed)
    shown = str(addr.ipv4_mapped) if addr.ipv4_mapped else f"[{addr}]"
    return f"{shown}:{int(port, 16)}"


def parse_table(text: str) -> dict[int, tuple[str, str, str]]:
    """A /proc/net/tcp{,6} table: inode -> (local, peer, state) for the sockets that are connections."""
    found = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] in (LISTEN, CLOSE):
            continue
        inode = int(fields[9])
        if inode:   # 0: no file holds it (a time-wait or orphaned socket): nothing of the container's to dump
            found[inode] = (_address(fields[1]), _address(fields[2]), STATES.get(fields[3], fields[3]))
    return found


def _pid_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _socket_inodes(pid: str) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def tcp_connections(init_pid: int) -> list[dict]:
    """The TCP connections the processes of the container whose init is ``init_pid`` hold: local and peer
    address, state; sorted, each once."""
    ns = _pid_ns(init_pid)
    if ns is None:
        return []
    owned: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _pid_ns(entry.name) == ns:
            owned |= _socket_inodes(entry.name)
    table: dict[int, tuple[str, str, str]] = {}
    for name in ("tcp", "tcp6"):
        try:
            table |= parse_table(Path(f"/proc/{init_pid}/net/{name}").read_text())
        except OSError:
            pass
    return sorted(({"local": local, "peer": peer, "state": state}
                   for inode, (local, peer, state) in table.items() if inode in owned),
                  key=lambda c: (c["local"], c["peer"]))

