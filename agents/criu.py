"""The runc and CRIU calls of a migration: freeze, the dump variants, pre-dumps, and the page servers on each end.

Source: the container is frozen with ``runc pause`` and dumped with ``--leave-running``, so that it stays frozen,
whole, until the migration ends (a rollback is a thaw). Its pages go to disk, or through CRIU's page-server
protocol straight into the direct link (``freeze_dump`` with a link), or, in post-copy, stay with CRIU, which
serves them on demand (``LazyDump``). Pre-copy's ``predump`` runs while the container runs.

Destination: ``page_server`` writes the pages the dump streams into the images; ``LazyPages`` is post-copy's
``criu lazy-pages`` daemon, fetching each page the restored container touches and all the others in the background.

CRIU's options for one run go in a per-run config (``criu_env``), never the host's global one.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

from agents import link
from agents.dockerd import Docker, criu_config_for_cmigrate, criu_failure, criu_says
from agents.journal import CHECKPOINT
from migrate.errors import CheckpointError, MigrationError, RestoreError, TransportError
from migrate.hostinfo import CRIU_LAZY_PIPE_BYTES
from transport.errors import SessionLost

RUNC_TIMEOUT = 600.0   # the longest runc call is a dump of a large container: minutes at worst, never forever
SCRATCH = "criu-work"


def runc(runc_root: Path, *argv: str, env: dict | None = None, pass_fds=()) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["runc", "--root", str(runc_root), *argv], capture_output=True, text=True, env=env,
                              timeout=RUNC_TIMEOUT, pass_fds=pass_fds)
    except subprocess.TimeoutExpired as exc:   # run() has killed it
        raise CheckpointError(f"runc {argv[0]} did not end within {RUNC_TIMEOUT:.0f} s", argv=exc.cmd) from exc


def criu_env(work: Path, extra: str = "") -> dict:
    """The environment for a runc that runs CRIU for us: CRIU's options for that run alone, in the work dir."""
    conf = work / "criu.conf"
    conf.write_text(criu_config_for_cmigrate() + extra)
    return {**os.environ, "CRIU_CONFIG_FILE": str(conf)}


# CRIU options that runc's request to CRIU always sets (false unless runc is told), overriding the config file
RUNC_FLAG_OPTIONS = ("tcp-established", "file-locks")


def runc_flags(criu_extra: str) -> list[str]:
    """What of CRIU's per-run options must go to runc as flags (``RUNC_FLAG_OPTIONS``)."""
    lines = criu_extra.splitlines()
    return [f"--{option}" for option in RUNC_FLAG_OPTIONS if option in lines]


def criu_stats(path: Path) -> dict:
    """CRIU's stats-dump image: pages scanned/written, frozen and memory-dump times (microseconds)."""
    try:
        import pycriu
        with open(path, "rb") as f:
            return pycriu.images.load(f)["entries"][0]["dump"]
    except Exception:   # no stats (an older CRIU) must not fail the migration; counts are then 0
        return {}


def runc_state(runc_root: Path | None, cid: str) -> str | None:
    if runc_root is None:
        return None
    res = runc(runc_root, "state", cid)
    if res.returncode != 0:
        return None
    try:
        return json.loads(res.stdout).get("status")
    except ValueError:
        return None


def external_netns(runc_root: Path, cid: str) -> str:
    """CRIU's option that dumps the container's network namespace as external, to be joined on restore rather
    than made by CRIU: the destination makes it, endpoint and all, before the freeze (restore_gate.py), instead
    of Docker's prestart hook doing so inside the frozen time. runc dumps it empty anyway (--empty-ns network)."""
    try:
        state = json.loads((runc_root / cid / "state.json").read_text())
        own = [ns for ns in state["config"]["namespaces"] if ns["type"] == "NEWNET"]
        ino = os.stat(f"/proc/{state['init_process_pid']}/ns/net").st_ino
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot read the container's network namespace from runc: {exc}") from exc
    if not own:
        raise CheckpointError("the container has no network namespace of its own, unlike its new copy")
    if own[0].get("path"):   # a namespace given by path: runc names it to CRIU as external itself
        return ""
    return f"external net[{ino}]:extRootNetNS\n"


