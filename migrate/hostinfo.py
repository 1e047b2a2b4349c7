"""What a host can do for checkpointing and migration, asked of CRIU and Docker themselves."""
from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from migrate.errors import MigrationError, PreflightError
from transport.hosts import Host, LocalHost

CRIU_MIN = (4, 2)
# CRIU 4.2's lazy page server (post-copy) sizes a pipe at its PIPE_MAX_SIZE, 819 pages, without checking it got it
CRIU_LAZY_PIPE_BYTES = 819 * 4096
CRIU_INSTALL_HINT = "run ./install.sh from the cmigrate source tree: it builds CRIU 4.2.1 or newer"


@dataclass
class CriuInfo:
    """CRIU's own verdict on a host (``criu --version``, ``criu check``, ``criu check --feature``)."""

    version: str | None            # None: CRIU is not installed
    check_ok: bool = False
    check_message: str = ""
    dirty_tracking: bool = False   # soft-dirty bits: pre-copy (iterative pre-dump) can work
    uffd: bool = False             # non-cooperative userfaultfd: post-copy (lazy pages) can work

    def modes(self) -> list[str]:
        """Migration modes this host supports."""
        if not self.check_ok:
            return []
        modes = ["stop-copy"]
        if self.dirty_tracking:
            modes.append("pre-copy")
        if self.uffd:
            modes.append("post-copy")
        return modes

    def to_dict(self) -> dict:
        return asdict(self) | {"modes": self.modes()}


def docker_versions(version_answer: dict) -> dict[str, str | None]:
    """Docker's version and those of the containerd and runc it runs, from the answer of its ``/version``."""
    found = {c.get("Name", "").lower(): c.get("Version") for c in version_answer.get("Components") or []}
    return {"docker": version_answer.get("Version"), "containerd": found.get("containerd"),
            "runc": found.get("runc")}


def platform_line(versions: dict) -> str:
    """'Docker 26.1.5, containerd 1.7.24, runc 1.1.15' from ``docker_versions``."""
    return ", ".join(f"{name} {versions.get(key) or '?'}"
                     for key, name in (("docker", "Docker"), ("containerd", "containerd"), ("runc", "runc")))


def parse_version(text: str) -> tuple[int, ...] | None:
    m = re.search(r"Version:\s*(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


CHECK_CACHE = Path("/run/cmigrate/criu-check.json")   # /run: root's, and gone at the next boot anyway


def _check_key(criu: str) -> str | None:
    """What a cached verdict of CRIU on this host holds for: the binary (path and identity), the kernel, the boot.
    None where there is no such binary (nothing to cache)."""
    path = shutil.which(criu)
    if path is None:
        return None
    try:
        st = os.stat(path)
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return json.dumps([os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                       os.uname().release, os.uname().version, boot])


def criu_info(host: Host, criu: str = "criu") -> CriuInfo:
    """Ask CRIU on ``host`` for its version, its check and the kernel features that decide migration modes.
    On this host as root (the agents), a passing verdict is kept in CHECK_CACHE for the same CRIU binary, kernel
    and boot: the checks cost ~0.3 s at every migration and checkpoint, and their answer cannot change without
    one of those changing."""
    key = _check_key(criu) if isinstance(host, LocalHost) and os.geteuid() == 0 else None
    if key is not None:
        try:
            cached = json.loads(CHECK_CACHE.read_text())
            if cached.get("key") == key:
                return CriuInfo(**cached["info"])
        except (OSError, ValueError, TypeError, KeyError):
            pass
    info = _ask_criu(host, criu)
    if key is not None and info.check_ok:
        try:
            CHECK_CACHE.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = CHECK_CACHE.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": key, "info": asdict(info)}))
            os.replace(tmp, CHECK_CACHE)
        except OSError:   # no cache: the next one asks CRIU again
            pass
    return info


def _ask_criu(host: Host, criu: str) -> CriuInfo:
    try:
        res = host.run([criu, "--version"], check=False, timeout=30)
    except MigrationError:
        return CriuInfo(version=None, check_message="criu is not installed")
    version = parse_version(res.out)
    if res.status != 0 or version is None:
        return CriuInfo(version=None, check_message="criu is not installed")
    info = CriuInfo(version=".".join(map(str, version)))
    with ThreadPoolExecutor(3) as pool:   # three independent probes of the kernel: at once
        check, dirty, uffd = pool.map(lambda argv: host.run(argv, check=False, timeout=60),
                                      [[criu, "check"], [criu, "check", "--feature", "mem_dirty_track"],
                                       [criu, "check", "--feature", "uffd-noncoop"]])
    lines = [ln for ln in (check.out + check.err).splitlines() if ln.strip()]
    info.check_ok = check.status == 0
    info.check_message = "Looks good." if info.check_ok else (lines[-1] if lines else f"exit {check.status}")
    info.dirty_tracking = dirty.status == 0
    info.uffd = uffd.status == 0
    return info


def require_criu(host: Host, criu: str = "criu") -> CriuInfo:
    """CRIU must be installed, new enough for this kernel, and pass ``criu check``."""
    info = criu_info(host, criu)
    if info.version is None:
        raise PreflightError("CRIU is not installed", host=host.name, hint=CRIU_INSTALL_HINT)
    found = tuple(int(p) for p in info.version.split("."))
    if found[:2] < CRIU_MIN:
        raise PreflightError(
            f"CRIU {info.version} is too old: {'.'.join(map(str, CRIU_MIN))} or newer is needed "
            "(older releases cannot dump TCP sockets on Linux >= 6.16)", host=host.name, hint=CRIU_INSTALL_HINT)
    if not info.check_ok:
        raise PreflightError(f"'criu check' failed: {info.check_message}", host=host.name,
                             hint="the kernel lacks a feature CRIU needs; see 'criu check --all'")
    return info
