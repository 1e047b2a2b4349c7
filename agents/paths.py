"""Directories an agent (root) may work in when a user names them (``--checkpoint-dir``, ``CMIGRATE_WORK_ROOT``).

Root follows symlinks and chmods paths there; in a directory another user can write to, that user could swap a
component for a symlink between our check and our use, and turn a checkpoint into a chmod of /etc. So the named
directory, if it exists, must be root's and writable by nobody else, and so must every directory above it, except
that a sticky one (/tmp) may be writable by all: there nobody can rename or remove what is root's. The path must
name no symlink. A directory that does not exist yet is made by the agent, 0700.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import stat
from pathlib import Path

from migrate.errors import PreflightError


def require_private_dir(path: Path, what: str) -> Path:
    """``path`` (absolute) if root may trust it as ``what``; PreflightError in one line naming the culprit."""
    if not path.is_absolute():
        raise PreflightError(f"{what} {path} is not an absolute path")
    if os.path.normpath(path) != str(path):
        raise PreflightError(f"{what} {path} is not a plain path (no '..', '.', '//')")
    current = Path("/")
    for part in (path.parts[1:] if len(path.parts) > 1 else []):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            break   # made by us, below a checked parent
        if stat.S_ISLNK(st.st_mode):
            raise PreflightError(f"{what} {path} goes through the symlink {current}",
                                 hint="name the real directory")
        if not stat.S_ISDIR(st.st_mode):
            raise PreflightError(f"{what} {path}: {current} is not a directory")
        last = current == path
        if st.st_uid != 0:
            raise PreflightError(f"{what} {path}: {current} belongs to uid {st.st_uid}, not root",
                                 hint="use a directory of root's that only root can write to")
        if st.st_mode & 0o022 and (last or not st.st_mode & stat.S_ISVTX):
            raise PreflightError(f"{what} {path}: {current} is writable by others "
                                 f"(mode {stat.S_IMODE(st.st_mode):o})",
                                 hint="use a directory of root's that only root can write to")
    return path


def replace_json(path: Path, data, mode: int, durable: bool = False) -> None:
    """Write ``path`` as JSON atomically (a temporary file beside it, renamed over it), with ``mode``. ``durable``:
    on disk before this returns (the file's data, then the rename in its directory), so that it survives a power
    cut: a migration's journal holds its commit point."""
    tmp = path.with_name(path.name + ".cmigrate-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, json.dumps(data).encode())
        os.fchmod(fd, mode)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


WORK_DIR = "cmigrate-migrations"   # under Docker's data root: same filesystem, so images move by hard link


def work_root() -> Path:
    """Where migrations keep their files on this host: ``$CMIGRATE_WORK_ROOT`` or beside Docker's own data."""
    if os.environ.get("CMIGRATE_WORK_ROOT"):
        return require_private_dir(Path(os.environ["CMIGRATE_WORK_ROOT"]), "CMIGRATE_WORK_ROOT")
    return docker_root_dir() / WORK_DIR


def docker_root_dir(timeout: float = 30.0) -> Path:
    """Docker's data root, asked over its unix socket with the standard library (``GET /info``): a data link's
    far end (``cmigrate-agent attach``) needs it and nothing else of Docker, and the SDK's import alone takes
    ~0.1 s of every link's setup. Docker elsewhere than a unix socket is asked through the SDK."""
    url = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not url.startswith("unix://"):
        from agents.dockerd import Docker
        dk = Docker()
        try:
            return dk.root_dir
        finally:
            dk.close()
    conn = http.client.HTTPConnection("docker", timeout=timeout)
    try:
        conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.sock.settimeout(timeout)
        conn.sock.connect(url.removeprefix("unix://"))
        conn.request("GET", "/info")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"Docker answered {resp.status} to /info")
        return Path(json.loads(body)["DockerRootDir"])
    except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
        raise PreflightError(f"cannot reach the Docker daemon at {url}: {exc}",
                             hint="is dockerd running? set DOCKER_HOST if it listens elsewhere") from exc
    finally:
        conn.close()
