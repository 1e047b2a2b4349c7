"""Compressed page streams: CRIU's page-server protocol, as the dump writes it, in chunks that cross the link
zstd-compressed where that pays, raw where it does not.

    CRIU dump --socket--> PageEncoder ==link (ssh)==> PageDecoder --socket--> criu page-server
    (source agent)        (chunks: R raw, Z zstd, E end)  (in attach, on the destination)
                          <================================ its answers, unchanged

A chunk is what CRIU wrote, read up to ``CHUNK`` bytes (waiting ``COALESCE`` for more at each pause). Each one of
``SMALL`` or more is compressed (zstd level ``LEVEL``, on a pool of ``WORKERS`` threads: zstandard lets go of the
GIL while it works, and the order on the wire is kept) and sent so if that made it at most ``WORTH`` of its size;
otherwise raw. Memory that does not compress (random, already compressed) is found out in a few chunks: after
``GIVE_UP`` raw chunks in a row only one chunk per ``PROBE`` chunks' worth of bytes is tried, so it crosses at the
link's speed, not the compressor's, spliced (no copy through this process, at either end). Whether compressing
pays on this link at all is the ``Gate``'s to measure. Whenever CRIU stops writing (it waits for the page
server's answer) everything read so far is sent first: no chunk waits for one that may never come.

Frames: one byte of kind, then the payload's length (4 bytes, big-endian), then the payload. ``E`` has none: the
dump's pages end there, and whatever follows on the link (the image files' frames) is not the decoder's to read.
Nothing in a frame is evaluated: a length over ``MAX_FRAME`` or an unknown kind is a corrupt stream.
"""
from __future__ import annotations

import errno
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
SO_SNDBUFFORCE = 32   # root may go past net.core.wmem_max (not in Python's socket module)
DEEP = 8 << 20


def deepen(sock: socket.socket, size: int = DEEP) -> None:
    """Let ``size`` bytes queue on a local stream socket (a socketpair's default is ~200 KiB): CRIU on one end and
    the codec on the other then each work at their own pace, neither stalled while the other handles a chunk."""
    for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            return
        except OSError:   # without CAP_NET_ADMIN: as deep as wmem_max allows
            continue


class CorruptStream(Exception):
    """The page stream is not what an encoder writes."""


class Choice:
    """Which chunks to try compressing: all, until ``GIVE_UP`` in a row did not pay; then one per ``PROBE`` x
    ``CHUNK`` bytes sent raw (bytes, not turns: a raw turn moves what CRIU wrote by then, often a few KiB).
    Chunks still being compressed count as misses until they are known: otherwise every probe of random memory
    would be followed by as many tries as the encoder reads ahead."""

    def __init__(self) -> None:
        self.misses = 0
        self.raw_since = 0
        self.in_flight = 0

    def try_next(self) -> bool:
        if self.misses + self.in_flight < GIVE_UP:
            return True
        return self.in_flight == 0 and self.raw_since >= PROBE * CHUNK

    def started(self) -> None:
        """A chunk went to the compressor."""
        self.in_flight += 1
        self.raw_since = 0

    def result(self, paid: bool, tried: bool) -> None:
        if tried:
            self.in_flight -= 1
            self.misses = 0 if paid else self.misses + 1
            self.raw_since = 0

    def skipped(self, n: int) -> None:
        """``n`` bytes crossed raw without a try."""
        self.raw_since += n


