"""A TCP client on the lab's client machine (its own network namespace on the segment) that numbers lines
through one connection to an echo server and checks each echo: what a connected client sees of a move (the
keep-ip tests, ``cmigrate bench``'s ``keepip`` methods)."""
from __future__ import annotations

import threading
import time

from migrate.errors import LabError
from migrate.lab import CLIENT_ADDR, client_socket

ECHO_PORT = 7000
# an echo service inside a busybox container (one connection at a time, as busybox nc serves)
ECHO_SERVER = f"while true; do nc -l -p {ECHO_PORT} -e cat; done"


class EchoClient:
    """Sends numbered lines over one connection, as fast as the echoes come back, and records every echo and
    the longest wait for one: the client's view of a move."""

    def __init__(self, ip: str, port: int = ECHO_PORT) -> None:
        deadline = time.monotonic() + 20
        while True:   # the server listens again a moment after its previous client left
            self.conn = client_socket()   # a machine on the segment: the lab's client
            self.conn.settimeout(30)
            try:
                self.conn.connect((ip, port))
                break
            except OSError:
                self.conn.close()
                if time.monotonic() > deadline:
                    raise LabError(f"no echo server at {ip}:{port}")
                time.sleep(0.2)
        if self.conn.getsockname()[0] != CLIENT_ADDR:   # from the client, really
            raise LabError(f"the echo client's socket is at {self.conn.getsockname()[0]}, not {CLIENT_ADDR}")
        self.sent = self.got = 0
        self.longest = 0.0
        self.error: BaseException | None = None
        self.wrong: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = b""
        try:
            while not self.stop.is_set():
                self.conn.sendall(f"{self.sent}\n".encode())
                self.sent += 1
                t0 = time.monotonic()
                while b"\n" not in buf:
                    chunk = self.conn.recv(4096)
                    if not chunk:
                        raise ConnectionError("end of stream")
                    buf += chunk
                self.longest = max(self.longest, time.monotonic() - t0)
                line, buf = buf.split(b"\n", 1)
                if line.decode() != str(self.got):
                    self.wrong.append(line.decode())
                self.got += 1
                time.sleep(0.01)
        except BaseException as exc:
            self.error = exc

    def goes_on(self, why: str, more: int = 20, timeout: float = 20.0) -> None:
        """Wait until ``more`` further echoes came back (or the connection broke): ``why`` names a stall."""
        before, deadline = self.got, time.monotonic() + timeout
        while self.got < before + more and self.error is None:
            if time.monotonic() > deadline:
                raise LabError(why)
            time.sleep(0.1)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(40)
        self.conn.close()