def lazy_pipes_problem() -> str | None:
    """CRIU's lazy page server needs a 3.3 MB pipe and does not check that it got one (it then fails on the
    first page with EBADF). None if this host allows it, else why not."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(r, link.F_SETPIPE_SZ, CRIU_LAZY_PIPE_BYTES)
        return None
    except OSError:
        return ("CRIU's lazy page server needs 3.3 MB pipes, above fs.pipe-max-size, and this root lacks "
                "CAP_SYS_RESOURCE")
    finally:
        os.close(r)
        os.close(w)


def bytes_read(pid: int) -> int:
    """What process ``pid`` has read so far (-1 if it is gone): a CRIU that reads nothing more has lost its peer."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
    except (OSError, StopIteration, ValueError):
        return -1


# ---------------------------------------------------------------- source: freeze and dump
def _freeze(runc_root: Path, cid: str, work: Path) -> tuple[Path, Path]:
    """``runc pause``, with the dump's directories made: the images and CRIU's scratch dir."""
    images, scratch = work / CHECKPOINT, work / SCRATCH
    images.mkdir(mode=0o700)
    scratch.mkdir(mode=0o700)
    res = runc(runc_root, "pause", cid)
    if res.returncode != 0:
        raise CheckpointError(f"cannot freeze the container: {res.stderr.strip()[-200:]}")
    return images, scratch


def thaw(runc_root: Path, cid: str) -> subprocess.CompletedProcess:
    return runc(runc_root, "resume", cid)


def freeze_dump(runc_root: Path, cid: str, work: Path, conn: link.Link | None, on_bytes=None,
                peer: str = "the destination", parent: str | None = None, criu_extra: str = "") -> tuple[int, int]:
    """Freeze with runc and dump with ``--leave-running``: CRIU finds the cgroup frozen and leaves it so (no
    100 ms freezer polling either). Docker's checkpoint would copy the images through containerd's content
    store twice, seconds per 100 MB, all of it frozen time. With ``conn`` the pages go into that link (CRIU's
    page server at its far end), zstd-compressed where that pays if the link was opened for framed pages
    (transport/pagecodec.py: its far end decodes them); ``parent``: pre-copy's last pre-dump. Returns the page
    bytes streamed, and those on the link. On failure the container is thawed and runs on."""
    images, scratch = _freeze(runc_root, cid, work)
    argv = ["checkpoint", "--leave-running", *runc_flags(criu_extra), "--image-path", str(images), "--work-path",
            str(scratch)]
    if parent:   # pre-copy: only what was dirtied since the last pre-dump; CRIU links images/parent to it
        argv += ["--parent-path", f"../{parent}"]
    stream = None
    try:
        if conn is not None:
            stream = link.CriuStream(conn, on_bytes=on_bytes)
            argv += ["--page-server", link.UNUSED_PAGE_SERVER]
        env = criu_env(work, criu_extra + (stream.criu.criu_config if stream is not None else ""))
        res = runc(runc_root, *argv, cid, env=env, pass_fds=(stream.criu.fd,) if stream is not None else ())
        if stream is not None:
            stream.finish(ok=res.returncode == 0)
    except BaseException:
        thaw(runc_root, cid)
        if conn is not None:
            conn.close()
        raise
    if res.returncode != 0:
        link_error = stream.error if stream is not None else None   # before our own close below sets one
        thaw(runc_root, cid)
        if conn is not None:   # the destination sees the stream end and gives up its half
            conn.close()
        raise _dump_failure(scratch / "dump.log", res.stderr.strip() or "runc checkpoint failed", link_error, peer)
    shutil.rmtree(scratch, ignore_errors=True)
    if stream is None:
        return 0, 0
    return stream.sent, stream.sent if stream.wire is None else stream.wire


def _dump_failure(log: Path, stderr: str, link_error: BaseException | None, peer: str) -> MigrationError:
    if link_error is not None:   # the cause is the link; what CRIU made of it goes in brackets
        first, excerpt = criu_says(log, stderr)
        return TransportError(f"the data link to {peer} broke during the dump ({link_error}; CRIU says: {first})",
                              detail=excerpt)
    return criu_failure(CheckpointError, "checkpoint", log, stderr)


