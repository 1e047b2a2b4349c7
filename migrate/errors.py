"""The exceptions cmigrate raises. Catch :class:`MigrationError`.

    MigrationError                 root: catch this
    ├── UsageError                 bad input from the user (names, options)
    ├── PreflightError             a host is not fit for the operation; nothing was touched
    ├── TransportError             SSH or a local command could not run
    │   └── HostKeyError           a host's key is unknown or does not match known_hosts
    ├── AgentError                 an agent answered wrongly (version, protocol)
    ├── DockerError                the Docker daemon refused or failed
    ├── CheckpointError            CRIU could not dump
    ├── RestoreError               CRIU could not restore
    ├── RollbackError              a failure, and the container could not be put back
    └── LabError                   the local two-host lab could not be brought up or down

Every error carries fields (``host``, ``container``, ``argv``, ``status``, ``detail``) and builds its one-line
message from them; ``detail`` holds extra lines (e.g. the relevant lines of CRIU's log) shown under it.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

# C0 controls but tab and newline, DEL, C1 controls: what a terminal would act on (colours, cursor moves, titles)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (from CRIU's log, a remote agent, a container's name)
    are shown as escapes, never sent."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class MigrationError(Exception):
    """Root of cmigrate's errors: catch this."""

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
        return {"error": type(self).__name__, "message": self.message, "host": self.host,
                "container": self.container, "argv": self.argv, "status": self.status,
                "detail": self.detail, "hint": self.hint}


class UsageError(MigrationError):
    """Bad input: an invalid name, a contradictory option."""


class PreflightError(MigrationError):
    """A host is not fit for the operation; nothing was changed."""


class TransportError(MigrationError):
    """A command could not be run on a host (SSH failure, missing binary)."""


class HostKeyError(TransportError):
    """A host's SSH key is unknown, or differs from the one recorded in known_hosts."""


class AgentError(MigrationError):
    """An agent answered outside the protocol or with another version."""


class DockerError(MigrationError):
    """The Docker daemon refused a request or failed it."""


class CheckpointError(MigrationError):
    """CRIU failed to dump the container."""


class DumpAborted(CheckpointError):
    """The dump failed on the source, which thawed the container: it runs there, and nothing was restored."""


class RestoreError(MigrationError):
    """CRIU failed to restore the container."""


class RollbackError(MigrationError):
    """An operation failed and the container could not be put back as it was."""


class Interrupted(MigrationError):
    """Ctrl-C (SIGINT) stopped the operation; the message says where that left the container."""


class LabError(MigrationError):
    """The local two-host lab could not be brought up, inspected or torn down."""
