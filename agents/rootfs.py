"""A container's writable layer (overlay2's upper directory): saved with a checkpoint, put back on restore.

Docker's checkpoint omits it, and CRIU then refuses to restore a process whose open file changed size. The layer
is kept as a tar with overlay's whiteouts (character devices 0:0) and opaque-directory xattrs, so deletions are
carried too. Saving happens while the container is frozen, so files and memory belong to the same instant.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

from migrate.errors import CheckpointError, PreflightError, RestoreError

TAR = ["tar", "--xattrs", "--xattrs-include=trusted.*", "--xattrs-include=user.*", "--xattrs-include=security.*",
       "--numeric-owner", "--sparse"]


def upper_dir(inspect: dict) -> Path:
    driver = inspect.get("GraphDriver") or {}
    if driver.get("Name") != "overlay2" or not (driver.get("Data") or {}).get("UpperDir"):
        raise PreflightError(f"storage driver {driver.get('Name')!r} is not supported: the writable layer can only "
                             "be carried with overlay2", container=inspect.get("Name", "").lstrip("/"))
    return Path(driver["Data"]["UpperDir"])


def save(upper: Path, archive: Path) -> dict:
    """Tar ``upper`` into ``archive``; returns its size and sha256."""
    archive.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    res = subprocess.run(TAR + ["-cpf", str(archive), "-C", str(upper), "."], capture_output=True, text=True)
    if res.returncode != 0:
        raise CheckpointError(f"cannot save the writable layer: {res.stderr.strip()}")
    return {"file": archive.name, "bytes": archive.stat().st_size, "sha256": sha256(archive)}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Replaced:
    """The upper directory replaced by an archive's content; ``undo()`` puts the old one back."""

    def __init__(self, upper: Path, archive: Path) -> None:
        self.upper = upper
        self.backup = upper.with_name(upper.name + ".cmigrate-prev")
        if self.backup.exists():
            shutil.rmtree(self.backup)
        mode = upper.stat().st_mode
        os.rename(upper, self.backup)
        upper.mkdir()
        os.chmod(upper, mode & 0o7777)
        res = subprocess.run(TAR + ["-xpf", str(archive), "-C", str(upper)], capture_output=True, text=True)
        if res.returncode != 0:
            self.undo()
            raise RestoreError(f"cannot restore the writable layer: {res.stderr.strip()}")

    def undo(self) -> None:
        if self.backup.exists():
            shutil.rmtree(self.upper, ignore_errors=True)
            os.rename(self.backup, self.upper)

    def commit(self) -> None:
        shutil.rmtree(self.backup, ignore_errors=True)


OPAQUE = "SCHILY.xattr.trusted.overlay.opaque"


def apply_to_mounted(merged: Path, archive: Path) -> None:
    """Put an archived upper directory's changes into a container whose overlay is already mounted (a restore
    begun before the archive arrived), through the merged view so that overlay records them itself: a whiteout
    deletes, an opaque directory is emptied, everything else is extracted over what the image has."""
    deletions, opaque, names = [], [], []
    seen_dirs = {"."}   # an upper directory's archive lists every directory before what is in it
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            name = os.path.normpath(member.name)
            if name == ".":
                continue
            if name.startswith("/") or name == ".." or name.startswith("../"):
                raise RestoreError(f"the writable layer's archive names a path outside the container: {name!r}")
            if (os.path.dirname(name) or ".") not in seen_dirs:
                # tar would write it through whatever the image has there: a symlink such as var/run -> /run
                # leads onto the host
                raise RestoreError(f"the writable layer's archive names {name!r} before its directory: refused")
            if member.isdir():
                seen_dirs.add(name)
            if member.ischr() and member.devmajor == 0 and member.devminor == 0:
                deletions.append(name)
                names.append(member.name)
            elif member.isdir() and member.pax_headers.get(OPAQUE) == "y":
                opaque.append(name)
    if all(m.isdir() for m in members) and not opaque:   # the usual case: directories only (mount points)
        _directories(merged, members)
        return
    for name in deletions:
        _remove(_inside(merged, name))
    for name in opaque:
        target = _inside(merged, name)
        if target.is_dir() and not target.is_symlink():
            for child in target.iterdir():
                _remove(child)
    with tempfile.NamedTemporaryFile("w", prefix="cmigrate-whiteouts-") as skip:
        skip.write("".join(n + "\n" for n in names if "\n" not in n))
        skip.flush()
        argv = ["tar", "--xattrs", "--xattrs-include=*", "--xattrs-exclude=trusted.overlay.*", "--numeric-owner",
                "-xpf", str(archive), "-C", str(merged), "--no-wildcards", "--anchored", "--exclude-from", skip.name]
        res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise RestoreError(f"cannot restore the writable layer: {res.stderr.strip()[-300:]}")


def _directories(merged: Path, members: list[tarfile.TarInfo]) -> None:
    """Directories only: made where missing, with the archive's owner, mode, xattrs and times (deepest first, so
    that making one does not change its parent's mtime afterwards); no tar process to start."""
    paths = []
    for member in members:   # parents before children, as tar lists them
        name = os.path.normpath(member.name)
        path = merged if name == "." else _inside(merged, name)
        path.mkdir(exist_ok=True)
        if path.is_symlink() or not path.is_dir():
            raise RestoreError(f"the writable layer's directory {name!r} is not a directory here")
        paths.append((len(Path(name).parts), path, member))
    for _, path, member in sorted(paths, key=lambda p: -p[0]):
        os.chown(path, member.uid, member.gid)
        os.chmod(path, member.mode & 0o7777)
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr.") and not key.startswith("SCHILY.xattr.trusted.overlay."):
                os.setxattr(path, key[len("SCHILY.xattr."):], value.encode("utf-8", "surrogateescape"))
        os.utime(path, (member.mtime, member.mtime))


def _inside(root: Path, name: str) -> Path:
    """``root/name``, refusing a path whose parents are not plain directories (a symlink there could lead out of
    the container: in an upper directory, the parents of a whiteout always are directories)."""
    path = root
    for part in Path(name).parts[:-1]:
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return root / name   # nothing there to delete
        if not stat.S_ISDIR(st.st_mode):
            raise RestoreError(f"the writable layer's archive deletes {name!r} through a non-directory")
    return root / name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
