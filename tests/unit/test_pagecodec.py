"""Compressed page streams (transport/pagecodec.py): what CRIU's dump writes reaches the page server byte for byte,
text crosses in fewer bytes, random memory crosses raw, answers go back, and nothing past the end frame is taken."""
from __future__ import annotations

import os
import random
import socket
import threading

import pytest

from transport import pagecodec


def _text(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    words = [f"key{i:05d}=value-{rng.randrange(10 ** 6)};".encode() for i in range(4000)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words)
    return bytes(out[:n])


class SlowLink(pagecodec.Gate):
    """A link slower than any compressor: compression always pays (what a 1 Gbit/s link is to zstd)."""

    def __init__(self) -> None:
        super().__init__(1)

    def pays(self) -> bool:
        return True


class FastLink(SlowLink):
    def pays(self) -> bool:
        return False


class Pair:
    """dump (CRIU's end) -> encoder -> ssh's stdin (a pipe) -> the link (a socketpair, as attach joins it)
    -> decoder -> page server."""

    def __init__(self, tail: bytes = b"", gate: pagecodec.Gate | None = None) -> None:
        self.criu, criu_far = socket.socketpair()
        self.link_src, self.link_dst = socket.socketpair()
        self.server, server_far = socket.socketpair()
        self.pipe_r, self.pipe_w = os.pipe()
        threading.Thread(target=self._ssh, daemon=True).start()
        self.encoder = pagecodec.PageEncoder(criu_far, self.pipe_w, gate=gate or SlowLink())
        self.decoder = pagecodec.PageDecoder(self.link_dst, server_far)
        self.tail = tail
        self.enc_error: BaseException | None = None
        self._criu_far = criu_far
        self.encoding = threading.Thread(target=self._encode)

    def _ssh(self) -> None:
        while data := os.read(self.pipe_r, 1 << 16):
            self.link_src.sendall(data)
        os.close(self.pipe_r)

    def _encode(self) -> None:
        try:
            self.encoder.run()
            os.write(self.pipe_w, self.tail)   # what follows the pages on the link: the files' frames
        except BaseException as exc:
            self.enc_error = exc
        finally:
            os.close(self.pipe_w)

    def start(self) -> None:
        self.encoding.start()
        self.decoder.start()

    def close(self) -> None:
        for sock in (self.criu, self._criu_far, self.link_src, self.link_dst, self.server, self.decoder.sock):
            sock.close()


def _received(sock: socket.socket, out: bytearray) -> threading.Thread:
    def read():
        while chunk := sock.recv(1 << 16):
            out.extend(chunk)
    t = threading.Thread(target=read)
    t.start()
    return t


@pytest.mark.parametrize("kind", ["text", "random", "mixed"])
def test_pages_arrive_byte_for_byte_and_text_takes_fewer_bytes(kind):
    size = 12 << 20
    data = {"text": lambda: _text(size), "random": lambda: os.urandom(size),
            "mixed": lambda: b"".join(_text(1 << 20, i) + os.urandom(1 << 20) for i in range(6))}[kind]()
    p = Pair(tail=b"FILES-FOLLOW")
    got = bytearray()
    reader = _received(p.server, got)
    p.start()
    for at in range(0, size, 32 << 10):   # as CRIU writes: an iov's pages at a time, not all at once
        p.criu.sendall(data[at:at + (32 << 10)])
    p.criu.close()   # CRIU is done
    p.encoding.join(10)
    reader.join(10)
    p.server.shutdown(socket.SHUT_WR)   # the page server exits: its answers end
    assert p.decoder.join() is None
    assert p.enc_error is None
    assert bytes(got) == data
    tail = b""
    while len(tail) < 12 and (more := p.link_dst.recv(100)):
        tail += more
    assert tail == b"FILES-FOLLOW", "the decoder read past the end frame"
    assert p.encoder.raw == size
    if kind == "text":
        assert p.encoder.wire < size / 3, f"text pages took {p.encoder.wire} bytes on the link"
    elif kind == "random":
        assert p.encoder.wire < size * 1.001, "random pages must cross raw"
        assert p.encoder.compressed_chunks == 0
        most = (pagecodec.GIVE_UP + 1 + size // (pagecodec.PROBE * pagecodec.CHUNK)) * pagecodec.CHUNK
        assert p.encoder.tried_bytes <= most, "it kept compressing random memory"
    else:
        assert p.encoder.compressed_chunks >= 5 and p.encoder.wire < size * 0.75
    p.close()


def test_answers_go_back_and_a_pause_sends_what_was_read():
    """CRIU writes a message and waits for the answer: the chunk must go out without waiting for a full one."""
    p = Pair()
    p.start()
    p.criu.sendall(b"PS_IOV_FLUSH")
    msg = b""
    while len(msg) < 12:
        msg += p.server.recv(100)
    assert msg == b"PS_IOV_FLUSH"
    p.server.sendall(b"OK")   # the page server's answer goes back through the link, raw
    assert p.link_src.recv(100) == b"OK"
    p.criu.close()
    p.encoding.join(10)
    p.server.shutdown(socket.SHUT_WR)
    assert p.decoder.join() is None
    p.close()


@pytest.mark.parametrize("frame", [pagecodec.HEADER.pack(pagecodec.ZSTD, 10) + b"not zstd!!",
                                   pagecodec.HEADER.pack(b"X", 10) + b"0123456789",
                                   pagecodec.HEADER.pack(pagecodec.RAW, pagecodec.MAX_FRAME + 1)],
                         ids=["undecodable", "unknown-kind", "too-long"])
def test_a_corrupt_frame_fails_the_stream_and_ends_the_page_server_input(frame):
    link_src, link_dst = socket.socketpair()
    server, server_far = socket.socketpair()
    decoder = pagecodec.PageDecoder(link_dst, server_far)
    decoder.start()
    link_src.sendall(frame)
    assert server.recv(100) == b"", "the page server must see its input end, not wait"
    server.close()
    assert isinstance(decoder.join(), pagecodec.CorruptStream)
    for sock in (link_src, link_dst, server_far):
        sock.close()


def test_a_link_that_ends_before_the_end_frame_is_an_error():
    link_src, link_dst = socket.socketpair()
    server, server_far = socket.socketpair()
    decoder = pagecodec.PageDecoder(link_dst, server_far)
    decoder.start()
    link_src.sendall(pagecodec.HEADER.pack(pagecodec.RAW, 4) + b"page")
    link_src.close()
    assert server.recv(100) == b"page"
    server.close()
    assert "before its end frame" in str(decoder.join())
    for sock in (link_dst, server_far):
        sock.close()


def test_a_broken_link_makes_the_encoder_fail_not_hang():
    criu, criu_far = socket.socketpair()
    r, w = os.pipe()
    os.close(r)   # ssh is gone
    encoder = pagecodec.PageEncoder(criu_far, w)
    criu.sendall(_text(64 << 10))
    with pytest.raises(OSError):
        encoder.run()
    os.close(w)
    criu.close()
    criu_far.close()


def _feed(gate: pagecodec.Gate, clock: list[float], rate: float, wire: int = 2 << 20) -> None:
    """A segment of pages taken in at ``rate`` bytes/s (in 1 MiB chunks, on a fake clock), ``wire`` bytes of
    them onto the link."""
    chunks = pagecodec.Gate.SEGMENT >> 20
    for _ in range(chunks):
        gate.wrote(wire // chunks, 0.0)
        clock[0] += (1 << 20) / rate
        gate.consumed(1 << 20, clock[0])


@pytest.mark.parametrize("compressed, raw, kept", [(300e6, 100e6, True),    # a slow link: compressing wins
                                                    (200e6, 400e6, False),   # a fast link: the compressor limits
                                                    (390e6, 400e6, True)],   # a tie: fewer bytes on the wire
                         ids=["slow-link", "fast-link", "tie"])
def test_the_gate_keeps_the_faster_way_and_tries_the_other_again(compressed, raw, kept):
    gate, clock = pagecodec.Gate(), [0.0]
    rate = {True: compressed, False: raw}
    seen = []
    for _ in range(4 + pagecodec.Gate.REPROBE + 1):
        seen.append(gate.pays())
        _feed(gate, clock, rate[gate.pays()])
    # warm-up (compressing, until 4 MiB went onto the link: two segments), then one segment of each, then the
    # faster one, and the other again once
    assert seen[:4] == [True, True, True, False]
    kept_run = seen[4:4 + pagecodec.Gate.REPROBE - 1]
    assert kept_run == [kept] * len(kept_run), seen
    assert (not kept) in seen[4:], f"the way not kept must be tried again: {seen}"


def test_a_link_that_holds_up_compressed_pages_is_never_tried_raw():
    """Compressing and still waiting on the link: raw pages, more bytes, could only be slower."""
    gate, clock = pagecodec.Gate(), [0.0]
    seen = []
    for _ in range(3 + pagecodec.Gate.REPROBE + 1):
        seen.append(gate.pays())
        gate.wrote(0, 0.8 * pagecodec.Gate.SEGMENT / 100e6)   # 80% of the segment's time spent waiting for room
        _feed(gate, clock, 100e6)
    assert seen == [True] * len(seen)


def test_on_a_fast_link_text_pages_cross_raw_and_intact():
    data = _text(6 << 20)
    p = Pair(gate=FastLink())
    got = bytearray()
    reader = _received(p.server, got)
    p.start()
    p.criu.sendall(data)
    p.criu.close()
    p.encoding.join(10)
    reader.join(10)
    p.server.shutdown(socket.SHUT_WR)
    assert p.decoder.join() is None and p.enc_error is None
    assert bytes(got) == data
    assert p.encoder.compressed_chunks == 0 and p.encoder.wire >= len(data)
    p.close()
