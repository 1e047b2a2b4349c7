"""Compressed, checksummed streams of files: a tar of directories -> zstd -> data frames, and back.

The sender reads each file once, hashing it as it goes, and ends with a manifest (path -> size, sha256). The
receiver extracts as bytes arrive, hashing what it writes, and verifies everything against the manifest before
anyone may use the files. Memory stays bounded: nothing is buffered beyond one chunk and zstd's window.

Extraction refuses absolute paths, ``..``, writing through symlinks, hard links outside the archive, and device
files; it writes nothing outside its targets.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import zstandard

from transport.errors import TransportError
from transport import framing

CHUNK = 1 << 20


class FrameWriter:
    """A write-only file that sends what it is given as DATA frames of up to CHUNK bytes."""

    def __init__(self, stream: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.sent = 0
        self.on_bytes = on_bytes

    def write(self, data) -> int:
        self.buf.extend(data)
        while len(self.buf) >= CHUNK:
            self._send(bytes(self.buf[:CHUNK]))
            del self.buf[:CHUNK]
        return len(data)

    def _send(self, chunk: bytes) -> None:
        framing.write_frame(self.stream, framing.DATA, chunk)
        self.sent += len(chunk)
        if self.on_bytes:
            self.on_bytes(len(chunk))

    def flush(self) -> None:
        if self.buf:
            self._send(bytes(self.buf))
            self.buf.clear()
        self.stream.flush()

    def close(self) -> None:
        self.flush()


class FrameReader:
    """A read-only file over DATA frames; ends at the first control message, kept in ``end``."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.buf = b""
        self.end: dict | None = None
        self.received = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self.buf and self.end is None:
            kind, payload = framing.read_frame(self.stream)
            if kind == framing.DATA:
                self.buf = payload
                self.received += len(payload)
            else:
                self.end = framing.decode(payload)
        if n < 0 or n >= len(self.buf):
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def drain(self) -> dict:
        """Skip the rest of the data; return the closing control message."""
        while self.end is None:
            self.buf = b""
            self.read()
        return self.end


class _Hashing:
    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        self.n += len(data)
        return data


@dataclass
class Source:
    """A directory to send, under ``prefix`` in the archive."""

    path: Path
    prefix: str


