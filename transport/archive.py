"""A checkpoint as one file (``cmigrate checkpoint export`` / ``import``): a zstd-compressed tar whose first member,
``manifest.json``, says what the rest is and holds the size and sha256 of every other file in it.

The writer hashes every file before it writes the manifest, then streams the files, hashing them again: a file that
changed in between fails the export. The reader takes the manifest first (so a host can refuse a checkpoint it
cannot restore before the rest arrives), extracts the rest as it streams in, with ``streams``' safety rules, and
verifies everything against the manifest before anyone may use it. Neither holds more than a chunk in memory.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path
from typing import IO

import zstandard

from transport import streams
from transport.errors import TransportError

FORMAT = "cmigrate-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_LIMIT = 16 << 20   # a manifest is JSON about files, never their content


def digests(sources: list[streams.Source]) -> dict[str, dict]:
    """archive name -> size and sha256 of each regular file below ``sources``; TransportError for what a tar of
    ours cannot carry (a FIFO, socket or device)."""
    found = {}
    for full, arcname in streams.walk(sources):
        if full.is_symlink() or full.is_dir():
            continue
        if not full.is_file():
            raise TransportError(f"cannot export {full}: not a regular file, directory or symlink")
        found[arcname] = streams.file_digest(full)
    return found


def write(out: IO[bytes], manifest: dict, sources: list[streams.Source], *, level: int = 3,
          threads: int = -1) -> int:
    """Write the archive to ``out``: ``manifest`` (with ``members`` from ``digests(sources)``), then the files.
    Returns the bytes of files written (before compression)."""
    cctx = streams.compressor(level, threads)
    with cctx.stream_writer(out, closefd=False) as z:
        with tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            return _write_members(tar, manifest, sources)


def _write_members(tar: tarfile.TarFile, manifest: dict, sources: list[streams.Source]) -> int:
    members = manifest["members"]
    _add_bytes(tar, MANIFEST, json.dumps(manifest | {"format": FORMAT, "format_version": FORMAT_VERSION},
                                         indent=1).encode())
    raw = 0
    for full, arcname in streams.walk(sources):
        entry = streams.add_member(tar, full, arcname)
        if entry is None:
            continue
        if members.get(arcname) != entry:
            raise TransportError(f"{full} changed while it was exported: export again (the container's "
                                 "volumes must not be written meanwhile)")
        raw += entry["size"]
    if raw != sum(m["size"] for m in members.values()):
        raise TransportError("files went away while they were exported: export again")
    return raw


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------- the same as an OCI image
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ENGINE_ANNOTATION = "org.criu.checkpoint.engine.name"
ENGINE = "cmigrate"


def write_oci(out: IO[bytes], manifest: dict, sources: list[streams.Source], scratch: Path, ref: str,
              annotations: dict[str, str], arch: str) -> int:
    """The checkpoint file as an OCI image ``ref`` that ``docker load`` takes: one uncompressed layer holding the
    file's members (its manifest first, CRIU's images under ``checkpoint/`` as CRI-O and Podman lay them out),
    ``annotations`` (``org.criu.checkpoint.*``, checkpointctl's names) on the manifest and as the config's
    labels, and ``docker save``'s ``manifest.json`` beside the OCI layout for Docker before 25. The layer is
    built in ``scratch`` first: its digest heads the stream. Returns the bytes of files written."""
    layer = scratch / "layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        raw = _write_members(tar, manifest, sources)
    layer_digest = streams.file_digest(layer)
    config = _json({"architecture": arch, "os": "linux", "created": _rfc3339(manifest.get("created")),
                    "config": {"Labels": annotations},
                    "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest['sha256']}"]}})
    oci_manifest = _json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": {"mediaType": OCI_CONFIG, **_descriptor(config)},
                          "layers": [{"mediaType": OCI_LAYER, "digest": f"sha256:{layer_digest['sha256']}",
                                      "size": layer_digest["size"]}],
                          "annotations": annotations})
    index = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, **_descriptor(oci_manifest),
         "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]}}]})
    blob = lambda data: "blobs/sha256/" + hashlib.sha256(data).hexdigest()  # noqa: E731
    legacy = _json([{"Config": blob(config), "RepoTags": [ref], "Layers": [f"blobs/sha256/{layer_digest['sha256']}"]}])
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        for name, data in (("index.json", index), ("manifest.json", legacy), (blob(oci_manifest), oci_manifest),
                           (blob(config), config)):
            _add_bytes(tar, name, data)
        tar.add(str(layer), f"blobs/sha256/{layer_digest['sha256']}")
    return raw


def _json(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _descriptor(data: bytes) -> dict:
    return {"digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def _rfc3339(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch or time.time()))


class Reader:
    """An archive being read from ``stream`` (a file, or data frames): ``manifest`` at once, then ``extract``."""

    def __init__(self, stream: IO[bytes]) -> None:
        head = _read_head(stream, len(ZSTD_MAGIC))
        source = _Prefixed(head, stream)
        self._z = self._outer = None
        try:
            if head == ZSTD_MAGIC:   # a checkpoint file
                self._z = zstandard.ZstdDecompressor().stream_reader(source, closefd=False)
                self._tar = tarfile.open(fileobj=self._z, mode="r|")
            else:                    # an OCI image of one (write_oci)
                self._outer = tarfile.open(fileobj=source, mode="r|")
                self._tar = self._checkpoint_layer()
            first = self._tar.next()
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
            if head == ZSTD_MAGIC:
                raise TransportError(f"the checkpoint file is damaged at its beginning: {exc}") from exc
            raise TransportError(f"not a cmigrate checkpoint file: {exc}") from exc
        if first is None or first.name != MANIFEST or not first.isreg() or first.size > MANIFEST_LIMIT:
            raise TransportError("not a cmigrate checkpoint file: it does not begin with its manifest")
        try:
            self.manifest = json.loads(self._tar.extractfile(first).read())
        except ValueError as exc:
            raise TransportError(f"the checkpoint file's manifest is not JSON: {exc}") from exc
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise TransportError("not a cmigrate checkpoint file: its manifest names another format")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise TransportError(f"checkpoint file format {self.manifest.get('format_version')} is not "
                                 f"{FORMAT_VERSION}, which this cmigrate reads", hint="use the cmigrate that wrote it")
        if not isinstance(self.manifest.get("members"), dict):
            raise TransportError("the checkpoint file's manifest lists no members")

    def extract(self, targets: dict[str, Path], skip: frozenset[str] = frozenset()) -> None:
        """Extract the rest into ``targets`` (archive prefix -> directory) and verify it against the manifest:
        TransportError, naming a file, for anything missing, corrupted or unlisted. Files under the prefixes in
        ``skip`` are read and verified, not written."""
        written: dict[str, dict] = {}
        try:
            for member in iter(self._tar.next, None):
                if member.name.split("/", 1)[0] in skip:
                    if member.isreg():
                        written[member.name] = streams.file_digest(self._tar.extractfile(member))
                    continue
                streams.extract_members(self._tar, [member], targets, written)
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
            raise TransportError(f"the checkpoint file is damaged: {exc}") from exc
        streams.verify(self.manifest["members"], written)

    def _checkpoint_layer(self) -> tarfile.TarFile:
        """In an OCI image from ``write_oci``: its index, then its manifest (a cmigrate checkpoint's, by its
        annotations), then the layer it names, opened as the tar it is."""
        index = manifest = None
        for member in iter(self._outer.next, None):
            if member.name == "index.json" and member.isreg():
                index = self._small_json(member)
            elif member.name.startswith("blobs/sha256/") and member.isreg() and index is not None:
                digest = "sha256:" + member.name.rsplit("/", 1)[1]
                if manifest is None and digest == (index.get("manifests") or [{}])[0].get("digest"):
                    manifest = self._small_json(member)
                    if (manifest.get("annotations") or {}).get(ENGINE_ANNOTATION) != ENGINE:
                        raise TransportError("an OCI image, but not of a cmigrate checkpoint")
                elif manifest is not None and digest == (manifest.get("layers") or [{}])[0].get("digest"):
                    return tarfile.open(fileobj=self._outer.extractfile(member), mode="r|")
        raise TransportError("not a cmigrate checkpoint file, nor an image of one")

    def _small_json(self, member: tarfile.TarInfo):
        if member.size > MANIFEST_LIMIT:
            raise TransportError(f"not a cmigrate checkpoint image: {member.name} is too large")
        try:
            return json.loads(self._outer.extractfile(member).read())
        except ValueError as exc:
            raise TransportError(f"not a cmigrate checkpoint image: {member.name} is not JSON") from exc

    def close(self) -> None:
        self._tar.close()
        for f in (self._outer, self._z):
            if f is not None:
                f.close()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _read_head(stream: IO[bytes], n: int) -> bytes:
    head = b""
    while len(head) < n and (chunk := stream.read(n - len(head))):
        head += chunk
    return head


class _Prefixed:
    """``stream`` with ``head``, read from it already, in front again."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self.head, self.stream = head, stream

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out = self.head if n < 0 else self.head[:n]
            self.head = self.head[len(out):]
            return out
        return self.stream.read(n)


def read_manifest(path: Path) -> dict:
    """The manifest of the checkpoint file at ``path``, read from its beginning only."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise TransportError(f"cannot read {path}: {exc.strerror}") from exc
    with f, Reader(f) as r:
        return r.manifest
