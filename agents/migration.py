"""The two ends of a migration, as agent operations.

Source (``source.*``): inspect the container, send its image, freeze and dump it, send images + writable layer +
volumes, then either remove it (after the destination runs) or resume it from the same images (rollback).
Destination (``dest.*``): preflight, receive the image, create the container before the freeze, receive and verify
the files, restore. Until the CLI says ``dest.commit``, whatever the destination made is provisional: if the
session ends first (the CLI died, the link was cut), the destination agent removes it by itself.
"""
from __future__ import annotations

import functools
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import docker.errors
import zstandard

from agents import journal as agent_journal
from agents import link, rootfs, trust
from agents.paths import require_private_dir
from agents.checkpoint import (META_DIR, GatedRestore, _criu_failure, _lock_down, _resume_after_failure, dir_size,
                               replace_json, restore_from, restore_map_files, this_host)
from agents.dockerd import FAST_RUNTIME, Docker, criu_config_for_cmigrate, criu_failure, criu_says
from migrate.errors import (CheckpointError, DockerError, DumpAborted, MigrationError, PreflightError,
                            RestoreError, RollbackError, TransportError)
from migrate.hostinfo import CRIU_LAZY_PIPE_BYTES, require_criu
from transport import framing, streams
from transport.agent import DEFAULT_IO_TIMEOUT
from transport.errors import SessionLost

WORK_DIR = "cmigrate-migrations"   # under Docker's data root: same filesystem, so images move by hard link
IMAGES = "images"          # archive prefix of the checkpoint directory
CHECKPOINT = "migration"   # Docker's name for the checkpoint inside the work dir
UNSUPPORTED_MODES = ("container:",)


@functools.cache
def work_root() -> Path:
    """Where migrations keep their files on this host: ``$CMIGRATE_WORK_ROOT`` or beside Docker's own data."""
    if os.environ.get("CMIGRATE_WORK_ROOT"):
        return require_private_dir(Path(os.environ["CMIGRATE_WORK_ROOT"]), "CMIGRATE_WORK_ROOT")
    dk = Docker()
    try:
        return dk.root_dir / WORK_DIR
    finally:
        dk.close()


def _workdir(migration_id: str, role: str, create: bool = False) -> Path:
    """``<work root>/<id>-<role>``: the role keeps the two ends apart where hosts share a disk."""
    if not migration_id.isalnum():
        raise PreflightError(f"invalid migration id {migration_id!r}")
    root = work_root()
    path = root / f"{migration_id}-{role}"
    if create:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    return path


JOURNAL = "journal.json"


def _journal(work: Path, **fields) -> None:
    """A migration's small journal on this host, replaced atomically: what ``cmigrate recover`` reads to finish
    or roll back a migration whose CLI died (the commit point: the destination's ``committed``)."""
    path = work / JOURNAL
    old = json.loads(path.read_text()) if path.exists() else {}
    replace_json(path, old | fields | {"updated": time.time()}, 0o600, durable=True)


def _read_journal(work: Path) -> dict | None:
    try:
        return json.loads((work / JOURNAL).read_text())
    except (OSError, ValueError):
        return None


def _memory_bytes(cid: str) -> int:
    for path in (f"/sys/fs/cgroup/memory/docker/{cid}/memory.usage_in_bytes",
                 f"/sys/fs/cgroup/docker/{cid}/memory.current"):
        try:
            return int(Path(path).read_text())
        except (OSError, ValueError):
            continue
    return 0


# ====================================================================== source
LOCKS = Path("/run/cmigrate/locks")
HELD: dict[str, int] = {}   # container id -> descriptor of its lock file, held by this agent until it exits


