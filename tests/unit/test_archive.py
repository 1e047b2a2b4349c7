"""Checkpoint files (transport/archive.py): the manifest comes first and is enough to judge a file; every file in
it is verified before an import may use it; a file changed during the export fails it; memory stays flat."""
from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from migrate.errors import MigrationError
from transport import archive, streams


def _tree(tmp_path):
    src = tmp_path / "cp"
    (src / "cmigrate").mkdir(parents=True)
    (src / "pages-1.img").write_bytes(random.Random(1).randbytes(300_000))
    (src / "cmigrate" / "meta.json").write_text('{"name": "c1"}')
    (src / "link").symlink_to("pages-1.img")
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "data").write_text("volume data")
    return [streams.Source(src, "checkpoint"), streams.Source(vol, "volumes/0")]


def _export(sources) -> bytes:
    out = io.BytesIO()
    manifest = {"checkpoint": "c1", "container": {"name": "cr"}, "members": archive.digests(sources)}
    archive.write(out, manifest, sources)
    return out.getvalue()


def _import(data: bytes, tmp_path):
    targets = {"checkpoint": tmp_path / "in" / "checkpoint", "volumes": tmp_path / "in" / "volumes"}
    for t in targets.values():
        t.mkdir(parents=True)
    with archive.Reader(io.BytesIO(data)) as r:
        r.extract(targets)
        return r.manifest, targets


def test_a_file_comes_back_whole_with_its_manifest_first(tmp_path):
    sources = _tree(tmp_path)
    data = _export(sources)
    with tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompressobj().decompress(data)),
                      mode="r:") as tar:
        assert tar.getnames()[0] == "manifest.json"
    manifest, targets = _import(data, tmp_path)
    assert manifest["checkpoint"] == "c1" and manifest["format"] == archive.FORMAT
    assert set(manifest["members"]) == {"checkpoint/pages-1.img", "checkpoint/cmigrate/meta.json",
                                        "volumes/0/data"}
    assert (targets["checkpoint"] / "pages-1.img").read_bytes() == (sources[0].path / "pages-1.img").read_bytes()
    assert (targets["checkpoint"] / "link").readlink().name == "pages-1.img"
    assert (targets["volumes"] / "0" / "data").read_text() == "volume data"


def test_the_manifest_is_read_without_the_rest(tmp_path):
    data = _export(_tree(tmp_path))
    f = tmp_path / "c1.ckpt"
    f.write_bytes(data[:200_000])   # two thirds of it: the manifest is read from its beginning alone
    assert archive.read_manifest(f)["container"] == {"name": "cr"}


@pytest.mark.parametrize("offset", [0.5, 0.8])
def test_a_corrupted_file_fails_verification(tmp_path, offset):
    data = bytearray(_export(_tree(tmp_path)))
    data[int(len(data) * offset)] ^= 0xFF
    with pytest.raises(MigrationError):
        _import(bytes(data), tmp_path)


def test_a_file_changed_during_the_export_fails_it(tmp_path):
    sources = _tree(tmp_path)
    manifest = {"checkpoint": "c1", "container": {"name": "cr"}, "members": archive.digests(sources)}
    (sources[1].path / "data").write_text("written since")
    with pytest.raises(MigrationError, match="changed while it was exported"):
        archive.write(io.BytesIO(), manifest, sources)


def test_a_listed_file_missing_from_the_file_fails(tmp_path):
    sources = _tree(tmp_path)
    out = io.BytesIO()
    members = archive.digests(sources) | {"checkpoint/extra.img": {"size": 1, "sha256": "0" * 64}}
    with pytest.raises(MigrationError, match="went away"):
        archive.write(out, {"checkpoint": "c1", "members": members}, sources)


def test_a_file_that_is_no_checkpoint_is_refused_in_one_line(tmp_path):
    other = tmp_path / "other.tar.zst"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("etc/passwd")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"root"))
    other.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    with pytest.raises(MigrationError, match="does not begin with its manifest"):
        archive.read_manifest(other)
    (tmp_path / "text").write_text("hello")
    with pytest.raises(MigrationError, match="not a cmigrate checkpoint file"):
        archive.read_manifest(tmp_path / "text")


