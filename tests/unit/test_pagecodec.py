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
        super().__init__()

    def pays(self) -> bool:
        return True


class FastLink(SlowLink):
    def pays(self) -> bool:
        return False


class Pair:
    """dump (CRIU's end) -> encoder -> ssh's stdin (a pipe: what sshd hands ``attach`` on the far side) -> decoder
    (in attach) -> the agent's link socket -> page server (``server``); the page server's answers go back the
    other way (``back``, as attach sends them to ssh's stdout)."""

    def __init__(self, tail: bytes = b"", gate: pagecodec.Gate | None = None) -> None:
        self.criu, criu_far = socket.socketpair()
        self.pipe_r, self.pipe_w = os.pipe()
        self.server, self._attach_end = socket.socketpair()
        self.back, self._back_far = socket.socketpair()
        self.encoder = pagecodec.PageEncoder(criu_far, self.pipe_w, gate=gate or SlowLink())
        self.decoder = pagecodec.PageDecoder(self.pipe_r, self._attach_end)
        self.tail, self.after = tail, b""
        self.enc_error: BaseException | None = None
        self.dec_error: BaseException | None = None
        self._criu_far = criu_far
        self.encoding = threading.Thread(target=self._encode)
        self.decoding = threading.Thread(target=self._decode)
        threading.Thread(target=self._answers, daemon=True).start()

    def _encode(self) -> None:
        try:
            self.encoder.run()
            os.write(self.pipe_w, self.tail)   # what follows the pages on the link: the files' frames
        except BaseException as exc:
            self.enc_error = exc
        finally:
            os.close(self.pipe_w)

    def _decode(self) -> None:
        try:
            self.decoder.run()
        except BaseException as exc:
            self.dec_error = exc
            return
        finally:
            self._attach_end.shutdown(socket.SHUT_WR)   # the page server sees its input end
        while more := os.read(self.pipe_r, 1 << 16):    # what the agent reads after the pages
            self.after += more

    def _answers(self) -> None:
        try:
            while data := self._attach_end.recv(1 << 16):
                self._back_far.sendall(data)
        except OSError:
            pass

    def start(self) -> None:
        self.encoding.start()
        self.decoding.start()

    def close(self) -> None:
        for sock in (self.criu, self._criu_far, self.server, self._attach_end, self.back, self._back_far):
            sock.close()
        os.close(self.pipe_r)

    def carry(self, data: bytes, piece: int) -> bytes:
        """``data`` written by CRIU ``piece`` bytes at a time, then its end: what the page server got (the
        encoder and the decoder ended without an error)."""
        got = bytearray()
        reader = _received(self.server, got)
        self.start()
        for at in range(0, len(data), piece):
            self.criu.sendall(data[at:at + piece])
        self.criu.close()   # CRIU is done
        self.encoding.join(10)
        self.decoding.join(10)
        reader.join(10)
        assert self.enc_error is None and self.dec_error is None
        return bytes(got)


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
    assert p.carry(data, 32 << 10) == data   # as CRIU writes: an iov's pages at a time, not all at once
    assert p.after == b"FILES-FOLLOW", "the decoder read past the end frame"
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


def test_random_memory_is_tried_in_few_chunks_then_probed_one_chunk_at_a_time():
    """Compressing random memory is wasted work: GIVE_UP chunks, then one per PROBE x CHUNK bytes sent raw, never
    the chunks the encoder read ahead of a probe's result (they made random memory 19% of the tries, and its
    migration 30% slower)."""
    size = 40 << 20
    data = os.urandom(size)
    p = Pair()
    assert p.carry(data, 256 << 10) == data
    probes = size // (pagecodec.PROBE * pagecodec.CHUNK)
    assert p.encoder.tried_bytes <= (pagecodec.GIVE_UP + probes) * pagecodec.CHUNK, p.encoder.tried_bytes >> 20
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
    assert p.back.recv(100) == b"OK"
    p.criu.close()
    p.encoding.join(10)
    p.decoding.join(10)
    assert p.dec_error is None
    p.close()


def _decode(stream: bytes) -> tuple[bytes, BaseException | None]:
    """``stream`` through a decoder (from a pipe, as in attach): what reached the page server, and the error."""
    r, w = os.pipe()
    server, attach_end = socket.socketpair()
    os.write(w, stream)
    os.close(w)
    error = None
    try:
        pagecodec.PageDecoder(r, attach_end).run()
    except BaseException as exc:
        error = exc
    attach_end.close()
    got = b""
    while more := server.recv(1 << 16):
        got += more
    server.close()
    os.close(r)
    return got, error