def _lock_container(cid: str, name: str) -> None:
    """One migration of a container at a time: an exclusive lock on the source, held by this agent's process
    (the kernel drops it when the agent exits, however it exits)."""
    if cid in HELD:
        return
    import fcntl
    LOCKS.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(LOCKS / cid, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip()
        os.close(fd)
        raise PreflightError(f"container {name} is already being migrated (cmigrate agent pid {holder or '?'})",
                             container=name, hint="wait for that migration to end") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    HELD[cid] = fd


def source_inspect(args: dict, ch) -> dict:
    container = args["container"]
    dk = Docker()
    try:
        info = dk.inspect_running(container)
        _lock_container(info["Id"], info["Name"].lstrip("/"))
        for journal in source_pending({"container": info["Id"]}, ch):
            raise PreflightError(f"an interrupted migration of {container} to {journal.get('destination')} is "
                                 "pending here", container=container,
                                 hint=f"run: cmigrate recover {os.environ.get('CMIGRATE_HOST') or 'HOST'} "
                                      f"{container}")
        dk.require_checkpointing()
        criu = require_criu(this_host())
        hc = info["HostConfig"]
        mode = hc.get("NetworkMode") or ""
        if mode.startswith(UNSUPPORTED_MODES) or hc.get("VolumesFrom") or hc.get("Links"):
            raise PreflightError(f"container {container} shares another container's namespace, volumes or links; "
                                 "move those together (not supported yet)", container=container)
        upper = rootfs.upper_dir(info)
        image = dk.client.images.get(info["Image"]).attrs
        volumes = []
        for m in info.get("Mounts", []):
            if m["Type"] == "volume":
                if m.get("Driver", "local") != "local":
                    raise PreflightError(f"volume {m['Name']} uses driver {m['Driver']}: only local volumes move",
                                         container=container)
                users = [c.name for c in dk.client.containers.list(all=True, filters={"volume": m["Name"]})
                         if c.id != info["Id"]]
                if users:
                    raise PreflightError(f"volume {m['Name']} is also used by container {users[0]}: it cannot move "
                                         "without it", container=container)
                size, problem = streams.survey(Path(m["Source"]))
                if problem:
                    raise PreflightError(f"volume {m['Name']} cannot be carried: {problem}", container=container,
                                         hint="only regular files, directories and symlinks move with a volume")
                volumes.append({"name": m["Name"], "destination": m["Destination"], "source": m["Source"],
                                "bytes": size})
        binds = [m["Source"] for m in info.get("Mounts", []) if m["Type"] == "bind"]
        return {
            "id": info["Id"], "name": info["Name"].lstrip("/"), "config": info["Config"], "host_config": hc,
            "networks": sorted((info.get("NetworkSettings") or {}).get("Networks") or {}),
            "image_id": info["Image"], "image_name": info["Config"]["Image"],
            "image_layers": (image.get("RootFS") or {}).get("Layers") or [],
            "image_bytes": image.get("Size", 0), "volumes": volumes, "binds": binds,
            "memory_bytes": _memory_bytes(info["Id"]), "upper_bytes": dir_size(upper),
            "criu": criu.to_dict(), "docker_version": dk.info().get("ServerVersion"), "platform": dk.versions(),
            "lazy_pipes_problem": _lazy_pipes_ok(),
            "runc_state": dk.runc_root(info) is not None,   # dumps through runc, with our CRIU options
        }
    finally:
        dk.close()


def source_send_image(args: dict, ch) -> dict:
    """``docker save`` -> zstd -> data frames."""
    dk = Docker()
    try:
        writer = streams.FrameWriter(ch.stdout)
        raw = 0
        cctx = zstandard.ZstdCompressor(level=args.get("level", 3), threads=args.get("threads", -1))
        try:
            with cctx.stream_writer(writer, closefd=False) as z:
                for chunk in dk.api.get_image(args["image"], chunk_size=streams.CHUNK):
                    z.write(chunk)
                    raw += len(chunk)
        except MigrationError:
            raise
        except Exception as exc:  # docker-py / requests errors mid-stream
            raise DockerError(f"docker save {args['image']} failed: {exc}") from exc
        writer.flush()
        return {"raw_bytes": raw, "wire_bytes": writer.sent}
    finally:
        dk.close()


def _cut_links_on_failure(op: Callable[[dict, object], dict]) -> Callable[[dict, object], dict]:
    """A dump or pre-dump that fails cuts the migration's direct links: the destination, which waits on them
    (at its gate, for images), hears of it at once rather than after its I/O timeout (124 s by default)."""
    @functools.wraps(op)
    def cutting(args: dict, ch) -> dict:
        try:
            return op(args, ch)
        except BaseException:
            for key in (args["migration_id"], args["migration_id"] + "-pages"):
                conn = LINKS.pop(key, None)
                if conn is not None:
                    conn.close()   # every pipe, and its pinned known_hosts file
            raise
    return cutting


@_cut_links_on_failure
def source_dump(args: dict, ch) -> dict:
    """Freeze and dump, then save the writable layer.

    Where runc is reachable (the usual case) the container is frozen (``runc pause``) and dumped with
    ``--leave-running``: it stays frozen, whole, until the migration ends, so a rollback is an instant thaw and
    nothing depends on the images. With ``page_link`` its memory pages go straight into the direct data link
    (CRIU's page server on the destination) instead of onto this disk. Without runc, Docker's own checkpoint
    (with exit) is used, and a rollback restores from the images.
    """
    cid = args["container_id"]
    work = _workdir(args["migration_id"], "src", create=args["migration_id"] not in PREDUMPS)
    parent = _predump_dir(args["parent"]) if args.get("parent") else None
    dk = Docker()
    try:
        info = dk.inspect(cid)
        upper = rootfs.upper_dir(info)
        name = info["Name"].lstrip("/")
        runc_root = dk.runc_root(info)
        _journal(work, role="source", migration_id=args["migration_id"], container_id=cid, name=name,
                 destination=args.get("destination"), state="frozen")
        policy = None
        page_bytes = 0
        extra = ""
        if args.get("external_netns"):   # the destination made the network namespace: CRIU must not
            if not runc_root:
                raise CheckpointError("the container's runc state is gone: it cannot be dumped as planned")
            extra = _external_netns(runc_root, cid)
        t0 = time.time()
        if runc_root and args.get("lazy"):
            pages = LINKS.get(args["migration_id"] + "-pages")
            if pages is None:
                raise TransportError("no page link was opened for this post-copy migration")
            try:
                _runc_freeze_lazy_dump(runc_root, cid, work, pages, args["migration_id"], extra)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        elif runc_root:
            conn = LINKS.get(args["migration_id"]) if args.get("page_link") else None
            if args.get("page_link") and conn is None:
                raise TransportError("no direct data link was opened for this migration")
            try:
                page_bytes = _runc_freeze_dump(runc_root, cid, work, conn, _throttled(ch),
                                               args.get("destination") or "the destination", parent, extra)
            except MigrationError as exc:   # thawed already; the destination never got the files to restore
                shutil.rmtree(work, ignore_errors=True)
                raise DumpAborted(exc.message, container=name, detail=exc.detail, hint=exc.hint) from exc
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        elif args.get("lazy") or parent:
            raise CheckpointError("post-copy and pre-copy need the container's runc state on this host (runc "
                                  "runtime)")
        else:
            # the source must not start a fresh copy when the dump stops it; rollback gives the policy back. The
            # journal has it first: whatever fails from here on (or kills this agent), it is not lost
            old = dk.inspect(cid)["HostConfig"].get("RestartPolicy") or {"Name": "no"}
            _journal(work, restart_policy=old)
            policy = dk.set_restart_policy(cid, None)
            t0 = time.time()
            try:
                dk.pause(cid)   # so that the files saved below belong to the same instant as the memory
                dk.checkpoint_create(cid, CHECKPOINT, str(work), exit=True)
                _wait_stopped(dk, cid)
            except BaseException as exc:
                _resume_after_failure(dk, info, name, work / CHECKPOINT, policy)
                shutil.rmtree(work, ignore_errors=True)
                if isinstance(exc, DockerError):
                    raise _criu_failure(CheckpointError, "checkpoint", exc, name) from exc
                raise
        t_dumped = time.time()
        images = work / CHECKPOINT
        layer = rootfs.save(upper, images / META_DIR / "rootfs.tar")
        (images / META_DIR / "meta.json").write_text(json.dumps({"container_id": cid, "rootfs": layer}))
        _lock_down(work)
        result = {"frozen_at": t0, "dump_seconds": t_dumped - t0, "layer_seconds": time.time() - t_dumped,
                  "images_bytes": dir_size(images), "restart_policy": policy, "frozen": bool(runc_root),
                  "page_bytes": page_bytes}
        if args.get("send") is not None:   # straight on over the direct link, no round trip to the CLI
            send = args["send"]
            if result["images_bytes"] < SMALL_STREAM:   # zstd's worker threads cost more than they save here
                send = send | {"threads": 0}
            result["sent"] = _send_over_link(send, ch)
        return result
    finally:
        dk.close()


SMALL_STREAM = 8 << 20
PREDUMPS: set[str] = set()   # migrations this source agent pre-dumped (pre-copy), for the clean-up at session end
PREDUMP_DIR = re.compile(r"pre-[1-9][0-9]?")


def _predump_dir(name: str) -> str:
    if not PREDUMP_DIR.fullmatch(name or ""):
        raise MigrationError(f"invalid pre-dump directory {name!r}")
    return name


@_cut_links_on_failure
def source_predump(args: dict, ch) -> dict:
    """Pre-copy, one iteration while the container runs: CRIU pre-dumps the memory dirtied since the previous
    iteration (all of it the first time) into ``pre-N``, and with ``send`` streams it over the direct link at
    once. Returns CRIU's own counts (pages written, frozen time) and the bytes and seconds it took."""
    cid, mid, n = args["container_id"], args["migration_id"], int(args["iteration"])
    if not 1 <= n <= 99:
        raise MigrationError(f"invalid pre-copy iteration {n}")
    work = _workdir(mid, "src", create=mid not in PREDUMPS and n == 1)
    PREDUMPS.add(mid)
    dk = Docker()
    try:
        runc_root = dk.runc_root(dk.inspect(cid))
    finally:
        dk.close()
    if runc_root is None:
        raise CheckpointError("pre-copy needs the container's runc state on this host (runc runtime)")
    images, scratch = work / f"pre-{n}", work / f"pre-{n}-work"
    images.mkdir(mode=0o700)
    scratch.mkdir(mode=0o700)
    argv = ["checkpoint", "--pre-dump", "--image-path", str(images), "--work-path", str(scratch)]
    if n > 1:
        argv += ["--parent-path", f"../pre-{n - 1}"]
    t0 = time.monotonic()
    res = _runc(runc_root, *argv, cid, env=_criu_env(work))
    seconds = time.monotonic() - t0
    if res.returncode != 0:
        raise criu_failure(CheckpointError, f"pre-dump {n}", scratch / "dump.log",
                           res.stderr.strip() or "runc checkpoint --pre-dump failed")
    stats = _criu_stats(scratch / "stats-dump")
    shutil.rmtree(scratch, ignore_errors=True)
    result = {"iteration": n, "dir": images.name, "seconds": seconds, "bytes": dir_size(images),
              "pages": stats.get("pages_written", 0), "pages_scanned": stats.get("pages_scanned", 0),
              "frozen_ms": stats.get("frozen_time", 0) / 1000}
    if args.get("send") is not None:
        result["sent"] = _send_over_link(args["send"] | {"dir": images.name, "migration_id": mid}, ch)
    return result


def _criu_stats(path: Path) -> dict:
    """CRIU's stats-dump image: pages scanned/written, frozen and memory-dump times (microseconds)."""
    try:
        import pycriu
        with open(path, "rb") as f:
            return pycriu.images.load(f)["entries"][0]["dump"]
    except Exception:   # no stats (an older CRIU) must not fail the migration; counts are then 0
        return {}


def _criu_env(work: Path, extra: str = "") -> dict:
    """The environment for a runc that runs CRIU for us: CRIU's options for that run alone, in the work dir."""
    conf = work / "criu.conf"
    conf.write_text(criu_config_for_cmigrate() + extra)
    return {**os.environ, "CRIU_CONFIG_FILE": str(conf)}


def _external_netns(runc_root: Path, cid: str) -> str:
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


RUNC_TIMEOUT = 600.0   # the longest runc call is a dump of a large container: minutes at worst, never forever


def _runc(runc_root: Path, *argv: str, env: dict | None = None, pass_fds=()) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["runc", "--root", str(runc_root), *argv], capture_output=True, text=True, env=env,
                              timeout=RUNC_TIMEOUT, pass_fds=pass_fds)
    except subprocess.TimeoutExpired as exc:   # run() has killed it
        raise CheckpointError(f"runc {argv[0]} did not end within {RUNC_TIMEOUT:.0f} s", argv=exc.cmd) from exc


