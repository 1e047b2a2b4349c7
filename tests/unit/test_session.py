"""One agent session holds its migrations as objects, by id: two of the same container share its lock, the
session's end ends every one of them, and a destination that made nothing removes nothing."""
from __future__ import annotations

import json

import pytest

from agents import destination, journal
from agents.destination import DestinationMigration
from agents.session import Session
from agents.source import SourceMigration
from migrate.errors import PreflightError


@pytest.fixture
def root(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    monkeypatch.setenv("CMIGRATE_WORK_ROOT", str(work))
    monkeypatch.setattr(journal, "LOCKS", tmp_path / "locks")
    journal.work_root.cache_clear()
    yield work
    journal.work_root.cache_clear()


def test_migrations_are_objects_by_id_and_bad_ids_are_refused(root):
    s = Session()
    a1 = s.get(SourceMigration, "a1")
    assert s.get(SourceMigration, "a1") is a1 and s.get(SourceMigration, "b2") is not a1
    assert s.get(DestinationMigration, "a1") is not s.get(SourceMigration, "a1")
    for bad in ("../x", "", None, "a-b"):
        with pytest.raises(PreflightError):
            s.get(SourceMigration, bad)


def test_one_session_shares_a_container_lock_another_process_is_refused(root):
    s = Session()
    s.get(SourceMigration, "a1").lock_container("c" * 64, "cr")
    s.get(SourceMigration, "b2").lock_container("c" * 64, "cr")   # the same session: shared, not a deadlock with itself
    assert s.get(SourceMigration, "a1").lock is s.get(SourceMigration, "b2").lock
    import subprocess
    import sys
    probe = (f"import fcntl, os; fd = os.open({str(journal.LOCKS / ('c' * 64))!r}, os.O_RDWR); "
             "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode != 0
    s.end()
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def test_session_end_removes_unjournaled_predumps_and_uncommitted_destinations(root):
    s = Session()
    src = s.get(SourceMigration, "a1")
    journal.workdir("a1", "src", create=True)
    src.predumped = True                          # pre-dumped, never frozen: no journal
    frozen = s.get(SourceMigration, "b2")
    journal.write(journal.workdir("b2", "src", create=True), state="frozen")
    frozen.predumped = True                       # frozen: its journal is what recover needs
    dst = s.get(DestinationMigration, "c3")
    dst.listen({"migration_id": "c3"}, None)      # made something here; never committed
    idle = s.get(DestinationMigration, "d4")                    # made nothing
    journal.write(journal.workdir("d4", "dst", create=True), state="committed", name="x", container_id="y")
    assert idle.discard() == {"removed": []}      # what another agent made is not this one's to remove
    s.end()
    assert not (root / "a1-src").exists()
    assert json.loads((root / "b2-src" / "journal.json").read_text())["state"] == "frozen"
    assert not (root / "c3-dst").exists()
    assert (root / "d4-dst" / "journal.json").exists(), "a migration this session did not make was touched"
    assert idle.committed


def test_committed_destination_stays_after_the_session(root, monkeypatch):
    # what the commit asks of Docker first (it still serves, the container runs) is the fault matrix's
    # dst-dockerd-stopped@restored cell, on the lab
    monkeypatch.setattr(destination, "_require_kept", lambda cid: None)
    s = Session()
    dst = s.get(DestinationMigration, "e5")
    dst.listen({"migration_id": "e5"}, None)
    dst.commit({"migration_id": "e5"}, type("Ch", (), {"stdin": object()})())
    s.end()
    assert json.loads((root / "e5-dst" / "journal.json").read_text())["state"] == "committed"
