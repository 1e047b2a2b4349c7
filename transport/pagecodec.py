"""Compressed page streams: CRIU's page-server protocol, as the dump writes it, in chunks that cross the link
zstd-compressed where that pays, raw where it does not.

    CRIU dump --socket--> PageEncoder ==link==> PageDecoder --socket--> criu page-server
                          (chunks: R raw, Z zstd, E end)              (its answers go back unchanged)

A chunk is whatever CRIU wrote, read up to ``CHUNK`` bytes. Each is compressed (zstd level ``LEVEL``, on a pool of
``WORKERS`` threads: zstandard lets go of the GIL while it works, and the order on the wire is kept) and sent so if
that made it at most ``WORTH`` of its size; otherwise raw. Memory that does not compress (random, already
compressed) is found out in a few chunks: after ``GIVE_UP`` raw chunks in a row only every ``PROBE``-th is tried,
so it crosses at the link's speed, not the compressor's. Whenever CRIU stops writing (it waits for the page
server's answer) everything read so far is sent first: no chunk waits for one that may never come.

Frames: one byte of kind, then the payload's length (4 bytes, big-endian), then the payload. ``E`` has none: the
dump's pages end there, and whatever follows on the link (the image files' frames) is not the decoder's to read.
Nothing in a frame is evaluated: a length over ``MAX_FRAME`` or an unknown kind is a corrupt stream.
"""
from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import sys
import termios
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import zstandard

CHUNK = 1 << 20
LEVEL = 1          # measured here: 3.6x on text pages at ~300 MB/s per core (level 3: 3.8x, about half as fast)
WORKERS = 2
WORTH = 0.9        # a compressed chunk is sent only if it is at most this share of its size
GIVE_UP = 4        # raw chunks in a row before compression is only probed
PROBE = 16         # then one chunk in this many is tried
PENDING = 2 * WORKERS   # chunks read ahead of the link at most (memory: PENDING x CHUNK, twice)
MAX_FRAME = CHUNK + (CHUNK >> 4) + 1024
HEADER = struct.Struct(">cI")
RAW, ZSTD, END = b"R", b"Z", b"E"


class CorruptStream(Exception):
    """The page stream is not what an encoder writes."""


class Choice:
    """Which chunks to try compressing: all, until ``GIVE_UP`` in a row did not pay; then one in ``PROBE``."""

    def __init__(self) -> None:
        self.misses = 0
        self.seen = 0

    def try_next(self) -> bool:
        self.seen += 1
        return self.misses < GIVE_UP or self.seen % PROBE == 0

    def result(self, paid: bool, tried: bool) -> None:
        if tried:
            self.misses = 0 if paid else self.misses + 1


class Gate:
    """Whether compressing pays on this link now: only where the link is slower than the compressor. Sending raw,
    a chunk takes the link's time; compressed, the compressor's time (its workers side by side), the link then
    carrying less. The link's speed is what writes into it take (fast while its buffers have room: a link that
    keeps up is not the bottleneck); the compressor's is what chunks took on a worker. Both over the last
    ``WINDOW`` chunks; until the compressor was measured, it is tried."""

    WINDOW = 16

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.link: deque[tuple[int, float]] = deque(maxlen=self.WINDOW)
        self.zstd: deque[tuple[int, float]] = deque(maxlen=self.WINDOW)

    def wrote(self, n: int, seconds: float) -> None:
        self.link.append((n, seconds))

    def compressed(self, n: int, seconds: float) -> None:
        self.zstd.append((n, seconds))

    @staticmethod
    def _rate(samples) -> float | None:
        n, t = sum(s[0] for s in samples), sum(s[1] for s in samples)
        return n / t if t > 0 and n > 0 else None

    def pays(self) -> bool:
        zstd, wire = self._rate(self.zstd), self._rate(self.link)
        if zstd is None or wire is None:
            return True
        return zstd * self.workers > wire