def _throttled(ch, every: float = 0.5):
    """A byte counter that tells the CLI how much went: at once when the first bytes go, then at most every
    ``every`` seconds (also its sign of life)."""
    state = [0.0, 0]

    def count(n: int) -> None:
        state[1] += n
        if time.monotonic() - state[0] >= every:
            ch.emit({"event": "bytes", "bytes": state[1]})
            state[:] = [time.monotonic(), 0]
    return count


def _runc_freeze_dump(runc_root: Path, cid: str, work: Path, conn: link.Link | None, on_bytes=None,
                      peer: str = "the destination", parent: str | None = None, criu_extra: str = "") -> int:
    """Freeze with runc and dump with ``--leave-running``: CRIU finds the cgroup frozen and leaves it so (no
    100 ms freezer polling either). Docker's checkpoint would copy the images through containerd's content
    store twice, seconds per 100 MB, all of it frozen time. On failure the container is thawed and runs on."""
    images, scratch = work / CHECKPOINT, work / "criu-work"
    images.mkdir(mode=0o700)
    scratch.mkdir(mode=0o700)
    res = _runc(runc_root, "pause", cid)
    if res.returncode != 0:
        raise CheckpointError(f"cannot freeze the container: {res.stderr.strip()[-200:]}")
    argv = ["checkpoint", "--leave-running", "--image-path", str(images), "--work-path", str(scratch)]
    if parent:   # pre-copy: only what was dirtied since the last pre-dump; CRIU links images/parent to it
        argv += ["--parent-path", f"../{parent}"]
    relay = None
    try:
        if conn is not None:
            relay = link.PageRelay(conn, on_bytes)
            argv += ["--page-server", relay.address]
        env = _criu_env(work, criu_extra + (relay.criu.criu_config if relay is not None else ""))
        res = _runc(runc_root, *argv, cid, env=env, pass_fds=(relay.criu.fd,) if relay is not None else ())
        if relay is not None:
            relay.finish(ok=res.returncode == 0)
    except BaseException:
        _runc(runc_root, "resume", cid)
        if conn is not None:
            conn.close()
        raise
    if res.returncode != 0:
        link_error = relay.error if relay is not None else None   # before our own close below sets one
        _runc(runc_root, "resume", cid)
        if conn is not None:   # the destination sees the stream end and gives up its half
            conn.close()
        log = scratch / "dump.log"
        if link_error is not None:   # the cause is the link; what CRIU made of it goes in brackets
            first, excerpt = criu_says(log, res.stderr.strip() or "runc checkpoint failed")
            raise TransportError(f"the data link to {peer} broke during the dump ({link_error}; CRIU says: "
                                 f"{first})", detail=excerpt)
        raise criu_failure(CheckpointError, "checkpoint", log, res.stderr.strip() or "runc checkpoint failed")
    shutil.rmtree(scratch, ignore_errors=True)
    return relay.sent if relay is not None else 0


class _LazyDump:
    """A post-copy dump still running: CRIU serves the frozen container's memory to the destination's lazy-pages
    daemon through the page link, on demand and in the background, until every page has gone."""

    def __init__(self, proc: subprocess.Popen, pages: link.Link, relay: "link.Pump", started: float,
                 runc_root: Path, cid: str, log: Path) -> None:
        self.proc, self.pages, self.relay, self.started = proc, pages, relay, started
        self.runc_root, self.cid, self.log = runc_root, cid, log

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.pages.close()


LAZY: dict[str, _LazyDump] = {}


