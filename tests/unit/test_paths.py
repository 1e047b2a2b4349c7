"""Directories a user names for root to work in: refused when another user could swap what is in them."""
from __future__ import annotations

import os

import pytest

from agents.paths import require_private_dir
from migrate.errors import PreflightError


@pytest.fixture
def base(tmp_path):
    os.chmod(tmp_path, 0o700)
    return tmp_path


def test_a_private_directory_of_roots_and_one_to_be_made_are_fine(base):
    (base / "ck").mkdir(mode=0o700)
    assert require_private_dir(base / "ck", "--checkpoint-dir") == base / "ck"
    assert require_private_dir(base / "new" / "deeper", "--checkpoint-dir") == base / "new" / "deeper"


def test_a_directory_another_user_owns_is_refused(base):
    d = base / "ck"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(PreflightError, match="belongs to uid 65534, not root"):
        require_private_dir(d, "--checkpoint-dir")
    with pytest.raises(PreflightError, match="belongs to uid 65534"):
        require_private_dir(d / "inside", "--checkpoint-dir")


def test_a_directory_others_can_write_to_is_refused_unless_sticky_above(base):
    d = base / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(PreflightError, match="writable by others"):
        require_private_dir(d, "CMIGRATE_WORK_ROOT")
    os.chmod(d, 0o1777)   # like /tmp: a private directory of root's inside it is fine
    (d / "mine").mkdir(mode=0o700)
    assert require_private_dir(d / "mine", "CMIGRATE_WORK_ROOT")
    with pytest.raises(PreflightError, match="writable by others"):
        require_private_dir(d, "CMIGRATE_WORK_ROOT")   # but not the sticky one itself


def test_symlinks_and_odd_paths_are_refused(base):
    (base / "real").mkdir(mode=0o700)
    (base / "link").symlink_to(base / "real")
    with pytest.raises(PreflightError, match="goes through the symlink"):
        require_private_dir(base / "link" / "ck", "--checkpoint-dir")
    with pytest.raises(PreflightError, match="not a plain path"):
        require_private_dir(base / "real" / ".." / "real", "--checkpoint-dir")
