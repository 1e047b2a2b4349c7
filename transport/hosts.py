"""The transport contract: open a session to a host, run an argv there, stream bytes in and out.

A :class:`Host` is either :class:`LocalHost` (subprocess on this machine) or :class:`transport.ssh.SSHHost`.
Both take argv lists; nothing here ever builds a shell string from input (SSH quotes every word).
"""
from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Protocol

from transport.errors import TransportError


@dataclass
class Result:
    """What a finished command gave back."""

    argv: list[str]
    status: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


class Process(Protocol):
    """A command running on a host, with its standard streams."""

    stdin: IO[bytes]
    stdout: IO[bytes]
    stderr: IO[bytes]

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class Host(Protocol):
    """Where commands run. ``name`` is what the user called it (``hostA``, ``local``)."""

    name: str

    def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = None,
            check: bool = True) -> Result: ...

    def popen(self, argv: Sequence[str]) -> Process: ...

    def close(self) -> None: ...


def tail(data: bytes | str, lines: int = 8) -> str:
    """The last lines of a command's output, for error messages."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return "\n".join(text.strip().splitlines()[-lines:])


def check_result(host: str, result: Result) -> Result:
    if result.status != 0:
        last = tail(result.stderr or result.stdout, 1) or "no output"
        raise TransportError(f"{result.argv[0]} failed with exit status {result.status}: {last}", host=host,
                             argv=result.argv, status=result.status, detail=tail(result.stderr or result.stdout))
    return result


class LocalHost:
    """This machine, through subprocess."""

    def __init__(self, name: str = "local") -> None:
        self.name = name

    def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = None,
            check: bool = True) -> Result:
        argv = [str(a) for a in argv]
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, timeout=timeout,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise TransportError(f"{argv[0]} is not installed", host=self.name, argv=argv) from exc
        except subprocess.TimeoutExpired as exc:
            raise TransportError(f"{argv[0]} did not finish within {timeout:g} s", host=self.name,
                                 argv=argv) from exc
        result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
        return check_result(self.name, result) if check else result

    def popen(self, argv: Sequence[str]) -> subprocess.Popen:
        argv = [str(a) for a in argv]
        try:
            return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError as exc:
            raise TransportError(f"{argv[0]} is not installed", host=self.name, argv=argv) from exc

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"LocalHost({self.name!r})"