def _runc_freeze_lazy_dump(runc_root: Path, cid: str, work: Path, pages: link.Link, mid: str,
                           criu_extra: str = "") -> None:
    """Post-copy: freeze, dump everything but the memory contents, then leave CRIU serving the pages. Returns
    once CRIU is ready to serve (its status fd); the pages flow from then on, through the page link."""
    images, scratch = work / CHECKPOINT, work / "criu-work"
    images.mkdir(mode=0o700)
    scratch.mkdir(mode=0o700)
    criu = link.CriuSocket()   # CRIU serves the pages on it: no listener another process could reach
    env = _criu_env(work, criu_extra + criu.criu_config)
    res = _runc(runc_root, "pause", cid)
    if res.returncode != 0:
        criu.given()
        criu.sock.close()
        raise CheckpointError(f"cannot freeze the container: {res.stderr.strip()[-200:]}")
    ready_r, ready_w = os.pipe()
    proc = subprocess.Popen(["runc", "--root", str(runc_root), "checkpoint", "--leave-running", "--lazy-pages",
                             "--page-server", link.UNUSED_PAGE_SERVER, "--status-fd", str(ready_w),
                             "--image-path", str(images), "--work-path", str(scratch), cid],
                            pass_fds=[ready_w, criu.fd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)
    os.close(ready_w)
    criu.given()
    exited = os.pidfd_open(proc.pid)
    try:
        ready, _, _ = select.select([ready_r, exited], [], [], 120)
        status = os.read(ready_r, 1) if ready_r in ready else b""
    finally:
        os.close(ready_r)
        os.close(exited)
    if status != b"\0":
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        _runc(runc_root, "resume", cid)
        criu.sock.close()
        raise criu_failure(CheckpointError, "post-copy checkpoint", scratch / "dump.log",
                           err or "runc checkpoint --lazy-pages failed")
    # CRIU now serves the pages on its end of the socketpair: join ours to the page link
    relay = link.Pump(criu.sock, pages)
    LAZY[mid] = _LazyDump(proc, pages, relay, time.monotonic(), runc_root, cid, scratch / "dump.log")


def _lazy_pipes_ok() -> str | None:
    """CRIU's lazy page server needs a 3.3 MB pipe and does not check that it got one (it then fails on the
    first page with EBADF). None if this host allows it, else why not."""
    import fcntl
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


def source_wait_pages(args: dict, ch) -> dict:
    """Post-copy: until the destination has every page (CRIU's lazy dump ends); the seconds it took."""
    lazy = LAZY.pop(args["migration_id"], None)
    if lazy is None:
        raise TransportError("no post-copy transfer is running for this migration")
    exited = os.pidfd_open(lazy.proc.pid)
    try:
        while lazy.proc.poll() is None:
            select.select([exited], [], [], 0.5)
            if lazy.relay.sent:
                ch.emit({"event": "bytes", "bytes": lazy.relay.take()})
    finally:
        os.close(exited)
        err = lazy.proc.stderr.read().decode(errors="replace").strip()
        lazy.proc.stderr.close()
        lazy.relay.close()
        lazy.stop()
        LINKS.pop(args["migration_id"] + "-pages", None)
    if lazy.proc.returncode != 0:
        raise criu_failure(TransportError, "the post-copy page transfer", lazy.log,
                           err or f"exit status {lazy.proc.returncode}")
    return {"seconds": time.monotonic() - lazy.started, "page_bytes": lazy.relay.total}


def runc_state(runc_root: Path | None, cid: str) -> str | None:
    if runc_root is None:
        return None
    res = _runc(runc_root, "state", cid)
    if res.returncode != 0:
        return None
    try:
        return json.loads(res.stdout).get("status")
    except ValueError:
        return None


def _wait_stopped(dk: Docker, cid: str, timeout: float = 30.0) -> None:
    """Docker learns of the dumped container's exit asynchronously; files are only stable once it is down."""
    deadline = time.monotonic() + timeout
    while dk.inspect(cid)["State"].get("Running"):
        if time.monotonic() > deadline:
            raise CheckpointError("the container still runs after its dump")
        time.sleep(0.01)


LINKS: dict[str, link.Link] = {}


def source_connect(args: dict, ch) -> dict:
    """Open the direct data link to the destination (before the freeze): OpenSSH from this host."""
    mid = args["migration_id"]
    _workdir(mid, "src")   # validates the id
    if args.get("kind") == "pages":   # post-copy's second link, for CRIU's lazy page traffic
        mid += "-pages"
    if mid in LINKS:
        LINKS.pop(mid).close()
    LINKS[mid] = link.Link(args["target"], args["socket"], args["token"], args.get("agent") or "cmigrate-agent",
                           args.get("io_timeout"), args.get("pin"))
    return {"connected": True}


def _sources(args: dict) -> list[streams.Source]:
    work = _workdir(args["migration_id"], "src")
    if args.get("dir"):   # a pre-copy iteration: its pre-dump alone
        return [streams.Source(work / _predump_dir(args["dir"]), IMAGES)]
    sources = [streams.Source(work / CHECKPOINT, IMAGES)]
    for i, vol in enumerate(args.get("volumes", [])):
        sources.append(streams.Source(Path(vol["source"]), f"vol{i}"))
    return sources


def source_send(args: dict, ch) -> dict:
    """The files (checkpoint, writable layer, volumes) as data frames to the CLI, which relays them."""
    return streams.send_tree(_sources(args), ch.stdout, level=args.get("level", 3), threads=args.get("threads", -1))


def _send_over_link(args: dict, ch) -> dict:
    """The files over the direct link, closing it: the destination then has everything."""
    conn = LINKS.pop(args["migration_id"], None)
    if conn is None:
        raise TransportError("no direct data link was opened for this migration")
    t0 = time.monotonic()
    try:
        try:
            sent = streams.send_tree(_sources(args), conn.stdin, level=args.get("level", 3),
                                     threads=args.get("threads", -1), on_wire=_throttled(ch))
            framing.send(conn.stdin, {"type": "end", "manifest": sent["manifest"]})
        except OSError as exc:   # ssh exited under us: its own message says why
            raise conn._failure(f"the data link to {conn.target} broke") from exc
        conn.finish()
    finally:
        conn.close()
    sent["seconds"] = time.monotonic() - t0
    del sent["manifest"]   # the destination has it; the CLI needs only the counts
    return sent


def source_resume(args: dict, ch) -> dict:
    """Rollback: the container runs again on the source: thawed, or restored from the images it was dumped to."""
    cid = args["container_id"]
    work = _workdir(args["migration_id"], "src")
    lazy = LAZY.pop(args["migration_id"], None)
    if lazy is not None:   # post-copy that did not finish: the frozen source still has every page
        lazy.relay.close()
        lazy.stop()
    dk = Docker()
    try:
        try:
            info = dk.inspect(cid)
        except MigrationError as exc:
            if not exc.message.startswith("no such container"):
                raise
            shutil.rmtree(work, ignore_errors=True)   # removed by someone meanwhile: nothing left to resume
            return {"running": False, "gone": True}
        runc_root = dk.runc_root(info)
        if runc_state(runc_root, cid) == "paused" and not info["State"].get("Paused"):
            res = _runc(runc_root, "resume", cid)   # frozen by source.dump: thawing is the whole rollback
            if res.returncode != 0:
                raise RollbackError(f"cannot thaw container {info['Name'].lstrip('/')}: {res.stderr.strip()}",
                                    container=cid)
        else:   # the policy the dump set aside: from the CLI, else from the journal (recover, a lost answer)
            policy = args.get("restart_policy") or (_read_journal(work) or {}).get("restart_policy")
            _resume_after_failure(dk, info, info["Name"].lstrip("/"), work / CHECKPOINT, policy)
        shutil.rmtree(work, ignore_errors=True)
        return {"running": dk.inspect(cid)["State"].get("Running", False)}
    finally:
        dk.close()


def source_finish(args: dict, ch) -> dict:
    """After the destination runs: remove the stopped source container, or keep it with its checkpoint."""
    cid = args["container_id"]
    work = _workdir(args["migration_id"], "src")
    dk = Docker()
    try:
        _stop_frozen(dk, cid)
        if args.get("keep"):
            info = dk.inspect(cid)
            name = "migrated-" + time.strftime("%Y%m%d-%H%M%S")
            dest = dk.root_dir / "containers" / info["Id"] / "checkpoints" / name
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.move(work / CHECKPOINT, dest)
            shutil.rmtree(work, ignore_errors=True)
            return {"kept": True, "checkpoint": name}
        named = [m["Name"] for m in dk.inspect(cid).get("Mounts", []) if m["Type"] == "volume"]
        # force: should anything have started it again, it must not go on running beside the destination's
        dk._do("remove the source container", dk.api.remove_container, cid, v=True, force=True, container=cid)
        for vol in named:   # their data moved with the container (anonymous ones went with v=True)
            try:
                dk.api.remove_volume(vol)
            except Exception:  # already gone with the container
                pass
        shutil.rmtree(work, ignore_errors=True)
        return {"kept": False}
    finally:
        dk.close()


def _stop_frozen(dk: Docker, cid: str) -> None:
    """End the frozen source container without letting it run a single instruction: no restart policy, SIGKILL
    pending in every one of its processes (--all: a kill of init alone would leave the others running until the
    kernel reaps its namespace), then thaw (the kernel delivers the kills on the way out of the freezer)."""
    info = dk.inspect(cid)
    runc_root = dk.runc_root(info)
    if runc_state(runc_root, cid) != "paused" or info["State"].get("Paused"):
        return
    dk.set_restart_policy(cid, None)
    _runc(runc_root, "kill", "--all", cid, "KILL")
    _runc(runc_root, "resume", cid)
    _wait_stopped(dk, cid)


# ====================================================================== destination
class _Pending:
    """What this destination agent made for a migration that is not committed yet."""

    container_id: str | None = None
    migration_id: str | None = None
    volumes: list[str] = []
    committed = True
    listener: link.Listener | None = None
    page_listener: link.Listener | None = None
    lazy: subprocess.Popen | None = None     # post-copy: the lazy-pages daemon, until every page is here
    lazy_started = 0.0
    gated: GatedRestore | None = None        # a restore Docker began early, held until the images are verified


PENDING = _Pending()


def _image_match(dk: Docker, image_id: str, name: str, layers: list[str]) -> str | None:
    """The reference to create the container from on this host, if it has the same image (or the same layers)."""
    try:
        dk.client.images.get(image_id)
        return image_id if name.startswith("sha256:") else _same_name(dk, name, image_id) or image_id
    except Exception:  # docker.errors.ImageNotFound and friends: look by name and content
        pass
    try:
        local = dk.client.images.get(name).attrs
    except Exception:
        return None
    return name if ((local.get("RootFS") or {}).get("Layers") or []) == layers and layers else None


def _same_name(dk: Docker, name: str, image_id: str) -> str | None:
    try:
        return name if dk.client.images.get(name).id == image_id else None
    except Exception:
        return None


def dest_preflight(args: dict, ch) -> dict:
    name = args["name"]
    dk = Docker()
    try:
        dk.require_checkpointing()
        criu = require_criu(this_host())
        trust.require_trusted(args.get("host_config") or {}, name, args.get("source"),
                              bool(args.get("allow_privileged")))
        if dk.exists(name):
            raise PreflightError(f"a container named {name} already exists", container=name,
                                 hint="remove or rename it there first")
        missing = [b for b in args.get("binds", []) if not os.path.exists(b)]
        if missing:
            raise PreflightError(f"bind-mount source {missing[0]} does not exist", container=name,
                                 hint="create it (with the same content) before migrating")
        for net in args.get("networks", []):
            if net not in ("bridge", "host", "none") and not dk.client.networks.list(names=[net]):
                raise PreflightError(f"network {net} does not exist", container=name,
                                     hint=f"create it first: docker network create {net}")
        for vol in args.get("named_volumes", []):
            if dk.client.volumes.list(filters={"name": f"^{vol}$"}):
                raise PreflightError(f"volume {vol} already exists", container=name,
                                     hint="remove it there, or migrate into a host without it")
        need = int(args.get("bytes_needed", 0))
        for path in sorted({dk.root_dir, _existing(work_root())}):   # the images land in the work root
            st = os.statvfs(path)
            free = st.f_bavail * st.f_frsize
            if free < need:
                raise PreflightError(f"not enough disk at {path}: {free // 2**20} MiB free, "
                                     f"{need // 2**20} MiB needed", container=name)
        image = _image_match(dk, args["image_id"], args["image_name"], args.get("image_layers", []))
        return {"image": image, "criu": criu.to_dict(), "docker_version": dk.info().get("ServerVersion"),
                "platform": dk.versions()}
    finally:
        dk.close()


def dest_receive_image(args: dict, ch) -> dict:
    reader = streams.FrameReader(ch.stdin)
    dk = Docker()
    try:
        dctx = zstandard.ZstdDecompressor()

        def chunks():
            with dctx.stream_reader(reader, closefd=False) as z:
                while chunk := z.read(streams.CHUNK):
                    yield chunk

        try:
            for _ in dk.api.load_image(chunks()):
                pass
        except MigrationError:
            raise
        except Exception as exc:
            raise DockerError(f"docker load failed: {exc}") from exc
        end = reader.drain()
        if end.get("type") != "end":
            raise TransportError("the image stream was aborted")
        dk.client.images.get(args["image_id"])
        return {"wire_bytes": reader.received}
    finally:
        dk.close()


def dest_create(args: dict, ch) -> dict:
    """Create (not start) the container with the source's configuration, before the freeze."""
    config = dict(args["config"])
    config["Image"] = args["image"]
    config["HostConfig"] = _volumes_without_copy(dict(args["host_config"]), config.get("Volumes") or {})
    name = args["name"]
    # judged again here: this is what is applied, whatever the preflight was shown
    trust.require_trusted(config["HostConfig"], name, args.get("source"), bool(args.get("allow_privileged")))
    networks = args.get("networks") or []
    if len(networks) > 1 or (networks and networks[0] not in ("bridge", "host", "none")):
        config["NetworkingConfig"] = {"EndpointsConfig": {networks[0]: {}}}
    dk = Docker()
    try:
        runtime = config["HostConfig"].get("Runtime") or "runc"
        if runtime in ("runc", FAST_RUNTIME):   # runc either way; restore faster where the wrapper is installed
            config["HostConfig"]["Runtime"] = FAST_RUNTIME if dk.has_fast_runtime() else "runc"
        before = {v.name for v in dk.client.volumes.list()}
        resp = dk.api.post(dk.api._url("/containers/create"), params={"name": name}, json=config)
        dk._check(resp, f"create container {name}", name)
        cid = resp.json()["Id"]
        PENDING.container_id, PENDING.migration_id, PENDING.committed = cid, args["migration_id"], False
        PENDING.volumes = sorted({v.name for v in dk.client.volumes.list()} - before)
        if not _workdir(args["migration_id"], "dst").is_dir():
            _workdir(args["migration_id"], "dst", create=True)
        _journal(_workdir(args["migration_id"], "dst"), role="destination", migration_id=args["migration_id"],
                 container_id=cid, name=name, volumes=PENDING.volumes, state="created",
                 source=args.get("source"), **agent_journal.identity())
        # a lease: until the commit, silence from the CLI for io_timeout means it is gone (a cut link shows no
        # end of the session for as long as TCP keeps retrying), and this agent then removes what it made
        _watch_link(ch, args)
        info = dk.inspect(cid)
        mounts = {m["Destination"]: m["Source"] for m in info.get("Mounts", []) if m["Type"] == "volume"}
        netns = False
        if args.get("arm_restore") and config["HostConfig"]["Runtime"] == FAST_RUNTIME:
            # Docker's own way to the restore (~0.2 s here: rootfs, containerd task; and with ``netns`` the
            # network namespace and its endpoint, ~0.1 s more) overlaps what comes before it, not the downtime
            mode = info["HostConfig"].get("NetworkMode") or "default"
            # Docker's prestart hook binds the namespace to its sandbox key: none without networking at all
            netns = (bool(args.get("netns")) and mode != "host" and not mode.startswith("container:")
                     and not info["Config"].get("NetworkDisabled"))
            PENDING.gated = GatedRestore(info, _workdir(args["migration_id"], "dst") / CHECKPOINT, netns)
            if args.get("wait_gate", True):
                PENDING.gated.wait_ready()
        return {"id": cid, "volume_sources": mounts, "armed": PENDING.gated is not None, "netns": netns}
    finally:
        dk.close()


def _volumes_without_copy(hc: dict, image_volumes: dict) -> dict:
    """The volumes this container gets here, made empty: Docker would fill a new volume with the image's files at
    its mount point, and the source's copy of them (changed or deleted, maybe) arrives anyway, onto files that
    must not be there yet. Named volumes get ``nocopy``; anonymous ones (the image's VOLUME) become explicit
    anonymous mounts with NoCopy."""
    binds = []
    for b in hc.get("Binds") or []:
        parts = b.split(":")
        if len(parts) >= 2 and not parts[0].startswith("/"):   # name:/path[:opts]: a named volume
            opts = [o for o in (parts[2].split(",") if len(parts) > 2 else []) if o]
            if "nocopy" not in opts:
                opts.append("nocopy")
            b = ":".join(parts[:2] + [",".join(opts)])
        binds.append(b)
    if binds:
        hc["Binds"] = binds
    mounts = []
    for m in hc.get("Mounts") or []:
        if m.get("Type") == "volume":
            m = m | {"VolumeOptions": (m.get("VolumeOptions") or {}) | {"NoCopy": True}}
        mounts.append(m)
    taken = {b.split(":")[1] for b in binds if ":" in b} | {m.get("Target") for m in mounts}
    for target in image_volumes:
        if target not in taken:
            mounts.append({"Type": "volume", "Target": target, "VolumeOptions": {"NoCopy": True}})
    if mounts:
        hc["Mounts"] = mounts
    return hc


def dest_receive(args: dict, ch) -> dict:
    work = _workdir(args["migration_id"], "dst")
    if args.get("dir"):   # a pre-copy iteration: beside the final images, which link to it as their parent
        targets = {IMAGES: work / _predump_dir(args["dir"])}
        args = {k: v for k, v in args.items() if k not in ("restore_id", "lazy")}
    else:
        targets = {IMAGES: work / CHECKPOINT}
        for i, src in enumerate(args.get("volume_sources", [])):
            targets[f"vol{i}"] = Path(src)
    targets[IMAGES].mkdir(mode=0o700, exist_ok=True)
    listener, PENDING.listener = PENDING.listener, None
    if args.get("direct"):
        if listener is None:
            raise TransportError("no direct data link is waiting for this migration")
        return _receive_direct(listener, targets, args, getattr(ch.stdin, "fd", None))
    if listener is not None:
        listener.close()
    reader = streams.FrameReader(ch.stdin)
    _watch_link(ch, args)
    try:
        written = streams.receive_tree(reader, targets)
    except MigrationError as exc:
        if _link_lost(exc):
            raise
        reader.drain()
        raise
    except (OSError, zstandard.ZstdError) as exc:
        reader.drain()
        raise TransportError(f"the transfer stream is corrupt: {exc}") from exc
    end = reader.drain()
    if end.get("type") != "end":
        raise TransportError("the transfer was aborted by the sender")
    streams.verify(end.get("manifest") or {}, written)
    return {"files": len(written), "wire_bytes": reader.received}


def _receive_direct(listener: link.Listener, targets: dict[str, Path], args: dict, cli: int | None) -> dict:
    try:
        result = _receive_verified(listener, targets, args, cli)
    except BaseException:
        _cancel_gated()
        raise
    lazy_dir = _start_lazy_pages(targets[IMAGES], args) if args.get("lazy") else None
    if args.get("restore_id"):   # everything verified: restore at once, no round trip to the CLI
        result |= dest_restore({"container_id": args["restore_id"], "migration_id": args["migration_id"],
                                "lazy_dir": str(lazy_dir) if lazy_dir else None}, None)
    return result


def _cancel_gated() -> None:
    if PENDING.gated is not None:
        PENDING.gated.cancel()
        PENDING.gated = None


def _receive_verified(listener: link.Listener, targets: dict[str, Path], args: dict, cli: int | None) -> dict:
    conn = listener.accept(args.get("io_timeout"))
    reader = streams.FrameReader(conn)
    try:
        if args.get("pages"):
            _page_server(conn, targets[IMAGES], cli, args.get("io_timeout"))
        try:
            written = streams.receive_tree(reader, targets)
            end = reader.drain()
        except (EOFError, tarfile.ReadError) as exc:
            raise TransportError(f"the data link closed before the transfer was complete: {exc}") from exc
        except (OSError, zstandard.ZstdError) as exc:
            raise TransportError(f"the transfer stream is corrupt: {exc}") from exc
    finally:
        conn.close()
    if end.get("type") != "end":
        raise TransportError("the transfer was aborted by the sender")
    streams.verify(end.get("manifest") or {}, written)
    return {"files": len(written), "wire_bytes": reader.received}


def _start_lazy_pages(images: Path, args: dict) -> Path:
    """Post-copy: ``criu lazy-pages`` on the page link's socket, listening for the restore in its own dir; it
    fetches each page the restored container touches, and all the others in the background."""
    listener, PENDING.page_listener = PENDING.page_listener, None
    if listener is None:
        raise TransportError("no page link is waiting for this post-copy migration")
    conn = listener.accept(args.get("io_timeout"))
    sock = conn.conn
    sock.setblocking(True)
    fd = sock.fileno()
    lazy_dir = images.parent / "lazy"
    lazy_dir.mkdir(mode=0o700, exist_ok=True)
    PENDING.lazy = subprocess.Popen(["criu", "lazy-pages", "--images-dir", str(images), "--work-dir",
                                     str(lazy_dir), "--page-server", "--ps-socket", str(fd),
                                     "--log-file", "lazy-pages.log", "-v2"],
                                    pass_fds=[fd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    PENDING.lazy_started = time.monotonic()
    conn.close()   # the daemon has its own copy of the descriptor
    deadline = time.monotonic() + 10
    while not (lazy_dir / "lazy-pages.socket").exists():
        if PENDING.lazy.poll() is not None or time.monotonic() > deadline:
            raise RestoreError("CRIU's lazy-pages daemon did not start: "
                               f"{PENDING.lazy.stderr.read().decode(errors='replace').strip()[-300:]}")
        time.sleep(0.005)
    return lazy_dir


def dest_wait_pages(args: dict, ch) -> dict:
    """Post-copy: until the lazy-pages daemon has every page (it exits); the seconds since it started."""
    proc = PENDING.lazy
    if proc is None:
        raise TransportError("no post-copy transfer is running here")
    stall = float(args.get("io_timeout") or DEFAULT_IO_TIMEOUT)
    seen, since = _bytes_read(proc.pid), time.monotonic()
    while proc.poll() is None:   # a daemon that reads nothing more for the I/O timeout has lost its source
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            now = _bytes_read(proc.pid)
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since > stall:
                proc.kill()
                proc.wait()
                proc.stderr.close()
                PENDING.lazy = None
                _discard_quietly()   # without its pages it must not run a moment longer
                raise TransportError(f"no memory page arrived for {stall:g} s during post-copy: the source or "
                                     "the link is gone") from None
    err = proc.stderr.read().decode(errors="replace").strip()
    proc.stderr.close()
    PENDING.lazy = None
    if proc.returncode != 0:
        log = _workdir(args["migration_id"], "dst") / "lazy" / "lazy-pages.log"
        failure = criu_failure(TransportError, "the post-copy page transfer", log,
                               err or f"exit status {proc.returncode}")
        # without its pages the container would go on with zeroed memory: it must not run a moment longer
        _discard_quietly()
        raise failure
    return {"seconds": time.monotonic() - PENDING.lazy_started}


def _bytes_read(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
    except (OSError, StopIteration, ValueError):
        return -1


def _page_server(conn: link.SocketReader, images: Path, cli: int | None, timeout: float | None = None) -> None:
    """The first part of the stream is CRIU's page-server protocol: ``criu page-server`` reads it straight from
    the link's socket and writes the pages into the images; it stops at the dump's last message."""
    sock = conn.conn
    sock.setblocking(True)   # CRIU reads the descriptor as it is
    fd = sock.fileno()
    log = images.parent / "page-server.log"
    proc = subprocess.Popen(["criu", "page-server", "--images-dir", str(images), "--work-dir", str(images.parent),
                             "--log-file", log.name, "-v2", "--ps-socket", str(fd)],
                            pass_fds=[fd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    exited = os.pidfd_open(proc.pid)
    read, last = -1, time.monotonic()
    try:
        while proc.poll() is None:
            # the CLI says nothing during a receive: its session ending (EOF) means it is gone
            ready, _, _ = select.select([exited] + ([cli] if cli is not None else []), [], [], 1.0)
            if cli in ready and not os.read(cli, 1):
                raise SessionLost("the CLI went away while the pages were arriving")
            # a link cut silently (no TCP reset) shows only as pages that stop coming
            now_read = _bytes_read(proc.pid)
            if now_read != read:
                read, last = now_read, time.monotonic()
            elif timeout and time.monotonic() - last > timeout:
                raise TransportError(f"no memory pages arrived for {timeout:g} s: the data link is gone")
    finally:
        os.close(exited)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    sock.settimeout(conn.timeout)
    if proc.returncode != 0:
        raise criu_failure(RestoreError, "receiving the memory pages", log,
                           err.strip() or f"exit status {proc.returncode}", speaker="CRIU's page server")


def dest_listen(args: dict, ch) -> dict:
    """Wait for a direct data link from the source (agents/link.py): a unix socket in the work dir."""
    work = _workdir(args["migration_id"], "dst")
    if not work.is_dir():
        _workdir(args["migration_id"], "dst", create=True)
    if PENDING.migration_id not in (None, args["migration_id"]):
        raise TransportError("this agent is busy with another migration")
    PENDING.migration_id, PENDING.committed = args["migration_id"], False
    if args.get("kind") == "pages":   # post-copy's second link, for the lazy-pages daemon
        if PENDING.page_listener is not None:
            PENDING.page_listener.close()
        PENDING.page_listener = link.Listener(work, "pages.sock")
        return {"socket": str(PENDING.page_listener.path), "token": PENDING.page_listener.token}
    if PENDING.listener is not None:
        PENDING.listener.close()
    PENDING.listener = link.Listener(work)
    return {"socket": str(PENDING.listener.path), "token": PENDING.listener.token}


def _watch_link(ch, args: dict) -> None:
    """While data flows in, silence for longer than the CLI's io_timeout means the link is gone."""
    if hasattr(ch.stdin, "timeout"):
        ch.stdin.timeout = args.get("io_timeout")


def _link_lost(exc: BaseException) -> bool:
    if isinstance(exc, SessionLost):
        _discard_quietly()
        return True
    return False


def dest_restore(args: dict, ch) -> dict:
    work = _workdir(args["migration_id"], "dst")
    if PENDING.gated is not None:   # Docker waits at the gate: let it restore
        gated, PENDING.gated = PENDING.gated, None
        gated.release(Path(args["lazy_dir"]) if args.get("lazy_dir") else None)
        return {"running_at": time.time()}
    dk = Docker()
    try:
        lazy_dir = Path(args["lazy_dir"]) if args.get("lazy_dir") else None
        restore_from(dk, dk.inspect(args["container_id"]), work / CHECKPOINT, lazy_dir)
        return {"running_at": time.time()}
    finally:
        dk.close()


def dest_commit(args: dict, ch) -> dict:
    """The commit point: from here the destination keeps the container, whatever happens to the CLI. Only the
    journal stays (state committed), until the source has let go (``dest.forget``)."""
    work = _workdir(args["migration_id"], "dst")
    _journal(work, state="committed")
    if hasattr(ch.stdin, "timeout"):
        ch.stdin.timeout = None   # the lease ends: from here the container stays, whatever the CLI does
    for entry in work.iterdir():
        if entry.name != JOURNAL:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    PENDING.committed = True
    return {"committed": True}


def dest_forget(args: dict, ch) -> dict:
    """The migration is over on both hosts: its journal goes."""
    shutil.rmtree(_workdir(args["migration_id"], "dst"), ignore_errors=True)
    return {"forgotten": True}


def dest_status(args: dict, ch) -> dict:
    """For recover: did this host commit the migration, and does its container run?"""
    journal = _read_journal(_workdir(args["migration_id"], "dst"))
    if journal is None:
        return {"known": False, "committed": False, "running": False}
    dk = Docker()
    try:
        try:
            running = bool(dk.inspect(journal["container_id"])["State"].get("Running"))
        except MigrationError:
            running = False
    finally:
        dk.close()
    return {"known": True, "committed": journal.get("state") == "committed", "running": running,
            "container_id": journal["container_id"]}


def dest_abandon(args: dict, ch) -> dict:
    """For recover: an uncommitted migration whose agent died without cleaning up: remove what it made."""
    work = _workdir(args["migration_id"], "dst")
    journal = _read_journal(work)
    if journal is not None and journal.get("state") == "committed":
        raise MigrationError("this migration was committed here: its container stays", container=journal["name"])
    if journal is not None:
        # the agent that made it may still be at work (its CLI lost the session mid-call): it could restore the
        # container after we removed it, so it goes first
        stopped = agent_journal.stop_owner(journal)
        PENDING.container_id, PENDING.migration_id = journal["container_id"], args["migration_id"]
        PENDING.volumes = journal.get("volumes") or []
        return dest_discard() | {"stopped_agent": stopped}
    shutil.rmtree(work, ignore_errors=True)
    return {"removed": []}


def source_recover_lock(args: dict, ch) -> dict:
    """For recover: take the container's migration lock, so that a migration still in progress is left alone."""
    _lock_container(args["container_id"], args.get("name") or args["container_id"])
    return {"locked": True}


def _journals(role: str, container: str | None) -> list[dict]:
    """The journals of this host's migrations in ``role`` (src, dst), of ``container`` (name or id) if given."""
    root = work_root()
    journals = [_read_journal(w) for w in sorted(root.glob(f"*-{role}"))] if root.is_dir() else []
    return [j for j in journals if j and (not container or container in (j.get("name"), j.get("container_id")))]


def source_pending(args: dict, ch) -> list[dict]:
    """For recover: the migrations this host was the source of and that did not end (their journals)."""
    return _journals("src", args.get("container"))


def dest_pending(args: dict, ch) -> list[dict]:
    """For recover: migrations this host was the destination of and committed, whose journal is still here
    (the source let go, but the word never reached this host)."""
    return [j for j in _journals("dst", args.get("container")) if j.get("state") == "committed" and j.get("source")]


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _discard_quietly() -> None:
    """Clean up on the way out of a failure: the failure is what gets reported."""
    try:
        dest_discard()
    except MigrationError as exc:
        print(f"cmigrate-agent: {exc.line()}", file=sys.stderr)


def dest_discard(args: dict | None = None, ch=None) -> dict:
    """Remove what this migration made here: the container, volumes it created, received files."""
    removed = []
    for attr in ("listener", "page_listener"):
        if getattr(PENDING, attr) is not None:
            getattr(PENDING, attr).close()
            setattr(PENDING, attr, None)
    _cancel_gated()   # before removing the container: Docker holds it while it waits at the gate
    if PENDING.lazy is not None:
        PENDING.lazy.kill()
        PENDING.lazy.wait()
        PENDING.lazy.stderr.close()
        PENDING.lazy = None
    if PENDING.container_id:
        dk = Docker()
        try:
            try:
                dk.api.remove_container(PENDING.container_id, force=True, v=True)
                removed.append(PENDING.container_id)
            except docker.errors.NotFound:
                pass
            except Exception as exc:   # dockerd down, say: the container may still be there, even run
                raise RollbackError(f"cannot remove the migration's container here: {exc}",
                                    hint="once dockerd runs again: cmigrate recover <source host>") from exc
            if dk.exists(PENDING.container_id):   # the source is thawed on this word: make sure of it
                raise RollbackError("the migration's container is still here after Docker removed it",
                                    hint="cmigrate recover <source host>")
            for vol in PENDING.volumes:
                try:
                    dk.api.remove_volume(vol, force=True)
                except Exception:
                    pass
        finally:
            dk.close()
        # an agent killed in the middle of the restore could not remove these itself
        for f in restore_map_files(PENDING.container_id):
            f.unlink(missing_ok=True)
    if PENDING.migration_id:
        shutil.rmtree(_workdir(PENDING.migration_id, "dst"), ignore_errors=True)
    PENDING.container_id = PENDING.migration_id = None
    PENDING.committed = True
    return {"removed": removed}


def on_session_end() -> None:
    """The CLI went away before committing: nothing of this migration may stay on the destination."""
    while LAZY:
        LAZY.popitem()[1].stop()
    while LINKS:
        LINKS.popitem()[1].close()
    if PENDING.listener is not None:
        PENDING.listener.close()
        PENDING.listener = None
    if not PENDING.committed:
        _discard_quietly()
    while PREDUMPS:   # pre-dumps of a migration that never froze the container (no journal): nothing needs them
        work = _workdir(PREDUMPS.pop(), "src")
        if _read_journal(work) is None:
            shutil.rmtree(work, ignore_errors=True)


OPERATIONS = {
    "source.inspect": source_inspect,
    "source.pending": source_pending,
    "source.recover_lock": source_recover_lock,
    "source.send_image": source_send_image,
    "source.dump": source_dump,
    "source.predump": source_predump,
    "source.connect": source_connect,
    "source.send": source_send,
    "source.wait_pages": source_wait_pages,
    "source.resume": source_resume,
    "source.finish": source_finish,
    "dest.preflight": dest_preflight,
    "dest.receive_image": dest_receive_image,
    "dest.create": dest_create,
    "dest.listen": dest_listen,
    "dest.receive": dest_receive,
    "dest.restore": dest_restore,
    "dest.wait_pages": dest_wait_pages,
    "dest.commit": dest_commit,
    "dest.forget": dest_forget,
    "dest.status": dest_status,
    "dest.abandon": dest_abandon,
    "dest.discard": dest_discard,
    "dest.pending": dest_pending,
}
