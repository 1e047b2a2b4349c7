"""The errors of cmigrate's operations, extending the tree whose root and transport errors live in
``transport.errors`` (drawn there, whole). Catch :class:`MigrationError`; it and the transport errors are
importable from here too. Each class has a stable ``code``: what travels on the wire.
"""
from __future__ import annotations

from transport.errors import AgentError, HostKeyError, MigrationError, TransportError, printable

__all__ = ["MigrationError", "TransportError", "HostKeyError", "AgentError", "UsageError", "PreflightError",
           "DockerError", "CheckpointError", "DumpAborted", "RestoreError", "RollbackError", "Interrupted",
           "LabError", "printable"]


class UsageError(MigrationError):
    """Bad input: an invalid name, a contradictory option."""

    code = "usage"


class PreflightError(MigrationError):
    """A host is not fit for the operation; nothing was changed."""

    code = "preflight"


class DockerError(MigrationError):
    """The Docker daemon refused a request or failed it."""

    code = "docker"


class CheckpointError(MigrationError):
    """CRIU failed to dump the container."""

    code = "checkpoint"


class DumpAborted(CheckpointError):
    """The dump failed on the source, which thawed the container: it runs there, and nothing was restored."""

    code = "dump-aborted"


class RestoreError(MigrationError):
    """CRIU failed to restore the container."""

    code = "restore"


class RollbackError(MigrationError):
    """An operation failed and the container could not be put back as it was."""

    code = "rollback"


class Interrupted(MigrationError):
    """Ctrl-C (SIGINT) stopped the operation; the message says where that left the container."""

    code = "interrupted"


class LabError(MigrationError):
    """The local two-host lab could not be brought up, inspected or torn down."""

    code = "lab"
