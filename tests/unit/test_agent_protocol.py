"""The agent protocol's call ids: an answer is taken only for the call it names, and a session whose call got no
answer (an interrupt, a timeout, an answer to another call) carries no more calls. Without this, Ctrl-C during a
transfer let the rollback's `dest.discard` take the answer of the interrupted `dest.receive`, and the source was
thawed while the destination still ran its copy."""
from __future__ import annotations

import sys
import textwrap

import pytest

from migrate.errors import MigrationError, TransportError
from transport import framing
from transport.agent import AgentSession
from transport.hosts import LocalHost

# A stand-in agent speaking the real framing: "slow" sends a progress event, then waits for the next call before
# it answers (as dest.receive answers only after its restore); "wrong-id" answers naming another call.
FAKE_AGENT = textwrap.dedent('''\
    import os, sys
    sys.path.insert(0, {repo!r})
    from transport import framing
    from agents.main import PROTOCOL
    rd, wr = sys.stdin.buffer, os.fdopen(1, "wb")
    hello = framing.recv(rd)
    framing.send(wr, {{"type": "hello", "version": hello["version"], "protocol": PROTOCOL}})
    while True:
        try:
            msg = framing.recv(rd)
        except EOFError:
            break
        if msg["type"] == "bye":
            break
        cid = msg["id"]
        if msg["op"] == "slow":
            framing.send(wr, {{"type": "progress", "id": cid, "step": 1}})
            nxt = framing.recv(rd)                      # the next call arrives while this one works
            framing.send(wr, {{"type": "result", "id": cid, "value": "slow's answer"}})
            framing.send(wr, {{"type": "result", "id": nxt["id"], "value": nxt["op"] + "'s answer"}})
        elif msg["op"] == "fail":
            framing.send(wr, {{"type": "error", "id": cid, "error": "DumpError", "code": "dump",
                               "message": "CRIU failed"}})
        elif msg["op"] == "wrong-id":
            framing.send(wr, {{"type": "result", "id": cid + 7, "value": "someone else's"}})
        else:
            framing.send(wr, {{"type": "result", "id": cid, "value": msg["op"] + "'s answer"}})
    ''')


@pytest.fixture
def session(tmp_path):
    from pathlib import Path
    script = tmp_path / "fake-agent"
    script.write_text(f"#!{sys.executable}\n" + FAKE_AGENT.format(repo=str(Path(__file__).resolve().parents[2])))
    script.chmod(0o755)
    s = AgentSession(LocalHost("fake"), str(script))
    yield s
    s.close()


def test_calls_get_their_own_answers(session):
    assert session.call("ping") == "ping's answer"
    assert session.call("stats") == "stats's answer"


def test_after_an_interrupted_call_the_session_refuses_the_next_one(session):
    def interrupt(msg):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        session.call("slow", progress=interrupt)
    assert session.broken
    with pytest.raises(TransportError, match="cannot be used again"):
        session.call("dest.discard")   # would have read "slow's answer" as its own


def test_an_answer_naming_another_call_is_a_protocol_error(session):
    with pytest.raises(framing.ProtocolError, match="answered call 8 while call 1"):
        session.call("wrong-id")
    with pytest.raises(TransportError):
        session.call("ping")


def test_an_agent_error_answer_leaves_the_session_usable(session):
    # an error answer is an orderly end of its call: the next call is in step with the agent
    with pytest.raises(MigrationError, match="CRIU failed"):
        session.call("fail")
    assert session.broken is None
    assert session.call("ping") == "ping's answer"


def test_a_call_while_another_waits_for_its_answer_breaks_the_session(session):
    # e.g. Ctrl-C in the source's wait while the destination's call was in flight: the rollback's next call on
    # the destination would read that call's answer
    session.start("slow")
    with pytest.raises(TransportError, match="still waited"):
        session.call("dest.discard")
    assert session.broken
