"""Framed, typed messages between the CLI and the agents.

A frame is one kind byte, a 4-byte big-endian length, then the payload:

    b"J" + len + UTF-8 JSON object with a "type" field     (control messages)
    b"D" + len + raw bytes                                   (data chunks of a stream)

Nothing read from the other side is ever evaluated or unpickled: JSON objects only, sizes bounded.
"""
from __future__ import annotations

import json
import struct
from typing import IO

from transport.errors import AgentError

JSON = b"J"
DATA = b"D"
MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">cI")


class ProtocolError(AgentError):
    """The other side sent something that is not a valid frame."""

    code = "protocol"


def write_frame(stream: IO[bytes], kind: bytes, payload: bytes) -> None:
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the limit of {MAX_FRAME}")
    stream.write(_HEADER.pack(kind, len(payload)) + payload)


def send(stream: IO[bytes], message: dict, *, flush: bool = True) -> None:
    if "type" not in message:
        raise ValueError("a control message needs a type")
    write_frame(stream, JSON, json.dumps(message, separators=(",", ":")).encode())
    if flush:
        stream.flush()


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError(f"stream ended after {len(buf)} of {n} bytes")
        buf.extend(chunk)
    return bytes(buf)


def read_frame(stream: IO[bytes]) -> tuple[bytes, bytes]:
    """The next (kind, payload); EOFError at a clean end of stream, ProtocolError on garbage."""
    head = stream.read(_HEADER.size)
    if not head:
        raise EOFError("stream closed")
    if len(head) < _HEADER.size:
        head += _read_exact(stream, _HEADER.size - len(head))
    kind, size = _HEADER.unpack(head)
    if kind not in (JSON, DATA):
        raise ProtocolError(f"unknown frame kind {kind!r}")
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {MAX_FRAME}")
    return kind, _read_exact(stream, size)


def decode(payload: bytes) -> dict:
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"control message is not valid JSON: {exc}") from exc
    except RecursionError as exc:   # "[[[[...": nesting deeper than the parser's stack
        raise ProtocolError("control message is nested too deeply") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("control message is not a JSON object with a type")
    return message


def recv(stream: IO[bytes]) -> dict:
    """The next control message (a data frame here is a protocol error)."""
    kind, payload = read_frame(stream)
    if kind != JSON:
        raise ProtocolError("expected a control message, got a data frame")
    return decode(payload)