def predump(runc_root: Path, cid: str, work: Path, n: int) -> dict:
    """Pre-copy iteration ``n`` while the container runs: the memory dirtied since ``pre-(n-1)`` (all of it the
    first time) into ``pre-N``. CRIU's own counts (pages written, frozen time) and the seconds it took."""
    images, scratch = work / f"pre-{n}", work / f"pre-{n}-work"
    images.mkdir(mode=0o700)
    scratch.mkdir(mode=0o700)
    argv = ["checkpoint", "--pre-dump", "--image-path", str(images), "--work-path", str(scratch)]
    if n > 1:
        argv += ["--parent-path", f"../pre-{n - 1}"]
    t0 = time.monotonic()
    res = runc(runc_root, *argv, cid, env=criu_env(work))
    seconds = time.monotonic() - t0
    if res.returncode != 0:
        raise criu_failure(CheckpointError, f"pre-dump {n}", scratch / "dump.log",
                           res.stderr.strip() or "runc checkpoint --pre-dump failed")
    stats = criu_stats(scratch / "stats-dump")
    shutil.rmtree(scratch, ignore_errors=True)
    return {"iteration": n, "dir": images.name, "seconds": seconds, "pages": stats.get("pages_written", 0),
            "pages_scanned": stats.get("pages_scanned", 0), "frozen_ms": stats.get("frozen_time", 0) / 1000}


