"""Public API for checkpoints on one host: create, ls, rm, and start from a checkpoint.

Each function runs the work in a cmigrate-agent on ``host`` (``"local"`` or an SSH host name) and raises a
:class:`migrate.errors.MigrationError` subclass on failure, with ``host`` set.
"""
from __future__ import annotations

from migrate.hosts import agent
from migrate.names import validate_checkpoint, validate_container


def _dir(checkpoint_dir: str | None) -> str | None:
    return str(checkpoint_dir) if checkpoint_dir else None


def create(container: str, name: str, *, host: str = "local", leave_running: bool = False,
           checkpoint_dir: str | None = None, ssh_config: str | None = None) -> dict:
    """Checkpoint a running container (memory and writable layer). Returns name, dir, bytes, frozen_seconds."""
    container, name = validate_container(container), validate_checkpoint(name)
    with agent(host, ssh_config) as a:
        return a.call("checkpoint.create", container=container, name=name, leave_running=leave_running,
                      checkpoint_dir=_dir(checkpoint_dir))


def ls(container: str, *, host: str = "local", checkpoint_dir: str | None = None,
       ssh_config: str | None = None) -> list[dict]:
    """The container's checkpoints, oldest first: name, created (epoch seconds), bytes, dir."""
    container = validate_container(container)
    with agent(host, ssh_config) as a:
        return a.call("checkpoint.ls", container=container, checkpoint_dir=_dir(checkpoint_dir))


def rm(container: str, name: str, *, host: str = "local", checkpoint_dir: str | None = None,
       ssh_config: str | None = None) -> dict:
    container, name = validate_container(container), validate_checkpoint(name)
    with agent(host, ssh_config) as a:
        return a.call("checkpoint.rm", container=container, name=name, checkpoint_dir=_dir(checkpoint_dir))


def start(container: str, checkpoint: str, *, host: str = "local", checkpoint_dir: str | None = None,
          ssh_config: str | None = None) -> dict:
    """Start a stopped container from a checkpoint: memory and writable layer as they were at that point."""
    container, checkpoint = validate_container(container), validate_checkpoint(checkpoint)
    with agent(host, ssh_config) as a:
        return a.call("checkpoint.restore", container=container, name=checkpoint,
                      checkpoint_dir=_dir(checkpoint_dir))
