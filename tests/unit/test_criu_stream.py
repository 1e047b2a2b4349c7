"""CriuStream joins CRIU's end of a socketpair to the direct link, both ways. The dump's page server and post-copy's
lazy pages differ in one thing: who ends the exchange. For the dump, a link that ends first must fail CRIU at once
(a reset), not leave it waiting for an answer; for lazy pages, the far end's close is CRIU's end of stream."""
from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest

from agents import link


class FakeLink:
    """What CriuStream uses of a Link: ssh's stdin (toward the destination) and stdout (its answers), as pipes."""

    def __init__(self) -> None:
        self.to_far_r, to_far_w = os.pipe()
        from_far_r, self.from_far_w = os.pipe()
        self.proc = SimpleNamespace(stdin=os.fdopen(to_far_w, "wb"), stdout=os.fdopen(from_far_r, "rb"))
        self.relays: list = []
        self.framed_pages = False

    def far_end_gone(self) -> None:
        os.close(self.from_far_w)
        self.from_far_w = -1

    def close(self) -> None:
        """As Link.close: ssh ends (its stdout with it), then the streams on it."""
        for fd in (self.from_far_w, self.to_far_r):
            if fd >= 0:
                os.close(fd)
        for relay in self.relays:
            relay.close()
        self.proc.stdin.close()
        self.proc.stdout.close()


def _criu_end(stream: link.CriuStream) -> socket.socket:
    """CRIU's end, as CRIU would hold it (the inherited descriptor)."""
    sock = socket.socket(fileno=os.dup(stream.criu.fd))
    stream.criu.given()
    sock.settimeout(5)
    return sock


@pytest.mark.parametrize("far_end_closes", [False, True], ids=["page-server", "lazy-pages"])
def test_bytes_go_both_ways_and_are_counted(far_end_closes):
    fake = FakeLink()
    seen = []
    stream = link.CriuStream(fake, on_bytes=seen.append, far_end_closes=far_end_closes)
    criu = _criu_end(stream)
    assert fake.relays == [stream]
    criu.sendall(b"pages" * 1000)
    got = b""
    while len(got) < 5000:
        got += os.read(fake.to_far_r, 65536)
    assert got == b"pages" * 1000
    os.write(fake.from_far_w, b"ack")
    assert criu.recv(16) == b"ack"
    assert stream.sent == 5000 and sum(seen) == 5000
    assert stream.take() == 5000 and stream.take() == 0
    criu.close()
    fake.close()


def test_page_server_a_link_that_ends_fails_criu_at_once():
    fake = FakeLink()
    stream = link.CriuStream(fake)
    criu = _criu_end(stream)
    fake.far_end_gone()                  # the link is gone while CRIU waits for the page server's answer
    assert criu.recv(16) == b""          # at once (the socket's 5 s timeout would raise), not never
    stream.back.join(5)
    with pytest.raises(BrokenPipeError):   # and CRIU's next page fails rather than wait for room
        for _ in range(64):
            criu.sendall(b"x" * 65536)
    assert stream.error is not None
    with pytest.raises(link.TransportError):
        stream.finish(ok=True)
    criu.close()
    fake.close()


def test_lazy_pages_the_far_end_closing_is_criu_s_end_of_stream():
    fake = FakeLink()
    stream = link.CriuStream(fake, far_end_closes=True)
    criu = _criu_end(stream)
    os.write(fake.from_far_w, b"last request")
    fake.far_end_gone()                  # the lazy-pages daemon has every page
    got = b""
    while chunk := criu.recv(64):
        got += chunk
    assert got == b"last request"        # then a clean end of stream, no reset
    criu.sendall(b"a late page")         # CRIU may still finish what it was writing
    assert os.read(fake.to_far_r, 64) == b"a late page"
    assert stream.error is None
    criu.close()
    fake.close()
