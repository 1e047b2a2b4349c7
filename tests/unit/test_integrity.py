"""A corrupted or truncated checkpoint stream is detected before anything is restored: the destination restores
only after receive_tree, the closing message and verify (agents/destination.py) have all passed."""
from __future__ import annotations

import io
import random
import tarfile

import pytest
import zstandard

from migrate.errors import MigrationError
from transport import framing, streams


def _stream(tmp_path) -> tuple[bytes, dict]:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "pages-1.img").write_bytes(random.Random(1).randbytes(300_000))   # incompressible: corruption lands in data
    (src / "sub" / "core-1.img").write_bytes(b"core" * 1000)
    out = io.BytesIO()
    sent = streams.send_tree([streams.Source(src, "images")], out)
    framing.send(out, {"type": "end", "manifest": sent["manifest"]})
    return out.getvalue(), sent["manifest"]


def _receive(data: bytes, dest) -> dict:
    """What the destination does before it may restore, in that order."""
    reader = streams.FrameReader(io.BytesIO(data))
    try:
        written = streams.receive_tree(reader, {"images": dest})
        end = reader.drain()
    except (EOFError, OSError, tarfile.TarError, zstandard.ZstdError) as exc:
        raise MigrationError(f"stream broken: {exc}") from exc
    if end.get("type") != "end":
        raise MigrationError("aborted by the sender")
    streams.verify(end["manifest"], written)
    return written


def test_an_intact_stream_verifies(tmp_path):
    data, manifest = _stream(tmp_path)
    assert set(_receive(data, tmp_path / "dst")) == set(manifest)


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7])
def test_a_flipped_byte_is_never_accepted(tmp_path, where):
    data, _ = _stream(tmp_path)
    i = int(len(data) * where)
    bad = data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:]
    with pytest.raises(MigrationError):
        _receive(bad, tmp_path / "dst")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_a_truncated_stream_is_never_accepted(tmp_path, keep):
    data, _ = _stream(tmp_path)
    with pytest.raises(MigrationError):
        _receive(data[:int(len(data) * keep)], tmp_path / "dst")


def test_a_file_that_differs_from_the_senders_manifest_fails_verification(tmp_path):
    data, manifest = _stream(tmp_path)
    reader = streams.FrameReader(io.BytesIO(data))
    written = streams.receive_tree(reader, {"images": tmp_path / "dst"})
    lying = {k: dict(v, sha256="0" * 64) if k.endswith("core-1.img") else v for k, v in manifest.items()}
    with pytest.raises(MigrationError, match="1 corrupted"):
        streams.verify(lying, written)


def test_survey_names_what_a_volume_cannot_carry(tmp_path):
    import os
    from transport.streams import survey
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "l").symlink_to("../a")
    assert survey(tmp_path) == (10, None)
    os.link(tmp_path / "a", tmp_path / "d" / "b")
    size, problem = survey(tmp_path)
    assert problem is not None and "hard link" in problem
    os.unlink(tmp_path / "d" / "b")
    os.mkfifo(tmp_path / "d" / "p")
    assert survey(tmp_path)[1].endswith("p is a FIFO")