@pytest.mark.parametrize("frame", [pagecodec.HEADER.pack(pagecodec.ZSTD, 10) + b"not zstd!!",
                                   pagecodec.HEADER.pack(b"X", 10) + b"0123456789",
                                   pagecodec.HEADER.pack(pagecodec.RAW, pagecodec.MAX_FRAME + 1)],
                         ids=["undecodable", "unknown-kind", "too-long"])
def test_a_corrupt_frame_fails_the_stream(frame):
    got, error = _decode(pagecodec.HEADER.pack(pagecodec.RAW, 4) + b"page" + frame)
    assert got == b"page" and isinstance(error, pagecodec.CorruptStream)


def test_a_link_that_ends_before_the_end_frame_is_an_error():
    got, error = _decode(pagecodec.HEADER.pack(pagecodec.RAW, 4) + b"page")
    assert got == b"page" and "before its end frame" in str(error)


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


def _ways(rates: dict[bool, float], segments: int) -> list[bool]:
    """The way (compressing: True) of each of ``segments`` segments, each taken in at its way's rate."""
    gate, clock, seen = pagecodec.Gate(), [0.0], []
    for _ in range(segments):
        seen.append(gate.pays())
        _feed(gate, clock, rates[gate.pays()])
    return seen


@pytest.mark.parametrize("compressed, raw, kept", [(300e6, 100e6, True),    # a slow link: compressing wins
                                                    (200e6, 400e6, False),   # a fast link: the compressor limits
                                                    (340e6, 400e6, True)],   # within TIE: fewer bytes on the wire
                         ids=["slow-link", "fast-link", "tie"])
def test_the_gate_tries_raw_after_enough_pages_keeps_the_faster_and_tries_the_other_again(compressed, raw, kept):
    g = pagecodec.Gate
    first = g.FIRST_PROBE // g.SEGMENT   # warm-up included: two segments here (4 MiB onto the link)
    seen = _ways({True: compressed, False: raw}, first + 2 + 2 * g.REPROBE + 6)
    assert seen.index(False) == first, seen   # compressed until then
    assert seen[first:first + 2] == [False, False], "raw: a segment to settle, one measured"
    after = seen[first + 2:first + 2 + g.REPROBE]
    assert after.count(kept) >= len(after) - 2, f"the faster way is not kept: {seen}"
    assert (not kept) in seen[first + 2 + g.REPROBE - 2:], f"the way not kept must be tried again: {seen}"


def test_a_container_smaller_than_the_first_probe_is_never_sent_raw():
    """84 MiB of a database's memory: probing raw would cost it a tenth of its compression for little gain."""
    g = pagecodec.Gate
    assert _ways({True: 200e6, False: 400e6}, g.FIRST_PROBE // g.SEGMENT) == [True] * (g.FIRST_PROBE // g.SEGMENT)


def test_a_switch_is_not_measured():
    """The first raw segment after compressed ones shows the pipeline's switch (measured here: 65 MB/s against
    290 later); it must not decide."""
    g = pagecodec.Gate
    gate, clock = g(), [0.0]
    while gate.pays():
        _feed(gate, clock, 300e6)
    _feed(gate, clock, 50e6)    # settling: slow, as after a switch
    _feed(gate, clock, 400e6)   # measured: raw is faster
    assert not gate.pays(), "raw was judged by the switch's segment"


def test_a_link_that_holds_up_compressed_pages_is_never_tried_raw():
    """Compressing and still waiting on the link: raw pages, more bytes, could only be slower."""
    gate, clock = pagecodec.Gate(), [0.0]
    seen = []
    for _ in range(pagecodec.Gate.FIRST_PROBE // pagecodec.Gate.SEGMENT + pagecodec.Gate.REPROBE + 4):
        seen.append(gate.pays())
        gate.wrote(0, 0.8 * pagecodec.Gate.SEGMENT / 100e6)   # 80% of the segment's time spent waiting for room
        _feed(gate, clock, 100e6)
    assert seen == [True] * len(seen)


def test_on_a_fast_link_text_pages_cross_raw_and_intact():
    data = _text(6 << 20)
    p = Pair(gate=FastLink())
    assert p.carry(data, len(data)) == data
    assert p.encoder.compressed_chunks == 0 and p.encoder.wire >= len(data)
    p.close()
