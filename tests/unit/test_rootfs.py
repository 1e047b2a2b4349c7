"""The writable layer put into a container whose overlay is already mounted (a gated restore) must look exactly
as if the saved upper directory itself had been mounted: on real overlay mounts (root, like the whole suite)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agents import rootfs
from migrate.errors import RestoreError


def _mount(base: Path, lower: Path, name: str) -> Path:
    upper, work, merged = (base / f"{name}-{d}" for d in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}",
                    str(merged)], check=True)
    return merged


def _listing(root: Path) -> list[tuple]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames + filenames):
            p = Path(dirpath) / n
            st = p.lstat()
            content = p.read_bytes() if p.is_file() and not p.is_symlink() else os.readlink(p) if p.is_symlink() else b""
            out.append((str(p.relative_to(root)), st.st_mode, st.st_uid, st.st_gid, content))
    return sorted(out)


@pytest.fixture
def overlays(tmp_path):
    mounted: list[Path] = []

    def mount(lower: Path, name: str) -> Path:
        mounted.append(_mount(tmp_path, lower, name))
        return mounted[-1]
    yield mount
    for m in reversed(mounted):
        subprocess.run(["umount", str(m)], check=False)


def test_changes_land_as_if_the_saved_upper_dir_were_mounted(tmp_path, overlays):
    lower = tmp_path / "lower"
    (lower / "gone-dir" / "sub").mkdir(parents=True)
    (lower / "gone-dir" / "sub" / "f").write_text("lower")
    (lower / "replaced").mkdir()
    (lower / "replaced" / "old").write_text("old")
    (lower / "kept").mkdir()
    (lower / "kept" / "changed").write_text("before")
    (lower / "deleted").write_text("bye")
    (tmp_path / "outside").mkdir()
    os.symlink(str(tmp_path / "outside"), lower / "abs-link")   # in the image; absolute: it points elsewhere here

    src = overlays(lower, "src")   # the container on the source: its changes go to src-upper
    (src / "deleted").unlink()
    subprocess.run(["rm", "-r", str(src / "gone-dir")], check=True)
    subprocess.run(["rm", "-r", str(src / "replaced")], check=True)
    (src / "replaced").mkdir(mode=0o750)
    (src / "replaced" / "new").write_text("new")
    (src / "kept" / "changed").write_text("after")
    (src / "kept" / "added").write_text("added")
    os.chown(src / "kept" / "added", 1234, 5678)
    os.chmod(src / "kept" / "added", 0o600)
    os.setxattr(src / "kept" / "added", "user.tag", b"x")
    os.symlink("added", src / "kept" / "link")
    (src / "abs-link").unlink()   # the image's link replaced by a directory: extraction must not follow the link
    (src / "abs-link").mkdir()
    (src / "abs-link" / "inside").write_text("inside")
    subprocess.run(["umount", str(src)], check=True)
    archive = tmp_path / "layer.tar"
    rootfs.save(tmp_path / "src-upper", archive)

    expected = overlays(lower, "expected")
    (tmp_path / "expected-upper").rmdir()   # remount over the source's own upper dir: the reference
    subprocess.run(["umount", str(expected)], check=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={tmp_path / 'src-upper'},workdir={tmp_path / 'expected-work'}",
                    str(expected)], check=True)

    dst = overlays(lower, "dst")   # Docker's fresh container on the destination, mounted at start
    rootfs.apply_to_mounted(dst, archive)

    assert _listing(dst) == _listing(expected)
    assert os.getxattr(dst / "kept" / "added", "user.tag") == b"x"
    assert not (dst / "replaced" / "old").exists() and not (dst / "deleted").exists()
    assert list((tmp_path / "outside").iterdir()) == [], "a file was written through the image's symlink"


def test_a_deletion_through_a_symlink_is_refused(tmp_path, overlays):
    lower = tmp_path / "lower"
    lower.mkdir()
    os.symlink(str(tmp_path / "outside"), lower / "escape")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious").write_text("host file")
    upper = tmp_path / "evil"
    (upper / "escape").mkdir(parents=True)
    os.mknod(upper / "escape" / "precious", 0o600 | 0o020000, os.makedev(0, 0))   # a whiteout under the link
    archive = tmp_path / "evil.tar"
    rootfs.save(upper, archive)
    dst = overlays(lower, "dst")
    (tmp_path / "dst-upper").chmod(0o755)
    with pytest.raises(RestoreError):
        rootfs.apply_to_mounted(dst, archive)
    assert (tmp_path / "outside" / "precious").read_text() == "host file"


def test_directories_only_land_as_if_the_saved_upper_dir_were_mounted(tmp_path, overlays):
    lower = tmp_path / "lower"
    (lower / "tmp").mkdir(parents=True, mode=0o755)
    src = overlays(lower, "src")
    os.chmod(src / "tmp", 0o1777)   # a mount point runc made, say: copied up with its new mode
    (src / "run" / "app").mkdir(parents=True)
    os.chown(src / "run" / "app", 1234, 5678)
    subprocess.run(["umount", str(src)], check=True)
    archive = tmp_path / "layer.tar"
    rootfs.save(tmp_path / "src-upper", archive)
    expected = _mount(tmp_path, lower, "expected")
    subprocess.run(["umount", str(expected)], check=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={tmp_path / 'src-upper'},workdir={tmp_path / 'expected-work'}",
                    str(expected)], check=True)
    try:
        dst = overlays(lower, "dst")
        rootfs.apply_to_mounted(dst, archive)
        assert _listing(dst) == _listing(expected)
        assert [os.stat(p).st_mtime for p in (dst / "run", dst / "tmp")] == \
            [os.stat(p).st_mtime for p in (expected / "run", expected / "tmp")]
    finally:
        subprocess.run(["umount", str(expected)], check=False)
