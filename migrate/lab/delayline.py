"""A delay line for the lab's links: every frame between two interfaces is held ``DELAY`` seconds, then goes on.

netem adds a delay in the kernel; where the kernel has none (these build machines: CONFIG_NET_SCH_NETEM is not
set), ``lab.shape_link`` puts this in the link instead:

    host's eth0 <--veth--> VETH  [delay line, in a namespace of its own]  DL0 <--veth--> DL1 on the lab's bridge

It reads frames from both interfaces with packet sockets and writes each to the other side once it is due, in
arrival order (one delay, so one queue). ``PACKET_VNET_HDR`` carries the kernel's offload header with each frame,
so a 64 KiB GSO frame crosses as one (no segmenting here, ~2k frames/s at 1 Gbit/s), and a rate set with tbf on
the veth ends applies as usual. A frame the far side refuses (its queue full) is dropped, as a link would.

    python -m migrate.lab.delayline VETH DL0 SECONDS

It runs until killed (SIGTERM); it prints "ready PID" once both sockets are bound.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from collections import deque

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23   # not what this process sends out of the same interface
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33   # root may pass the rmem/wmem limits (not in Python's socket module)
FRAME = 65536 + 10             # the largest GSO frame, with its virtio_net_hdr
BUFFER = 32 << 20


def _open(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    for option in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
        sock.setsockopt(socket.SOL_SOCKET, option, BUFFER)
    sock.bind((name, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def run(a: str, b: str, delay: float) -> None:
    ends = {}
    sa, sb = _open(a), _open(b)
    ends[sa], ends[sb] = sb, sa
    queue: deque[tuple[float, socket.socket, bytes]] = deque()
    print(f"ready {os.getpid()}", flush=True)
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        ready, _, _ = select.select(list(ends), [], [], timeout)
        now = time.monotonic()
        for sock in ready:
            while True:
                try:
                    frame = sock.recv(FRAME)
                except BlockingIOError:
                    break
                queue.append((now + delay, ends[sock], frame))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, out, frame = queue.popleft()
            try:
                out.send(frame)
            except OSError:   # ENOBUFS (the qdisc's queue is full), EAGAIN: dropped, as on a real link
                pass


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m migrate.lab.delayline VETH DL0 SECONDS", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run(argv[0], argv[1], float(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
