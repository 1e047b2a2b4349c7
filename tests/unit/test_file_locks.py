"""agents/file_locks.py: the locks a container's processes hold, named for a refusal before the freeze."""
from __future__ import annotations

import fcntl
import os

import pytest

from agents import file_locks
from migrate.errors import PreflightError


def test_a_held_flock_is_named_by_pid_fd_and_file(tmp_path):
    path = tmp_path / "held.lock"
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        found = [x for x in file_locks.held(os.getpid()) if str(path) in x]
        assert found == [f"pid {os.getpid()} fd {f.fileno()} (FLOCK on {path})"]
        with pytest.raises(PreflightError) as err:
            file_locks.refuse_unmovable(os.getpid(), "c1", "hostB")
        assert err.value.message.startswith("container c1 holds file locks hostB cannot restore")
    assert not [x for x in file_locks.held(os.getpid()) if str(path) in x]


def test_an_open_file_without_a_lock_is_no_lock(tmp_path):
    with open(tmp_path / "free", "w"):
        assert not [x for x in file_locks.held(os.getpid()) if str(tmp_path) in x]