class PageEncoder:
    """Reads CRIU's side (``src``, a stream socket) until it ends, writes frames to ``out`` (a pipe's descriptor).
    ``raw`` and ``wire`` count the bytes read and written; ``on_bytes`` hears of each chunk read. Raw chunks move
    in the kernel (splice: no copy through this process) unless compression is being tried."""

    def __init__(self, src: socket.socket, out: int, on_bytes=None, workers: int = WORKERS,
                 gate: Gate | None = None) -> None:
        self.src, self.out, self.on_bytes = src, out, on_bytes
        self.raw = self.wire = 0
        self.compressed_chunks = self.raw_chunks = 0
        self.choice = Choice()
        self.gate = gate or Gate(workers)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pages-zstd")

    def run(self) -> None:
        """Until CRIU closes its side; OSError if the link breaks (the caller resets CRIU's socket)."""
        pending: deque[tuple[Future | None, bytes, bool]] = deque()
        try:
            while True:
                if not pending:
                    select.select([self.src], [], [])
                available = self._available()
                if available == 0:
                    if pending:   # nothing more for now: CRIU may be waiting for an answer to what it sent
                        while pending:
                            self._write(*pending.popleft())
                        continue
                    if not self.src.recv(1, socket.MSG_PEEK):
                        break   # CRIU is done
                    continue
                tried = self.choice.try_next()
                if not (tried and self.gate.pays()):
                    while pending:
                        self._write(*pending.popleft())
                    self._splice_raw(min(available, CHUNK))
                    continue
                chunk = self._read()
                self._counted(len(chunk))
                pending.append((self._pool.submit(self._compress, chunk), chunk, True))
                while len(pending) >= PENDING or (pending and pending[0][0] is not None and pending[0][0].done()):
                    self._write(*pending.popleft())
            while pending:
                self._write(*pending.popleft())
            self._send(HEADER.pack(END, 0))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _counted(self, n: int) -> None:
        self.raw += n
        if self.on_bytes:
            self.on_bytes(n)

    def _available(self) -> int:
        buf = bytearray(4)
        fcntl.ioctl(self.src.fileno(), termios.FIONREAD, buf)
        return int.from_bytes(buf, sys.byteorder)

    def _read(self) -> bytes:
        """Up to CHUNK bytes, as many as CRIU has written by now (at least one is there)."""
        buf = bytearray(CHUNK)
        view, got = memoryview(buf), 0
        while got < CHUNK:
            try:
                n = self.src.recv_into(view[got:], CHUNK - got, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if n == 0:
                break
            got += n
        return bytes(view[:got])

    def _splice_raw(self, n: int) -> None:
        """A raw frame of the next ``n`` bytes (there already), moved by the kernel from CRIU's socket to the link."""
        t0 = time.monotonic()
        self._send(HEADER.pack(RAW, n))
        left = n
        while left:
            try:
                k = os.splice(self.src.fileno(), self.out, left, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:   # the link's pipe is full
                select.select([], [self.out], [], 0.05)
                continue
            if k == 0:
                raise CorruptStream("CRIU's stream ended inside a chunk")
            left -= k
        self.wire += n
        self._counted(n)
        self.raw_chunks += 1
        self.gate.wrote(n + HEADER.size, time.monotonic() - t0)

    def _compress(self, chunk: bytes) -> tuple[bytes, float]:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = zstandard.ZstdCompressor(level=LEVEL)
        t0 = time.thread_time()
        packed = cctx.compress(chunk)
        return packed, time.thread_time() - t0

    def _write(self, future: Future | None, chunk: bytes, tried: bool) -> None:
        packed, seconds = future.result() if future is not None else (None, 0.0)
        if packed is not None:
            self.gate.compressed(len(chunk), seconds)
        paid = packed is not None and len(packed) <= WORTH * len(chunk)
        self.choice.result(paid, tried)
        t0 = time.monotonic()
        if paid:
            self.compressed_chunks += 1
            self._send(HEADER.pack(ZSTD, len(packed)), packed)
            self.gate.wrote(len(packed) + HEADER.size, time.monotonic() - t0)
        else:
            self.raw_chunks += 1
            self._send(HEADER.pack(RAW, len(chunk)), chunk)
            self.gate.wrote(len(chunk) + HEADER.size, time.monotonic() - t0)

    def _send(self, *parts: bytes) -> None:
        for part in parts:
            view = memoryview(part)
            while view:
                try:
                    n = os.write(self.out, view)
                except BlockingIOError:
                    select.select([], [self.out], [], 0.05)
                    continue
                self.wire += n
                view = view[n:]


class PageDecoder:
    """The destination's end: frames from ``conn`` (a socket, read exactly: nothing past the end frame) go
    decompressed into ``sock``, the page server's; what the page server answers goes back into ``conn``.
    ``start()``, then ``join()`` once the page server is done: None, or why the stream failed."""

    def __init__(self, conn: socket.socket, sock: socket.socket) -> None:
        self.conn, self.sock = conn, sock
        self.error: BaseException | None = None
        self.wire = self.raw = 0
        self._in = threading.Thread(target=self._frames, daemon=True, name="pages-in")
        self._back = threading.Thread(target=self._answers, daemon=True, name="pages-back")

    def start(self) -> None:
        self._in.start()
        self._back.start()

    def _exactly(self, n: int) -> bytes:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.conn.recv_into(view[got:], n - got)
            if k == 0:
                raise CorruptStream("the page stream ended before its end frame")
            got += k
        self.wire += n
        return bytes(buf)

    def _frames(self) -> None:
        dctx = zstandard.ZstdDecompressor()
        try:
            while True:
                kind, length = HEADER.unpack(self._exactly(HEADER.size))
                if kind == END and length == 0:
                    break
                if kind not in (RAW, ZSTD) or length > MAX_FRAME:
                    raise CorruptStream(f"bad page frame (kind {kind!r}, {length} bytes)")
                payload = self._exactly(length)
                if kind == ZSTD:
                    try:
                        payload = dctx.decompress(payload, max_output_size=CHUNK)
                    except zstandard.ZstdError as exc:
                        raise CorruptStream(f"a compressed page chunk does not decompress: {exc}") from exc
                self.raw += len(payload)
                self.sock.sendall(payload)
        except BaseException as exc:   # the page server must not wait for pages that will not come
            self.error = exc
            _shut(self.sock, socket.SHUT_RDWR)
            return
        _shut(self.sock, socket.SHUT_WR)   # all pages in: the page server sees the end after the last of them

    def _answers(self) -> None:
        try:
            while data := self.sock.recv(65536):
                self.conn.sendall(data)
        except OSError:
            pass

    def join(self, timeout: float = 10.0) -> BaseException | None:
        """After the page server exited: its answers are all back, and every frame up to the end was read."""
        self._back.join(timeout)
        self._in.join(timeout)
        if self._in.is_alive():
            return self.error or CorruptStream("the page stream did not end after the page server did")
        return self.error


def _shut(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass

