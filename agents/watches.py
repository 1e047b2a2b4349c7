"""The inotify and fanotify watches a container's processes hold, found before the freeze so that CRIU can dump them.

CRIU saves a watch as the path of the inode it watches. It first asks the kernel for that path through the
watch's file handle; overlayfs (every container's root filesystem) gives a handle CRIU cannot open, so CRIU falls
back to its irmap: a search by inode number from a few hint paths (/etc and parts of /var). A watch anywhere else
fails the dump after the freeze: ``fsnotify: Can't dump that handle``. Watches on volumes and other bind mounts
open by handle and need nothing.

So, while the container still runs, each watched inode of the container's root filesystem is looked up here, by
walking that filesystem as the container sees it (``/proc/PID/root``), and its path goes to CRIU as an irmap hint
(``irmap-scan-path``): CRIU finds it at once, and nothing is searched while the container is frozen. A watch whose
inode is not there (a file deleted since, or a filesystem no path of the container reaches) cannot be restored:
the migration is refused before the freeze, naming the process, the descriptor and the inode.
"""
from __future__ import annotations

import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from agents import tasks
from migrate.errors import PreflightError

# "inotify wd:1 ino:16c459 sdev:29 mask:382 ..." and "fanotify ino:16c043 sdev:29 mflags:0 mask:..." (fs/notify)
MARK = re.compile(r"^(inotify|fanotify) (?:wd:\S+ )?ino:([0-9a-f]+) sdev:([0-9a-f]+)\b", re.M)
# directories whose contents are not files of the container's own (kernel views); never walked
NOT_FILES = ("proc", "sys", "dev")
PLAIN = re.compile(r"[A-Za-z0-9._/+@:,=-]+")
WALK_LIMIT = 500_000   # entries: a whole distribution image is ~100k; past this, give up and refuse


@dataclass(frozen=True)
class Watch:
    pid: int
    fd: int
    kind: str   # inotify | fanotify
    dev: int    # st_dev as stat() gives it
    ino: int

    def describe(self) -> str:
        return f"pid {self.pid} fd {self.fd} ({self.kind}, inode {self.ino} on device " \
               f"{os.major(self.dev)}:{os.minor(self.dev)})"


def _kernel_dev(sdev: int) -> int:
    """The kernel's s_dev (major << 20 | minor, as fdinfo prints it) as a userspace dev_t."""
    return os.makedev(sdev >> 20, sdev & 0xFFFFF)


def parse_fdinfo(pid: int, fd: int, text: str) -> list[Watch]:
    return [Watch(pid, fd, kind, _kernel_dev(int(sdev, 16)), int(ino, 16))
            for kind, ino, sdev in MARK.findall(text)]


def held(init_pid: int) -> list[Watch]:
    """Every watch (an inotify watch, a fanotify inode mark) the container's processes hold."""
    found = []
    for pid, fd, target in tasks.descriptors(init_pid):
        if target in ("anon_inode:inotify", "anon_inode:[fanotify]"):
            try:
                found += parse_fdinfo(pid, fd, Path(f"/proc/{pid}/fdinfo/{fd}").read_text())
            except OSError:
                continue   # closed meanwhile: nothing to dump
    return found


def find(root: str, wanted: set[tuple[int, int]], limit: int = WALK_LIMIT) -> dict[tuple[int, int], str]:
    """Paths, as seen from ``root``, of the (dev, ino) pairs in ``wanted``: breadth first (watched directories are
    usually near the top), on ``root``'s own filesystem only (watches elsewhere open by handle)."""
    paths: dict[tuple[int, int], str] = {}
    top = os.stat(root)   # root may be /proc/PID/root: the directory it leads to
    if (top.st_dev, top.st_ino) in wanted:
        paths[(top.st_dev, top.st_ino)] = "/"
    queue, seen = deque([""]), 0
    while queue and len(paths) < len(wanted) and seen < limit:
        rel = queue.popleft()
        try:
            entries = list(os.scandir(root + rel or "/"))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            name = f"{rel}/{entry.name}"
            if not rel and entry.name in NOT_FILES:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != top.st_dev:
                continue
            if (st.st_dev, st.st_ino) in wanted:
                paths[(st.st_dev, st.st_ino)] = name
            if entry.is_dir(follow_symlinks=False):
                queue.append(name)
    return paths


def irmap_hints(init_pid: int, container: str) -> str:
    """CRIU options naming the path of every watch on the container's root filesystem (``irmap-scan-path``, one
    per path); PreflightError naming each watch whose inode is not among the container's files."""
    root = f"/proc/{init_pid}/root"
    try:
        root_dev = os.stat(root).st_dev
    except OSError:
        return ""   # gone: the dump will say so
    on_root = [w for w in held(init_pid) if w.dev == root_dev]
    if not on_root:
        return ""
    paths = find(root, {(w.dev, w.ino) for w in on_root})
    lost = [w for w in on_root if (w.dev, w.ino) not in paths]
    if lost:
        raise PreflightError(
            f"container {container} watches files it no longer has (deleted?): "
            + "; ".join(w.describe() for w in lost), container=container,
            hint="have the process drop that watch (or restart it), then move the container")
    return "".join(f"irmap-scan-path {_plain(p)}\n" for p in sorted(set(paths.values())))


def _plain(path: str) -> str:
    """``path``, or its nearest ancestor, spelled only with characters CRIU's option file takes as one word: the
    container names its files, and a name with a space or a newline must not become options of CRIU's (CRIU
    searches below a hint, so an ancestor finds the file too)."""
    while path != "/" and not PLAIN.fullmatch(path):
        path = path.rsplit("/", 1)[0] or "/"
    return path