def survey(path: Path) -> tuple[int, str | None]:
    """Bytes in the files below ``path``, and the first thing ``send_tree`` could not send (None if all can): a
    FIFO, socket or device, or a second name of a file already met (a hard link). For preflight: found after the
    freeze, it would cost a rollback."""
    total, seen = 0, set()
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        return total, f"{full} is a hard link to another file there"
                    seen.add((st.st_dev, st.st_ino))
            elif not (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                kind = "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "device"
                return total, f"{full} is a {kind}"
    return total, None


ZSTD_JOB = 1 << 20   # bytes per job of multi-threaded zstd


def compressor(level: int = 3, threads: int = -1) -> zstandard.ZstdCompressor:
    """zstd at ``level`` on ``threads`` workers (-1: one per CPU), its jobs ``ZSTD_JOB`` bytes each. zstd's own
    jobs at level 3 are 8 MiB, and its buffers for two workers grew an agent's peak RSS by 45 MiB (1 MiB jobs:
    14 MiB, at the same speed here): a container of 200 processes had the source agent at 72 MiB, over its
    64 MiB goal."""
    if threads == 0:
        return zstandard.ZstdCompressor(level=level)
    params = zstandard.ZstdCompressionParameters.from_level(level, threads=threads, job_size=ZSTD_JOB)
    return zstandard.ZstdCompressor(compression_params=params)


def send_tree(sources: list[Source], out: IO[bytes], *, level: int = 3, threads: int = -1,
              on_raw: Callable[[int], None] | None = None, on_wire: Callable[[int], None] | None = None) -> dict:
    """Stream ``sources`` as tar -> zstd -> DATA frames on ``out``. Returns the manifest and byte counts."""
    manifest: dict[str, dict] = {}
    writer = FrameWriter(out, on_wire)
    cctx = compressor(level, threads)
    raw = 0
    with cctx.stream_writer(writer, closefd=False) as z:
        with tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for full, arcname in walk(sources):
                entry = add_member(tar, full, arcname)
                if entry is not None:
                    manifest[arcname] = entry
                    raw += entry["size"]
                    if on_raw:
                        on_raw(entry["size"])
    writer.flush()
    return {"manifest": manifest, "raw_bytes": raw, "wire_bytes": writer.sent}


def walk(sources: list[Source]):
    """(path, archive name) of everything below each source, in a stable order: parents before children."""
    for src in sources:
        for root, dirs, files in os.walk(src.path):
            dirs.sort()
            rel_root = Path(root).relative_to(src.path)
            for name in sorted(dirs) + sorted(files):
                yield Path(root) / name, str(PurePosixPath(src.prefix) / rel_root / name)


def add_member(tar: tarfile.TarFile, full: Path, arcname: str) -> dict | None:
    """Put ``full`` in ``tar`` as ``arcname``; for a regular file, its size and sha256 as read."""
    info = tar.gettarinfo(str(full), arcname)
    if info.isreg():
        with open(full, "rb") as f:
            hf = _Hashing(f)
            tar.addfile(info, hf)
        if hf.n != info.size:
            raise TransportError(f"{full} changed size while being sent")
        return {"size": info.size, "sha256": hf.h.hexdigest()}
    if info.isdir() or info.issym():
        tar.addfile(info)
        return None
    raise TransportError(f"cannot send {full}: not a regular file, directory or symlink")


def file_digest(file: Path | IO[bytes]) -> dict:
    """A regular file's (a path, or an open file read to its end) size and sha256, read in chunks."""
    if isinstance(file, Path):
        with open(file, "rb") as f:
            return file_digest(f)
    h, n = hashlib.sha256(), 0
    while chunk := file.read(CHUNK):
        h.update(chunk)
        n += len(chunk)
    return {"size": n, "sha256": h.hexdigest()}


def _safe_target(targets: dict[str, Path], name: str) -> Path:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise TransportError(f"refusing archive member {name!r}: absolute or '..' path")
    prefix = p.parts[0]
    if prefix not in targets:
        raise TransportError(f"refusing archive member {name!r}: outside the expected directories")
    base = targets[prefix]
    dest = base.joinpath(*p.parts[1:])
    # never write through a symlink: every existing component below the base must be a real directory
    cur = base
    for part in p.parts[1:-1]:
        cur = cur / part
        if cur.is_symlink():
            raise TransportError(f"refusing archive member {name!r}: it would write through a symlink")
    return dest


def receive_tree(reader: FrameReader, targets: dict[str, Path]) -> dict:
    """Extract a stream from ``send_tree`` into ``targets`` (archive prefix -> directory). Returns what was
    written: path -> (size, sha256). The caller verifies it against the sender's manifest."""
    written: dict[str, dict] = {}
    dctx = zstandard.ZstdDecompressor()
    with dctx.stream_reader(reader, closefd=False) as z:
        try:
            tar = tarfile.open(fileobj=z, mode="r|")
        except tarfile.ReadError as exc:
            raise TransportError(f"the stream is not a valid archive: {exc}") from exc
        with tar:
            extract_members(tar, tar, targets, written)
    return written


def extract_members(tar: tarfile.TarFile, members, targets: dict[str, Path], written: dict[str, dict]) -> None:
    """Extract ``members`` of ``tar`` into ``targets`` (archive prefix -> directory), safely (see above), adding
    path -> (size, sha256) of each regular file to ``written``."""
    for member in members:
        dest = _safe_target(targets, member.name)
        if dest in targets.values() and not member.isdir():
            raise TransportError(f"refusing archive member {member.name!r}: it would replace a target")
        try:
            _extract(tar, member, dest, written)
        except OSError as exc:
            raise TransportError(f"cannot extract archive member {member.name!r}: {exc}") from exc


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, written: dict[str, dict]) -> None:
    if member.isdir():
        if dest.is_symlink():
            raise TransportError(f"refusing archive member {member.name!r}: a symlink is in the way")
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(dest, member.mode & 0o7777)
    elif member.issym():
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            raise TransportError(f"refusing archive member {member.name!r}: already exists")
        os.symlink(member.linkname, dest)
    elif member.isreg():
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        src = tar.extractfile(member)
        h = hashlib.sha256()
        n = 0
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                n += len(chunk)
                f.write(chunk)
        os.chmod(dest, member.mode & 0o7777)
        written[member.name] = {"size": n, "sha256": h.hexdigest()}
    else:
        kind = "hard link" if member.islnk() else "device or special file"
        raise TransportError(f"refusing archive member {member.name!r}: {kind}")
    try:
        os.chown(dest, member.uid, member.gid, follow_symlinks=False)
        if not member.issym():
            os.utime(dest, (member.mtime, member.mtime))
    except OSError:
        pass


def verify(manifest: dict[str, dict], written: dict[str, dict]) -> None:
    """Every file the sender listed arrived whole and unchanged, and nothing else did."""
    missing = sorted(set(manifest) - set(written))
    extra = sorted(set(written) - set(manifest))
    bad = sorted(k for k in set(manifest) & set(written) if manifest[k] != written[k])
    if missing or extra or bad:
        what = (f"{len(missing)} missing" if missing else "") or (f"{len(bad)} corrupted" if bad else "") \
            or f"{len(extra)} unexpected"
        example = (missing or bad or extra)[0]
        raise TransportError(f"the transferred files failed verification: {what} (e.g. {example})")
