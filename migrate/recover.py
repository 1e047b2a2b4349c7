"""``cmigrate recover HOST [CONTAINER]``: finish or roll back migrations from (or to) HOST that were interrupted.

Each migration keeps a journal on both hosts. The destination's ``committed`` is the commit point: if the
destination committed, the migration is finished (the frozen source container is removed); otherwise what the
destination made is removed and the source container is thawed (it never stopped existing). A migration still in
progress (its source agent holds the container's lock) is left alone; so is one whose destination cannot be
reached (the container stays frozen on HOST: running it there could make it run twice). Where HOST was the
destination and committed, its journal goes once the source holds none of that migration any more.
"""
from __future__ import annotations

from dataclasses import dataclass

from migrate.errors import MigrationError
from migrate.hosts import agent as agent_on, open_host
from migrate.names import validate_host, validate_timeout
from transport.agent import DEFAULT_IO_TIMEOUT, AgentSession


@dataclass
class Outcome:
    container: str
    source: str
    destination: str
    migration_id: str
    result: str        # completed | rolled-back | in-progress | unresolved
    detail: str

    def line(self) -> str:
        return f"{self.container} ({self.migration_id}, {self.source} -> {self.destination}): {self.result}: " \
               f"{self.detail}"


def recover(host: str, container: str | None = None, *, ssh_config: str | None = None,
            agent: str | None = None, io_timeout: float = DEFAULT_IO_TIMEOUT) -> list[Outcome]:
    """Finish or roll back each interrupted migration from (or to) ``host``; a host silent for ``io_timeout``
    seconds counts as unreachable."""
    validate_host(host)
    validate_timeout(io_timeout)
    with agent_on(host, ssh_config, agent, io_timeout) as here:
        outcomes = [_one(here, host, journal, ssh_config, agent, io_timeout)
                    for journal in here.call("source.pending", container=container)]
        return outcomes + [_committed_here(here, host, journal, ssh_config, agent, io_timeout)
                           for journal in here.call("dest.pending", container=container)]


def _committed_here(here: AgentSession, host: str, journal: dict, ssh_config, agent, io_timeout) -> Outcome:
    """HOST was the destination and committed: once the source holds no journal of that migration (it let go of
    the container), this one's journal goes too."""
    name, mid, src_name = journal["name"], journal["migration_id"], journal["source"]
    out = lambda result, detail: Outcome(name, src_name, host, mid, result, detail)  # noqa: E731
    try:
        src_host = open_host(src_name, ssh_config)
    except MigrationError as exc:
        return out("unresolved", f"{src_name} cannot be reached ({exc.message}); {name} runs on {host}")
    try:
        with AgentSession(src_host, agent, io_timeout) as src:
            if any(j["migration_id"] == mid for j in src.call("source.pending")):
                return out("in-progress", f"{src_name} still has it: run 'cmigrate recover {src_name}'")
        here.call("dest.forget", migration_id=mid)
        return out("completed", f"{name} runs on {host}; {src_name} had let go of it; the journal here is gone")
    except MigrationError as exc:
        return out("unresolved", f"{exc.line()}; {name} runs on {host}")
    finally:
        src_host.close()


def _one(src: AgentSession, host: str, journal: dict, ssh_config, agent, io_timeout) -> Outcome:
    name, mid, dst_name = journal["name"], journal["migration_id"], journal.get("destination") or "?"
    out = lambda result, detail: Outcome(name, host, dst_name, mid, result, detail)  # noqa: E731
    try:
        src.call("source.recover_lock", container_id=journal["container_id"], name=name, migration_id=mid)
    except MigrationError as exc:
        return out("in-progress", exc.message)
    try:
        dst_host = open_host(dst_name, ssh_config)
    except MigrationError as exc:
        return out("unresolved", f"{dst_name} cannot be reached ({exc.message}); {name} stays frozen on {host}")
    try:
        with AgentSession(dst_host, agent, io_timeout) as dst:
            status = dst.call("dest.status", migration_id=mid)
            if status["committed"]:
                src.call("source.finish", container_id=journal["container_id"], migration_id=mid, keep=False)
                dst.call("dest.forget", migration_id=mid)
                return out("completed", f"{name} runs on {dst_name}; its frozen copy on {host} was removed")
            dst.call("dest.abandon", migration_id=mid)
            if src.call("source.resume", container_id=journal["container_id"], migration_id=mid).get("gone"):
                return out("rolled-back", f"{name} was removed from {host} meanwhile; {dst_name} kept nothing "
                                          "of it; its journal is gone")
            return out("rolled-back", f"{name} runs on {host} again; {dst_name} kept nothing of it")
    except MigrationError as exc:
        return out("unresolved", f"{exc.line()}; {name} stays frozen on {host}")
    finally:
        dst_host.close()
