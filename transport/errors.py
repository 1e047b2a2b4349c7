"""The root of cmigrate's errors, and the transport layer's own: a leaf module every layer imports (nothing here
imports cmigrate). Catch :class:`MigrationError`. ``migrate.errors`` extends this tree with the errors of the
operations themselves; this is the whole tree:

    MigrationError                 root: catch this                                  (transport.errors)
    ├── TransportError             SSH or a local command could not run              (transport.errors)
    │   └── HostKeyError           a host's key is unknown or does not match         (transport.errors)
    ├── AgentError                 an agent answered wrongly (version, protocol)     (transport.errors)
    │   ├── ProtocolError          not a valid frame or message                      (transport.framing)
    │   └── SessionLost            (agent side) the CLI went silent or away          (transport.errors)
    ├── UsageError                 bad input from the user (names, options)          (migrate.errors)
    ├── PreflightError             a host is not fit; nothing was touched            (migrate.errors)
    ├── DockerError                the Docker daemon refused or failed               (migrate.errors)
    ├── CheckpointError            CRIU could not dump                               (migrate.errors)
    │   └── DumpAborted            ... and the source runs on                        (migrate.errors)
    ├── RestoreError               CRIU could not restore                            (migrate.errors)
    ├── RollbackError              a failure, and the container could not be put back (migrate.errors)
    ├── Interrupted                Ctrl-C; the message says where that left things   (migrate.errors)
    └── LabError                   the local lab could not be brought up or down     (migrate.errors)

Every error carries fields (``host``, ``container``, ``argv``, ``status``, ``detail``, ``hint``) and builds its
one-line message from them. On the wire an error travels as its stable ``code`` (``preflight``, ``dump-aborted``
...), never as a Python class name: renaming a class changes no protocol. Each class with a ``code`` of its own is
registered in ``CODES`` when it is defined; ``from_wire`` turns a message back into the most specific class known,
AgentError for a code this end does not know.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

# C0 controls but tab and newline, DEL, C1 controls: what a terminal would act on (colours, cursor moves, titles)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
CODES: dict[str, type[MigrationError]] = {}


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (from CRIU's log, a remote agent, a container's name)
    are shown as escapes, never sent."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class MigrationError(Exception):
    """Root of cmigrate's errors: catch this."""

    code = "error"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            if cls.code in CODES:
                raise TypeError(f"error code {cls.code!r} is taken by {CODES[cls.code].__name__}")
            CODES[cls.code] = cls

    def __init__(self, message: str, *, host: str | None = None, container: str | None = None,
                 argv: Sequence[str] | None = None, status: int | None = None, detail: str = "",
                 hint: str = "") -> None:
        self.message = message
        self.host = host
        self.container = container
        self.argv = list(argv) if argv is not None else None
        self.status = status
        self.detail = detail
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:   # built when asked: a hint added later (a rollback's outcome) is part of it
        return self.line()

    def line(self) -> str:
        """The one line the CLI prints."""
        where = f"{self.host}: " if self.host else ""
        hint = f" ({self.hint})" if self.hint else ""
        return printable(f"{where}{self.message}{hint}").replace("\n", " ")

    def to_dict(self) -> dict:
        return {"code": self.code, "error": type(self).__name__, "message": self.message, "host": self.host,
                "container": self.container, "argv": self.argv, "status": self.status,
                "detail": self.detail, "hint": self.hint}


CODES[MigrationError.code] = MigrationError


class TransportError(MigrationError):
    """A command could not be run on a host (SSH failure, missing binary)."""

    code = "transport"


class HostKeyError(TransportError):
    """A host's SSH key is unknown, or differs from the one recorded in known_hosts."""

    code = "host-key"


class AgentError(MigrationError):
    """An agent answered outside the protocol or with another version."""

    code = "agent"


class SessionLost(AgentError):
    """The agent's side: the CLI stopped talking mid-operation (its lease ran out, its session ended); the agent
    cleans up and exits."""

    code = "session-lost"


def from_wire(message: dict, host: str) -> MigrationError:
    """The error an agent's ``error`` message describes, as the most specific class registered for its code."""
    cls = CODES.get(str(message.get("code")), AgentError)
    argv = message.get("argv")
    status = message.get("status")
    return cls(str(message.get("message", "agent error")), host=message.get("host") or host,
               container=message.get("container"),
               argv=[str(a) for a in argv] if isinstance(argv, list) else None,
               status=status if isinstance(status, int) else None,
               detail=str(message.get("detail") or ""), hint=str(message.get("hint") or ""))
