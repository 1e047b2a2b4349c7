"""A migration's journal holds its commit point: each write reaches the disk (the file, then the rename in its
directory) before the agent answers, so that a power cut after 'committed' cannot bring back 'created'."""
from __future__ import annotations

import json
import os

from agents import journal


def test_journal_writes_are_fsynced_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    journal.write(tmp_path, state="created")
    journal.write(tmp_path, state="committed")
    assert json.loads((tmp_path / "journal.json").read_text())["state"] == "committed"
    assert synced.count(str(tmp_path)) == 2, synced                       # the directory, after each rename
    assert sum(p.endswith(".cmigrate-tmp") for p in synced) == 2, synced   # the data, before it
    assert oct((tmp_path / "journal.json").stat().st_mode & 0o777) == "0o600"
