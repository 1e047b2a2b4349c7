"""A container's writable layer (overlay2's upper directory): saved with a checkpoint, put back on restore.

Docker's checkpoint omits it, and CRIU then refuses to restore a process whose open file changed size. The layer
is kept as a tar with overlay's whiteouts (character devices 0:0) and opaque-directory xattrs, so deletions are
carried too. Saving happens while the container is frozen, so files and memory belong to the same instant.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
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