def test_members_outside_the_targets_are_refused(tmp_path):
    raw = io.BytesIO()
    manifest = json.dumps({"format": archive.FORMAT, "format_version": archive.FORMAT_VERSION,
                           "members": {}}).encode()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in (("manifest.json", manifest), ("../escape", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(MigrationError, match="absolute or '..'"):
        _import(zstandard.ZstdCompressor().compress(raw.getvalue()), tmp_path)
    assert not (tmp_path / "in" / "escape").exists() and not (tmp_path / "escape").exists()


def test_memory_stays_flat_with_the_file_size(tmp_path):
    # a 96 MiB checkpoint exported and imported in a child process: its peak RSS grows by far less than that
    big = tmp_path / "cp"
    big.mkdir()
    with open(big / "pages-1.img", "wb") as f:
        for i in range(96):
            f.write(random.Random(i).randbytes(1 << 20))
    script = f"""
import io, resource, sys
from pathlib import Path
from transport import archive, streams
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
src = [streams.Source(Path({str(big)!r}), "checkpoint")]
with open({str(tmp_path / 'f')!r}, "wb") as out:
    archive.write(out, {{"members": archive.digests(src)}}, src)
dest = Path({str(tmp_path / 'in')!r}); dest.mkdir()
with open({str(tmp_path / 'f')!r}, "rb") as f, archive.Reader(f) as r:
    r.extract({{"checkpoint": dest}})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""
    grown_kib = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                   cwd=str(Path(__file__).parents[2])).stdout)
    assert grown_kib < 48 * 1024, f"peak RSS grew {grown_kib} KiB for a 96 MiB checkpoint"
    assert (tmp_path / "in" / "pages-1.img").stat().st_size == 96 << 20


def _oci(sources, tmp_path, engine: str = archive.ENGINE) -> bytes:
    out = io.BytesIO()
    manifest = {"checkpoint": "c1", "container": {"name": "cr"}, "members": archive.digests(sources),
                "created": 0}
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    archive.write_oci(out, manifest, sources, scratch, "checkpoint-cr:c1",
                      {archive.ENGINE_ANNOTATION: engine, "org.criu.checkpoint.container.name": "cr"}, "amd64")
    return out.getvalue()


def test_an_oci_image_of_a_checkpoint_is_consistent_and_imports(tmp_path):
    import hashlib
    data = _oci(_tree(tmp_path), tmp_path)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        blobs = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}
    digest = lambda b: "sha256:" + hashlib.sha256(b).hexdigest()  # noqa: E731
    index = json.loads(blobs["index.json"])
    manifest = json.loads(blobs["blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]])
    assert digest(blobs["blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]]) == \
        index["manifests"][0]["digest"]
    assert manifest["annotations"]["org.criu.checkpoint.container.name"] == "cr"
    config = blobs["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]]
    layer = blobs["blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]]
    assert digest(config) == manifest["config"]["digest"] and digest(layer) == manifest["layers"][0]["digest"]
    assert json.loads(config)["rootfs"]["diff_ids"] == [digest(layer)]
    assert json.loads(config)["config"]["Labels"]["org.criu.checkpoint.container.name"] == "cr"
    legacy = json.loads(blobs["manifest.json"])   # docker save's, for docker load before Docker 25
    assert legacy == [{"Config": "blobs/sha256/" + digest(config)[7:], "RepoTags": ["checkpoint-cr:c1"],
                       "Layers": ["blobs/sha256/" + digest(layer)[7:]]}]
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        assert inner.getnames()[0] == "manifest.json" and "checkpoint/pages-1.img" in inner.getnames()
    got, targets = _import(data, tmp_path)
    assert got["checkpoint"] == "c1" and (targets["volumes"] / "0" / "data").read_text() == "volume data"


def test_an_oci_image_of_something_else_is_refused(tmp_path):
    with pytest.raises(MigrationError, match="not of a cmigrate checkpoint"):
        _import(_oci(_tree(tmp_path), tmp_path, engine="podman"), tmp_path)
