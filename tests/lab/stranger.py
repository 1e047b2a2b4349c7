"""A local attacker for the tests: an unprivileged process (uid 65534) in one lab host's network namespace that
polls /proc/net/tcp every millisecond and connects to every new listener on 127.0.0.1, reading what it is sent.

    python3 stranger.py LOG

It writes one line per event to LOG: ``ready UID``, ``listen PORT``, ``connected PORT``, ``read PORT N`` (bytes it
got), ``scans N`` (how many times it read the table, every 500). It runs until killed."""
import os
import socket
import sys
import threading
import time

log = open(sys.argv[1], "a", buffering=1)
lock = threading.Lock()


def say(line: str) -> None:
    with lock:
        log.write(line + "\n")


def listeners() -> set[int]:
    ports = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "0A" and local.startswith("0100007F:"):
                ports.add(int(local.split(":")[1], 16))
    return ports


def grab(port: int) -> None:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return
    say(f"connected {port}")
    s.settimeout(2)
    total = 0
    try:
        s.sendall(b"\0" * 24)   # what a stranger could splice into a page stream
        while chunk := s.recv(65536):
            total += len(chunk)
    except OSError:
        pass
    say(f"read {port} {total}")
    s.close()


say(f"ready {os.getuid()}")
seen: set[int] = set()
scans = 0
while True:
    now = listeners()
    for port in now - seen:
        say(f"listen {port}")
        threading.Thread(target=grab, args=(port,), daemon=True).start()
    seen = now
    scans += 1
    if scans % 500 == 0:
        say(f"scans {scans}")
    time.sleep(0.001)
