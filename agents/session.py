"""One agent session (one CLI's connection): the migrations it works on, by id, on either end.

A migration's state between calls lives in its :class:`~agents.source.SourceMigration` or
:class:`~agents.destination.DestinationMigration`, never in module globals; ``end`` ends them all when the session
ends, however it ends (the CLI said bye, died, or its link was cut). ``on_migration`` makes an operation of a
migration's method: the object is the session's for the call's ``migration_id``.
"""
from __future__ import annotations

import sys

from agents.journal import ContainerLock


class Session:
    def __init__(self) -> None:
        self.migrations: dict[tuple[type, str], object] = {}

    def get(self, cls: type, migration_id: str):
        """The session's ``cls`` object of ``migration_id``, made on first use."""
        key = (cls, migration_id)
        if key not in self.migrations:
            self.migrations[key] = cls(migration_id, self)
        return self.migrations[key]

    def find(self, cls: type, migration_id: str):
        """The session's ``cls`` object of ``migration_id`` if it made one, else None."""
        return self.migrations.get((cls, migration_id))

    def lock(self, container_id: str, name: str) -> ContainerLock:
        """A container's migration lock; one this session holds already is shared (a second flock from this
        process would fail against its own)."""
        for m in self.migrations.values():
            held = getattr(m, "lock", None)
            if held is not None and held.container_id == container_id and held.fd >= 0:
                return held
        return ContainerLock(container_id, name)

    def end(self) -> None:
        for m in list(self.migrations.values()):
            try:
                m.end()
            except Exception as exc:   # the others must end all the same
                print(f"cmigrate-agent: ending migration {m.id}: {type(exc).__name__}: {exc}", file=sys.stderr)


def on_migration(cls: type, method):
    """The operation ``method`` of ``cls`` (``args, ch`` -> answer), on the session's object for the call."""
    def op(args: dict, ch):
        return method(ch.session.get(cls, args.get("migration_id")), args, ch)
    op.__doc__, op.__name__ = method.__doc__, method.__name__
    return op
