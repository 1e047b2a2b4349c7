"""Framed control messages: round trips, and garbage refused rather than evaluated."""
from __future__ import annotations

import io
import struct
import sys

import pytest

from migrate.errors import AgentError
from transport import framing
from transport.agent import AgentSession
from transport.hosts import LocalHost


def test_round_trip_of_control_and_data_frames():
    buf = io.BytesIO()
    framing.send(buf, {"type": "call", "op": "x", "args": {"n": 1}})
    framing.write_frame(buf, framing.DATA, b"\x00" * 10)
    buf.seek(0)
    assert framing.recv(buf) == {"type": "call", "op": "x", "args": {"n": 1}}
    assert framing.read_frame(buf) == (framing.DATA, b"\x00" * 10)
    with pytest.raises(EOFError):
        framing.read_frame(buf)


@pytest.mark.parametrize("raw", [
    b"X" + struct.pack(">I", 2) + b"{}",                         # unknown kind
    b"J" + struct.pack(">I", framing.MAX_FRAME + 1),             # oversized
    b"J" + struct.pack(">I", 5) + b"[1,2]",                      # not an object
    b"J" + struct.pack(">I", 2) + b"{}",                         # no type
    b"J" + struct.pack(">I", 9) + b"__import_",                  # not JSON, never evaluated
])
def test_garbage_is_a_protocol_error(raw):
    with pytest.raises(framing.ProtocolError):
        framing.recv(io.BytesIO(raw))


def test_truncated_frame_is_eof():
    with pytest.raises(EOFError):
        framing.recv(io.BytesIO(b"J" + struct.pack(">I", 10) + b"{}"))


def test_agent_handshake_and_call_on_this_machine():
    with AgentSession(LocalHost()) as agent:
        assert agent.remote["type"] == "hello"
        assert agent.call("ping") == {"pong": True}
        with pytest.raises(AgentError, match="unknown request"):
            agent.call("no.such.op")


def test_agent_of_another_version_is_refused(tmp_path):
    fake = tmp_path / "old-agent"
    # An agent that answers hello with another version, speaking the same framing.
    fake.write_text(f"#!{sys.executable}\n"
                    "import sys, json, struct\n"
                    "sys.stdin.buffer.read(5)\n"
                    "body = json.dumps({'type': 'hello', 'version': '0.0.1', 'protocol': 1}).encode()\n"
                    "sys.stdout.buffer.write(b'J' + struct.pack('>I', len(body)) + body); sys.stdout.flush()\n")
    fake.chmod(0o755)
    with pytest.raises(AgentError, match="0.0.1") as err:
        AgentSession(LocalHost(), agent=str(fake))
    assert "same cmigrate version" in err.value.hint


def test_a_deeply_nested_message_is_a_protocol_error_not_a_crash():
    payload = b'{"type": "result", "value": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    buf = io.BytesIO()
    framing.write_frame(buf, framing.JSON, payload)
    buf.seek(0)
    with pytest.raises(framing.ProtocolError, match="nested too deeply"):
        framing.recv(buf)
