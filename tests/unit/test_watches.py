"""agents/watches.py: the watches a container's processes hold, and the paths CRIU is told to find them at."""
from __future__ import annotations

import ctypes
import os

import pytest

from agents import watches
from migrate.errors import PreflightError

IN_CREATE = 0x100
libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture
def inotify():
    """An inotify instance of this process; add(path) watches path."""
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0

    class Instance:
        def add(self, path):
            assert libc.inotify_add_watch(fd, str(path).encode(), IN_CREATE) > 0
    Instance.fd = fd
    yield Instance()
    os.close(fd)


def test_fdinfo_lines_of_both_kinds_are_read():
    text = ("pos:\t0\nflags:\t02000000\nmnt_id:\t17\nino:\t1038\n"
            "inotify wd:4 ino:16c033 sdev:29 mask:382 ignored_mask:0 fhandle-bytes:20 fhandle-type:f8 f_handle:00\n"
            "inotify wd:3 ino:16c418 sdev:fe00000 mask:382 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:18\n"
            "fanotify ino:16c043 sdev:29 mflags:0 mask:800000a ignored_mask:0 fhandle-bytes:20 fhandle-type:f8\n")
    got = watches.parse_fdinfo(7, 3, text)
    assert got == [watches.Watch(7, 3, "inotify", os.makedev(0, 0x29), 0x16c033),
                   watches.Watch(7, 3, "inotify", os.makedev(254, 0), 0x16c418),
                   watches.Watch(7, 3, "fanotify", os.makedev(0, 0x29), 0x16c043)]


def test_this_process_watches_are_found_and_placed(tmp_path, inotify):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    inotify.add(tmp_path / "a" / "deep")
    inotify.add(tmp_path / "file")
    mine = [w for w in watches.held(os.getpid()) if w.fd == inotify.fd]
    assert len(mine) == 2
    st = os.stat(tmp_path)
    assert {w.dev for w in mine} == {st.st_dev}
    paths = watches.find(str(tmp_path), {(w.dev, w.ino) for w in mine})
    assert sorted(paths.values()) == ["/a/deep", "/file"]


def test_a_watch_not_among_the_files_is_refused_naming_it(tmp_path, inotify, monkeypatch):
    inotify.add(tmp_path)
    monkeypatch.setattr(watches, "find", lambda root, wanted, limit=0: {})
    with pytest.raises(PreflightError) as err:
        watches.irmap_hints(os.getpid(), "c1")
    assert f"pid {os.getpid()} fd {inotify.fd} (inotify, inode {os.stat(tmp_path).st_ino}" in err.value.message
    assert err.value.message.startswith("container c1 watches files it no longer has")


def test_no_watch_no_options():
    assert watches.irmap_hints(os.getpid(), "c1") == ""   # this process holds none outside the fixture


@pytest.mark.parametrize("path, hint", [
    ("/w/sub", "/w/sub"),
    ("/w/a b", "/w"),
    ("/w/x\nexec-cmd /bin/evil", "/w"),
    ("/éte/x", "/"),
    ("/", "/"),
])
def test_hints_are_single_plain_words(path, hint):
    # the container names its own files: a space or a newline must not become an option of CRIU's
    assert watches._plain(path) == hint


def test_a_hostile_directory_name_stays_out_of_criu_options(tmp_path, inotify, monkeypatch):
    evil = tmp_path / "w" / "x\nexec-cmd /bin/evil"
    evil.mkdir(parents=True)
    inotify.add(evil)
    real_find = watches.find
    monkeypatch.setattr(watches, "find", lambda root, wanted, limit=0: real_find(str(tmp_path), wanted))
    st = os.stat(tmp_path)
    monkeypatch.setattr(watches.os, "stat", lambda p, *a, **k: st if str(p).startswith("/proc/") else os.lstat(p))
    assert watches.irmap_hints(os.getpid(), "c1") == "irmap-scan-path /w\n"
