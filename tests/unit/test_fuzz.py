"""Fuzzing, with a fixed budget and a fixed seed (CI stays deterministic): the control-message parser and the
archive extractor never crash on hostile input and never write outside their targets."""
from __future__ import annotations

import io
import os
import struct
import tarfile
from pathlib import Path

import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrate.errors import MigrationError
from transport import framing, streams

BUDGET = settings(max_examples=1500, derandomize=True, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@BUDGET
@given(st.binary(max_size=4096))
def test_frame_parser_takes_any_bytes_without_crashing(data):
    stream = io.BytesIO(data)
    while True:
        try:
            kind, payload = framing.read_frame(stream)
        except (EOFError, framing.ProtocolError):
            return
        assert kind in (framing.JSON, framing.DATA) and len(payload) <= framing.MAX_FRAME
        if kind == framing.JSON:
            try:
                message = framing.decode(payload)
            except framing.ProtocolError:
                continue
            assert isinstance(message, dict) and isinstance(message["type"], str)


@BUDGET
@given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from([b"J", b"D", b"X", b"\0"]))
def test_frame_parser_refuses_huge_or_unknown_frames_before_reading_them(size, kind):
    stream = io.BytesIO(struct.pack(">cI", kind, size))
    try:
        framing.read_frame(stream)
    except framing.ProtocolError:
        assert kind not in (b"J", b"D") or size > framing.MAX_FRAME
    except EOFError:
        assert kind in (b"J", b"D") and size <= framing.MAX_FRAME and size > 0


NAMES = st.sampled_from(["images/a", "images/b", "images/d", "images/d/x", "images/link", "images/link/evil",
                         "images/../escape", "/etc/evil", "images/./a", "vol0/v", "other/z", "images",
                         "images/d/../../escape", "images//a", ""])
MEMBER = st.tuples(NAMES, st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "chardev"]),
                   st.sampled_from(["../../outside", "/tmp", "a", "d", "/", "images/a"]),
                   st.binary(max_size=64))


def _archive(members) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, target, data in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE}[kind]
            info.linkname = target if kind in ("symlink", "hardlink") else ""
            tar.addfile(info)
    frames = io.BytesIO()
    framing.write_frame(frames, framing.DATA, zstandard.ZstdCompressor().compress(raw.getvalue()))
    framing.send(frames, {"type": "end", "manifest": {}})
    return frames.getvalue()


def _everything_under(root: Path) -> list[Path]:
    return [Path(d) / f for d, dirs, files in os.walk(root) for f in dirs + files]


@BUDGET
@given(st.lists(MEMBER, max_size=8))
def test_extractor_never_writes_outside_its_targets(tmp_path_factory, members):
    base = tmp_path_factory.mktemp("x")
    targets = {"images": base / "t" / "images", "vol0": base / "t" / "vol0"}
    for t in targets.values():
        t.mkdir(parents=True)
    outside = base / "outside"
    outside.mkdir()
    reader = streams.FrameReader(io.BytesIO(_archive(members)))
    try:
        streams.receive_tree(reader, targets)
    except MigrationError:
        pass   # refused: fine, as long as nothing escaped
    assert not any(outside.iterdir()), "something was written outside the targets"
    assert sorted(p.name for p in base.iterdir()) == ["outside", "t"]
    for path in _everything_under(base / "t"):
        assert not (path.is_char_device() or path.is_block_device() or path.is_fifo()), path
        if path.is_symlink():
            continue
        assert path.resolve().is_relative_to(base / "t"), path


# ---------------------------------------------------------------- the writable layer, put in through the overlay
_PARTS = st.sampled_from(["var", "run", "etc", "x", ".wh.x", "d"])
_LAYER_MEMBERS = st.lists(st.tuples(st.lists(_PARTS, min_size=1, max_size=3).map("/".join),
                                    st.sampled_from(["file", "dir", "symlink-out", "whiteout"])),
                          min_size=1, max_size=8)


def _layer_archive(path: Path, members) -> None:
    with tarfile.open(path, "w") as tf:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            elif kind == "symlink-out":
                info.type, info.linkname = tarfile.SYMTYPE, "/outside"
                tf.addfile(info)
            elif kind == "whiteout":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 0, 0
                tf.addfile(info)
            else:
                tf.addfile(info, io.BytesIO(b""))


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_LAYER_MEMBERS)
def test_the_writable_layer_never_lands_outside_the_container(tmp_path_factory, members):
    """The merged view has the image's var/run -> (an absolute path outside); GNU tar runs as root into it.
    Whatever the archive holds, nothing may appear outside, and a refusal is a RestoreError."""
    from agents import rootfs
    base = tmp_path_factory.mktemp("layer")
    outside, merged = base / "outside", base / "merged"
    outside.mkdir()
    (merged / "var").mkdir(parents=True)
    (merged / "var" / "run").symlink_to(outside)
    (merged / "etc").mkdir()
    archive = base / "rootfs.tar"
    _layer_archive(archive, members)
    try:
        rootfs.apply_to_mounted(merged, archive)
    except MigrationError:
        pass
    assert list(outside.iterdir()) == [], f"{members} wrote {list(outside.iterdir())} outside the container"
