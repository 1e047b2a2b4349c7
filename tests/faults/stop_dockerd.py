"""The fault hook that stops a lab dockerd: SIGTERM, then wait until its socket refuses new connections (dockerd
closes it first thing on the signal, asynchronously), so that what the migration does next meets a daemon on its
way out. Run as ``python stop_dockerd.py PIDFILE SOCKET``."""
import os
import signal
import socket
import sys
import time


def main(pidfile: str, path: str) -> int:
    with open(pidfile) as f:
        os.kill(int(f.read().strip()), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(path)
            except OSError:
                return 0
        time.sleep(0.01)
    print(f"stop_dockerd: {path} still takes connections 10 s after SIGTERM", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