class LazyDump:
    """Post-copy: the container frozen and dumped but for its memory contents, which CRIU serves to the
    destination's lazy-pages daemon through the page link, on demand and in the background, until every page has
    gone (then CRIU exits)."""

    def __init__(self, runc_root: Path, cid: str, work: Path, pages: link.Link, criu_extra: str = "") -> None:
        """Freeze and dump; returns once CRIU is ready to serve (its status fd)."""
        images, scratch = _freeze(runc_root, cid, work)
        criu = link.CriuSocket()   # CRIU serves the pages on it: no listener another process could reach
        self.pages, self.log = pages, scratch / "dump.log"
        ready_r, ready_w = os.pipe()
        self.proc = subprocess.Popen(
            ["runc", "--root", str(runc_root), "checkpoint", "--leave-running", "--lazy-pages", *runc_flags(criu_extra),
             "--page-server", link.UNUSED_PAGE_SERVER, "--status-fd", str(ready_w), "--image-path", str(images),
             "--work-path", str(scratch), cid],
            pass_fds=[ready_w, criu.fd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=criu_env(work, criu_extra + criu.criu_config))
        os.close(ready_w)
        criu.given()
        if _status(self.proc, ready_r) != b"\0":
            err = self._reap()
            thaw(runc_root, cid)
            criu.sock.close()
            raise criu_failure(CheckpointError, "post-copy checkpoint", self.log,
                               err or "runc checkpoint --lazy-pages failed")
        # CRIU now serves the pages on its end of the socketpair: join ours to the page link
        self.stream = link.CriuStream(pages, criu, far_end_closes=True)
        self.started = time.monotonic()

    def _reap(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        err = self.proc.stderr.read().decode(errors="replace").strip()
        self.proc.stderr.close()
        return err

    def wait(self, on_bytes) -> dict:
        """Until the destination has every page (CRIU's lazy dump ends); ``on_bytes`` hears of what went."""
        exited = os.pidfd_open(self.proc.pid)
        try:
            while self.proc.poll() is None:
                select.select([exited], [], [], 0.5)
                if n := self.stream.take():
                    on_bytes(n)
        finally:
            os.close(exited)
            err = self._reap()
            self.stop()
        if self.proc.returncode != 0:
            raise criu_failure(TransportError, "the post-copy page transfer", self.log,
                               err or f"exit status {self.proc.returncode}")
        return {"seconds": time.monotonic() - self.started, "page_bytes": self.stream.sent,
                "page_wire_bytes": self.stream.sent if self.stream.wire is None else self.stream.wire}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.pages.close()   # and the stream on it


def _status(proc: subprocess.Popen, ready_r: int, timeout: float = 120) -> bytes:
    """What CRIU wrote on its status fd ("\\0": ready), or nothing if it exited or took longer than ``timeout``."""
    exited = os.pidfd_open(proc.pid)
    try:
        ready, _, _ = select.select([ready_r, exited], [], [], timeout)
        return os.read(ready_r, 1) if ready_r in ready else b""
    finally:
        os.close(ready_r)
        os.close(exited)


def stop_frozen(dk: Docker, cid: str) -> None:
    """End the frozen source container without letting it run a single instruction: no restart policy, SIGKILL
    pending in every one of its processes (--all: a kill of init alone would leave the others running until the
    kernel reaps its namespace), then thaw (the kernel delivers the kills on the way out of the freezer)."""
    info = dk.inspect(cid)
    runc_root = dk.runc_root(info)
    if runc_state(runc_root, cid) != "paused" or info["State"].get("Paused"):
        return
    dk.set_restart_policy(cid, None)
    runc(runc_root, "kill", "--all", cid, "KILL")
    thaw(runc_root, cid)
    dk.wait_stopped(cid)


# ---------------------------------------------------------------- destination: the pages arrive
def page_server(conn: link.SocketReader, images: Path, cli: int | None, timeout: float | None = None) -> None:
    """The first part of the stream is CRIU's page-server protocol: ``criu page-server`` reads it straight from
    the link's socket and writes the pages into the images; it stops at the dump's last message. (Compressed
    pages were decoded into that protocol already, by the link's far end: ``attach --pages``.) ``cli``: the
    CLI's session, whose end means it is gone; ``timeout``: how long the pages may stop coming."""
    sock = conn.conn
    sock.setblocking(True)   # CRIU reads the descriptor as it is
    fd = sock.fileno()
    log = images.parent / "page-server.log"
    proc = subprocess.Popen(["criu", "page-server", "--images-dir", str(images), "--work-dir", str(images.parent),
                             "--log-file", log.name, "-v2", "--ps-socket", str(fd)],
                            pass_fds=[fd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _watch_page_server(proc, cli, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    sock.settimeout(conn.timeout)
    if proc.returncode != 0:
        raise criu_failure(RestoreError, "receiving the memory pages", log,
                           err.strip() or f"exit status {proc.returncode}", speaker="CRIU's page server")


def _watch_page_server(proc: subprocess.Popen, cli: int | None, timeout: float | None) -> None:
    exited = os.pidfd_open(proc.pid)
    read, last = -1, time.monotonic()
    try:
        while proc.poll() is None:
            # the CLI says nothing during a receive: its session ending (EOF) means it is gone
            ready, _, _ = select.select([exited] + ([cli] if cli is not None else []), [], [], 1.0)
            if cli in ready and not os.read(cli, 1):
                raise SessionLost("the CLI went away while the pages were arriving")
            # a link cut silently (no TCP reset) shows only as pages that stop coming
            now_read = bytes_read(proc.pid)
            if now_read != read:
                read, last = now_read, time.monotonic()
            elif timeout and time.monotonic() - last > timeout:
                raise TransportError(f"no memory pages arrived for {timeout:g} s: the data link is gone")
    finally:
        os.close(exited)


class LazyPages:
    """Post-copy's ``criu lazy-pages`` daemon on the page link's connection ``conn``, listening for the restore in
    ``<work>/lazy``: it fetches each page the restored container touches, and all the others in the background."""

    def __init__(self, conn: link.SocketReader, images: Path) -> None:
        sock = conn.conn
        sock.setblocking(True)
        fd = sock.fileno()
        self.dir = images.parent / "lazy"
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.proc = subprocess.Popen(["criu", "lazy-pages", "--images-dir", str(images), "--work-dir",
                                      str(self.dir), "--page-server", "--ps-socket", str(fd),
                                      "--log-file", "lazy-pages.log", "-v2"],
                                     pass_fds=[fd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.started = time.monotonic()
        conn.close()   # the daemon has its own copy of the descriptor
        deadline = time.monotonic() + 10
        while not (self.dir / "lazy-pages.socket").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RestoreError("CRIU's lazy-pages daemon did not start: "
                                   f"{self.proc.stderr.read().decode(errors='replace').strip()[-300:]}")
            time.sleep(0.005)

    def wait(self, stall: float) -> float:
        """Until the daemon has every page (it exits): the seconds since it started. A daemon that reads nothing
        more for ``stall`` seconds has lost its source: killed, TransportError."""
        seen, since = bytes_read(self.proc.pid), time.monotonic()
        while self.proc.poll() is None:
            try:
                self.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                now = bytes_read(self.proc.pid)
                if now != seen:
                    seen, since = now, time.monotonic()
                elif time.monotonic() - since > stall:
                    self.kill()
                    raise TransportError(f"no memory page arrived for {stall:g} s during post-copy: the source or "
                                         "the link is gone") from None
        err = self.proc.stderr.read().decode(errors="replace").strip()
        self.proc.stderr.close()
        if self.proc.returncode != 0:
            raise criu_failure(TransportError, "the post-copy page transfer", self.dir / "lazy-pages.log",
                               err or f"exit status {self.proc.returncode}")
        return time.monotonic() - self.started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stderr.close()
