"""Compressed page streams: CRIU's page-server protocol, as the dump writes it, in chunks that cross the link
zstd-compressed where that pays, raw where it does not.

    CRIU dump --socket--> PageEncoder ==link==> PageDecoder --socket--> criu page-server
                          (chunks: R raw, Z zstd, E end)              (its answers go back unchanged)

A chunk is what CRIU wrote, read up to ``CHUNK`` bytes (waiting ``COALESCE`` for more at each pause). Each one of
``SMALL`` or more is compressed (zstd level ``LEVEL``, on a pool of ``WORKERS`` threads: zstandard lets go of the
GIL while it works, and the order on the wire is kept) and sent so if that made it at most ``WORTH`` of its size;
otherwise raw. Memory that does not compress (random, already
compressed) is found out in a few chunks: after ``GIVE_UP`` raw chunks in a row only one chunk per ``PROBE``
chunks' worth of bytes is tried,
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
PROBE = 16         # then one chunk is tried per this many chunks' bytes sent raw
SMALL = 64 << 10    # shorter chunks (CRIU paused) cross raw and do not count as misses
COALESCE = 0.002    # seconds a chunk waits for more of CRIU's writes before it is cut short
PENDING = 2 * WORKERS   # chunks read ahead of the link at most (memory: PENDING x CHUNK, twice)
MAX_FRAME = CHUNK + (CHUNK >> 4) + 1024
HEADER = struct.Struct(">cI")
RAW, ZSTD, END = b"R", b"Z", b"E"


class CorruptStream(Exception):
    """The page stream is not what an encoder writes."""


class Choice:
    """Which chunks to try compressing: all, until ``GIVE_UP`` in a row did not pay; then one per ``PROBE`` x
    ``CHUNK`` bytes sent raw (bytes, not turns: a raw turn moves what CRIU wrote by then, often a few KiB)."""

    def __init__(self) -> None:
        self.misses = 0
        self.raw_since = 0

    def try_next(self) -> bool:
        return self.misses < GIVE_UP or self.raw_since >= PROBE * CHUNK

    def result(self, paid: bool, tried: bool) -> None:
        if tried:
            self.misses = 0 if paid else self.misses + 1
            self.raw_since = 0

    def skipped(self, n: int) -> None:
        """``n`` bytes crossed raw without a try."""
        self.raw_since += n


class Gate:
    """Whether compressing pays on this link now, measured rather than modelled: the rate at which CRIU's pages
    go in (the whole path's speed: compressor, link and far end, with whatever else runs on these CPUs), over
    segments of ``SEGMENT`` bytes, compressing in some and raw in others. The first segments, until ``WARM``
    bytes went onto the link, only fill its buffers (ssh's window, the sockets'); then one of each is measured, and the faster way is kept (compressing at a tie, within
    ``TIE``: fewer bytes on the wire), with the other tried again every ``REPROBE`` segments. A compressed
    segment that waited on the link most of its time (``LINK_BOUND``) settles it: the link is what limits, and
    raw pages, more bytes on it, cannot go faster; raw is then not tried."""

    SEGMENT = 8 << 20
    REPROBE = 8
    TIE = 1.05
    LINK_BOUND = 0.5
    WARM = 4 << 20

    def __init__(self, workers: int = 0) -> None:   # workers: kept for callers; the measurement includes them
        self.rates: dict[bool, float] = {}
        self.compressing = True
        self.segment = 0            # index of the current segment; 0 until the link's buffers are full
        self._sent = 0
        self.since_probe = 0
        self._bytes = 0
        self._waited = 0.0
        self._link_bound = False
        self._t0: float | None = None

    def pays(self) -> bool:
        return self.compressing

    def wrote(self, n: int, seconds: float) -> None:
        """``n`` bytes went into the link; it took this long (waiting for room in it)."""
        self._sent += n
        self._waited += seconds

    def consumed(self, n: int, now: float | None = None) -> None:
        """``n`` bytes of CRIU's were taken in, at ``now`` (monotonic)."""
        now = time.monotonic() if now is None else now
        if self._t0 is None:
            self._t0 = now
        self._bytes += n
        if self._bytes < self.SEGMENT:
            return
        if self.segment > 0 and now > self._t0:
            self.rates[self.compressing] = self._bytes / (now - self._t0)
            self._link_bound = self.compressing and self._waited > self.LINK_BOUND * (now - self._t0)
        if self.segment > 0 or self._sent >= self.WARM:   # before, the buffers filling: not a measure of anything
            self.segment += 1
        self._bytes, self._t0, self._waited = 0, now, 0.0
        self.compressing = self._next()

    def _next(self) -> bool:
        if self.segment <= 1:   # warming up, then measuring compression first
            return True
        if self._link_bound:
            return True
        if len(self.rates) < 2:
            return not self.compressing   # measure the other way once
        self.since_probe += 1
        best = self.rates[True] * self.TIE >= self.rates[False]
        if self.since_probe >= self.REPROBE:
            self.since_probe = 0
            return not best
        return best


class PageEncoder:
    """Reads CRIU's side (``src``, a stream socket) until it ends, writes frames to ``out`` (a pipe's descriptor).
    ``raw`` and ``wire`` count the bytes read and written; ``on_bytes`` hears of each chunk read. Raw chunks move
    in the kernel (splice: no copy through this process) unless compression is being tried."""

    def __init__(self, src: socket.socket, out: int, on_bytes=None, workers: int = WORKERS,
                 gate: Gate | None = None) -> None:
        self.src, self.out, self.on_bytes = src, out, on_bytes
        self.raw = self.wire = 0
        self.compressed_chunks = self.raw_chunks = 0
        self.tried_bytes = 0   # read into this process and given to zstd
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
                if len(chunk) < SMALL:
                    pending.append((None, chunk, False))
                else:
                    self.tried_bytes += len(chunk)
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
        self.gate.consumed(n)
        if self.on_bytes:
            self.on_bytes(n)

    def _available(self) -> int:
        buf = bytearray(4)
        fcntl.ioctl(self.src.fileno(), termios.FIONREAD, buf)
        return int.from_bytes(buf, sys.byteorder)

    def _read(self) -> bytes:
        """Up to CHUNK bytes: what CRIU has written, and what it writes within ``COALESCE`` seconds of each pause
        (it writes each iov's header apart from its pages: read at once, chunks would be a few bytes)."""
        buf = bytearray(CHUNK)
        view, got = memoryview(buf), 0
        while got < CHUNK:
            try:
                n = self.src.recv_into(view[got:], CHUNK - got, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if select.select([self.src], [], [], COALESCE)[0]:
                    continue
                break   # CRIU paused: it may wait for an answer to what it wrote
            if n == 0:
                break
            got += n
        return bytes(view[:got])

    def _splice_raw(self, n: int) -> None:
        """A raw frame of the next ``n`` bytes (there already), moved by the kernel from CRIU's socket to the link."""
        self._send(HEADER.pack(RAW, n))
        left = n
        while left:
            try:
                k = os.splice(self.src.fileno(), self.out, left, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:   # the link's pipe is full
                self._wait_for_link()
                continue
            if k == 0:
                raise CorruptStream("CRIU's stream ended inside a chunk")
            left -= k
        self.wire += n
        self.gate.wrote(n, 0.0)
        self.choice.skipped(n)
        self._counted(n)
        self.raw_chunks += 1

    def _wait_for_link(self) -> None:
        t0 = time.monotonic()
        select.select([], [self.out], [], 0.05)
        self.gate.wrote(0, time.monotonic() - t0)

    def _compress(self, chunk: bytes) -> bytes:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = zstandard.ZstdCompressor(level=LEVEL)
        return cctx.compress(chunk)

    def _write(self, future: Future | None, chunk: bytes, tried: bool) -> None:
        packed = future.result() if future is not None else None
        paid = packed is not None and len(packed) <= WORTH * len(chunk)
        self.choice.result(paid, tried)
        if paid:
            self.compressed_chunks += 1
            self._send(HEADER.pack(ZSTD, len(packed)), packed)
        else:
            self.raw_chunks += 1
            self._send(HEADER.pack(RAW, len(chunk)), chunk)

    def _send(self, *parts: bytes) -> None:
        """Into the link; the time a write takes is time waiting for room in it (copying into a pipe with room
        takes microseconds)."""
        t0, sent = time.monotonic(), 0
        for part in parts:
            view = memoryview(part)
            while view:
                try:
                    n = os.write(self.out, view)
                except BlockingIOError:
                    select.select([], [self.out], [], 0.05)
                    continue
                self.wire += n
                sent += n
                view = view[n:]
        self.gate.wrote(sent, time.monotonic() - t0)


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