class Gate:
    """Whether compressing pays on this link now, measured rather than modelled: the rate at which CRIU's pages
    go in (the whole path's speed: compressor, link and far end, with whatever else runs on these CPUs), over
    segments of ``SEGMENT`` bytes.

    Pages are compressed first. Once ``FIRST_PROBE`` bytes went so (a smaller container could gain little from
    raw, and would lose a probe's worth of its compression), raw is tried: one segment to settle (the pipeline
    between here and the far end holds compressed chunks still, and a switch shows as a stall), then one measured.
    Raw is kept only if it went in more than ``TIE`` times faster than the median of the last ``HISTORY``
    compressed segments (fewer bytes on the wire are worth some speed; a median, because single segments come
    in bursts); the way not kept is tried again, the same way, every ``REPROBE`` segments. The first segments,
    until ``WARM`` bytes went onto the link, only fill its buffers and measure nothing. Where compressed segments
    wait on the link most of their time (``LINK_BOUND``, the median of the last ``HISTORY``), raw is not tried:
    the link is what limits, and raw pages, more bytes on it, cannot go faster."""

    SEGMENT = 4 << 20
    FIRST_PROBE = 128 << 20
    REPROBE = 16         # segments (64 MiB) between tries of the way not kept
    HISTORY = 8
    TIE = 1.25
    LINK_BOUND = 0.5
    WARM = 4 << 20

    def __init__(self) -> None:
        self.history: dict[bool, list[float]] = {True: [], False: []}
        self.compressing = True
        self.segment = 0            # index of the current segment; 0 until the link's buffers are full
        self.settling = False       # this segment follows a switch: not measured
        self.probing = False        # trying the way not kept (settle, then measure)
        self._since = 0             # segments since the last switch
        self._compressed = 0        # bytes taken in compressing
        self._sent = 0
        self._bytes = 0
        self._waited = 0.0
        self._link_waits: list[float] = []   # of compressed segments: the share of their time spent on the link
        self._t0: float | None = None

    def pays(self) -> bool:
        return self.compressing

    def rate(self, compressing: bool) -> float | None:
        """The median of the last measured segments' rates of that way (bytes/s), if any."""
        rates = sorted(self.history[compressing][-self.HISTORY:])
        return rates[len(rates) // 2] if rates else None

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
        if self.compressing:
            self._compressed += n
        if self._bytes < self.SEGMENT:
            return
        if self.segment > 0 and not self.settling and now > self._t0:
            self.history[self.compressing].append(self._bytes / (now - self._t0))
            if self.compressing:
                self._link_waits.append(self._waited / (now - self._t0))
        if self.segment > 0 or self._sent >= self.WARM:   # before, the buffers filling: not a measure of anything
            self.segment += 1
        self._bytes, self._t0, self._waited = 0, now, 0.0
        self._decide()

    def _decide(self) -> None:
        if self.settling:   # the switch has settled: measure the next segment
            self.settling = False
            return
        self._since += 1
        if self.probing:    # the probe's measured segment is in: keep the faster way
            self.probing = False
            better = self._raw_better()
            if better is not None and better != (not self.compressing):
                self._switch()
            return
        if self.segment < 2 or self._link_bound():
            return
        due = self._compressed >= self.FIRST_PROBE if self.compressing and not self.history[False] \
            else self._since >= self.REPROBE
        if due:
            self.probing = True
            self._switch()

    def _link_bound(self) -> bool:
        """Compressed pages waited on the link most of the time (the median of the last segments): raw pages, more
        bytes on it, could not go faster."""
        waits = sorted(self._link_waits[-self.HISTORY:])
        return bool(waits) and waits[len(waits) // 2] > self.LINK_BOUND

    def _raw_better(self) -> bool | None:
        compressed, raw = self.rate(True), self.rate(False)
        if compressed is None or raw is None:
            return None
        return raw > self.TIE * compressed

    def _switch(self) -> None:
        self.compressing = not self.compressing
        self.settling = True
        self._since = 0


class PageEncoder:
    """Reads CRIU's side (``src``, a stream socket) until it ends, writes frames to ``out`` (a pipe's descriptor).
    ``raw`` and ``wire`` count the bytes read and written; ``on_bytes`` hears of each chunk read. Raw chunks move
    in the kernel (splice: no copy through this process) unless compression is being tried."""

    def __init__(self, src: socket.socket, out: int, on_bytes=None, workers: int = WORKERS,
                 gate: Gate | None = None, coalesce: float = COALESCE) -> None:
        """``coalesce``: how long a chunk waits for more of CRIU's writes at a pause; 0 where every answer is
        awaited (post-copy's lazy pages: a page fault must not wait for a chunk to fill)."""
        self.src, self.out, self.on_bytes = src, out, on_bytes
        self.coalesce = coalesce
        self.raw = self.wire = 0
        self.compressed_chunks = self.raw_chunks = 0
        self.tried_bytes = 0   # read into this process and given to zstd
        self.choice = Choice()
        self.gate = gate or Gate()
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
                    self._splice_raw(self._gather(available))
                    continue
                chunk = self._read()
                self._counted(len(chunk))
                if len(chunk) < SMALL:
                    pending.append((None, chunk, False))
                else:
                    self.tried_bytes += len(chunk)
                    self.choice.started()
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

    def _gather(self, available: int) -> int:
        """How much to splice as one raw frame: up to CHUNK, what CRIU writes within ``COALESCE`` of each pause
        included (a frame per read would be a few KiB, each with its header and two system calls)."""
        while available < CHUNK and select.select([self.src], [], [], self.coalesce)[0]:
            more = self._available()
            if more == available:   # readable, nothing more: CRIU closed its end
                break
            available = more
        return min(available, CHUNK)

    def _read(self) -> bytes:
        """Up to CHUNK bytes: what CRIU has written, and what it writes within ``COALESCE`` seconds of each pause
        (it writes each iov's header apart from its pages: read at once, chunks would be a few bytes)."""
        buf = bytearray(CHUNK)
        view, got = memoryview(buf), 0
        while got < CHUNK:
            try:
                n = self.src.recv_into(view[got:], CHUNK - got, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if select.select([self.src], [], [], self.coalesce)[0]:
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
    """The destination's end, in ``cmigrate-agent attach`` (the far end of the direct link, agents/link.py, which
    sits in the data's way anyway): frames from ``src`` (sshd's pipe; read exactly: nothing past the end frame)
    go into ``sock`` (the destination agent's link socket) as the page-server protocol CRIU wrote: raw frames
    spliced from the pipe (no copy here: random memory crosses as it did unframed), compressed ones
    decompressed. The agent hands that socket to ``criu page-server`` as it would an unframed stream, so no hop
    is added at the destination. ``run()`` returns after the end frame; CorruptStream for a stream no encoder
    writes (a bad kind, a length over ``MAX_FRAME``, a chunk that does not decompress, the end before the end
    frame); OSError if either side breaks."""

    def __init__(self, src: int, sock: socket.socket) -> None:
        self.src, self.sock = src, sock
        self.wire = self.raw = 0

    def run(self) -> None:
        dctx = zstandard.ZstdDecompressor()
        while True:
            kind, length = HEADER.unpack(self._exactly(HEADER.size))
            if kind == END and length == 0:
                return
            if kind not in (RAW, ZSTD) or length > MAX_FRAME:
                raise CorruptStream(f"bad page frame (kind {kind!r}, {length} bytes)")
            if kind == RAW:
                self._pass_raw(length)
                continue
            try:
                payload = dctx.decompress(self._exactly(length), max_output_size=CHUNK)
            except zstandard.ZstdError as exc:
                raise CorruptStream(f"a compressed page chunk does not decompress: {exc}") from exc
            self.raw += len(payload)
            self.sock.sendall(payload)

    def _exactly(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            select.select([self.src], [], [])
            part = os.read(self.src, n - got)
            if not part:
                raise CorruptStream("the page stream ended before its end frame")
            parts.append(part)
            got += len(part)
        self.wire += n
        return b"".join(parts)

    def _pass_raw(self, n: int) -> None:
        """A raw frame's ``n`` bytes from the pipe into the socket, in the kernel. Never a blocking splice (as in
        agents/link.py: one waiting for data holds the pipe's lock, and sshd at its other end would hang on it);
        where ``src`` is no pipe, through this process."""
        dst = self.sock.fileno()
        while n:
            select.select([self.src], [], [])
            try:
                k = os.splice(self.src, dst, min(n, CHUNK), flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:   # no room in the socket yet
                select.select([], [dst], [], 0.05)
                continue
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                data = os.read(self.src, min(n, CHUNK))
                self.sock.sendall(data)
                k = len(data)
            if k == 0:
                raise CorruptStream("the page stream ended before its end frame")
            self.wire += k
            self.raw += k
            n -= k
