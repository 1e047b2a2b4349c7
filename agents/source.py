"""The source end of a migration (``source.*`` operations).

In order: ``inspect`` the container (and take its migration lock), ``send_image`` if the destination lacks it,
``connect`` the direct data link(s), pre-copy's ``predump`` iterations, ``dump`` (freeze, dump, save the writable
layer; over the direct link the files go on at once, otherwise the CLI asks for them with ``send``), post-copy's
``wait_pages``; then ``finish`` (the destination runs it: the frozen copy goes) or ``resume`` (rollback: thaw).

One :class:`SourceMigration` per migration holds what lives between those calls; the agent's session
(``agents/session.py``) maps migration ids to them and ends them with the session.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import time
from pathlib import Path

from agents import checkpoint, connections, cpu, criu, file_locks, journal, link, netlock, rootfs, watches
from agents.checkpoint import META_DIR, lock_down, resume_after_failure, dir_size, this_host
from agents.dockerd import Docker
from agents.journal import CHECKPOINT, IMAGES, ContainerLock
from agents.session import on_migration
from migrate.errors import CheckpointError, DockerError, DumpAborted, MigrationError, PreflightError, RollbackError, \
    TransportError
from migrate.hostinfo import require_criu
from transport import framing, streams

UNSUPPORTED_MODES = ("container:",)
SMALL_STREAM = 8 << 20     # below this, zstd's worker threads cost more than they save


def _cutting_links(step):
    """A dump or pre-dump that fails cuts the migration's links (``SourceMigration.cut_links``)."""
    @functools.wraps(step)
    def cutting(self: "SourceMigration", args: dict, ch) -> dict:
        try:
            return step(self, args, ch)
        except BaseException:
            self.cut_links()
            raise
    return cutting


class SourceMigration:
    """One migration as its source agent holds it: the container's lock, the direct links to the destination
    (``data``; post-copy's ``pages``), whether it pre-dumped, and post-copy's lazy dump."""

    def __init__(self, migration_id: str, session=None) -> None:
        journal.workdir(migration_id, "src")   # validates the id
        self.id = migration_id
        self._take_lock = session.lock if session is not None else ContainerLock
        self.lock: ContainerLock | None = None
        self.links: dict[str, link.Link] = {}
        self.predumped = False
        self.lazy: criu.LazyDump | None = None

    @property
    def work(self) -> Path:
        return journal.workdir(self.id, "src")

    # ---------------------------------------------------------------- before the freeze
    def lock_container(self, cid: str, name: str) -> None:
        if self.lock is None:
            self.lock = self._take_lock(cid, name)

    def inspect(self, args: dict, ch) -> dict:
        """Take the container in hand (its lock) and tell the CLI what moving it takes; PreflightError if it
        cannot move."""
        container = args["container"]
        dk = Docker()
        try:
            info = dk.inspect_running(container)
            self.lock_container(info["Id"], info["Name"].lstrip("/"))
            _refuse_pending(info["Id"], container)
            dk.require_checkpointing()
            found = require_criu(this_host())
            _refuse_shared(info["HostConfig"], container)
            _refuse_exec_sessions(dk, info, container)
            upper = rootfs.upper_dir(info)
            image = dk.client.images.get(info["Image"]).attrs
            return describe(info, image) | {
                "volumes": _volumes(dk, info, container), "upper_bytes": dir_size(upper),
                "criu": found.to_dict(), "docker_version": dk.info().get("ServerVersion"), "platform": dk.versions(),
                "lazy_pipes_problem": criu.lazy_pipes_problem(),
                "connections": connections.tcp_connections(info["State"]["Pid"]),
                "watches": bool(watches.irmap_hints(info["State"]["Pid"], container)),   # refused if unplaceable
                "endpoints": _endpoints(dk, info),
                "runc_state": dk.runc_root(info) is not None,   # dumps through runc, with our CRIU options
                "cpuinfo": cpu.dump(),   # for the destination to judge (agents/cpu.py)
            }
        finally:
            dk.close()

    def connect(self, args: dict, ch) -> dict:
        """Open a direct data link to the destination (before the freeze): OpenSSH from this host."""
        kind = "pages" if args.get("kind") == "pages" else "data"   # pages: post-copy's link for CRIU's lazy pages
        if kind in self.links:
            self.links.pop(kind).close()
        self.links[kind] = link.Link(args["target"], args["socket"], args["token"],
                                     args.get("agent") or "cmigrate-agent", args.get("io_timeout"), args.get("pin"),
                                     framed_pages=bool(args.get("framed_pages")))
        return {"connected": True}

    def _link(self, kind: str, missing: str) -> link.Link:
        conn = self.links.get(kind)
        if conn is None:
            raise TransportError(missing)
        return conn

    def cut_links(self) -> None:
        """A dump or pre-dump that fails cuts the links: the destination, which waits on them (at its gate, for
        images), hears of it at once rather than after its I/O timeout."""
        while self.links:
            self.links.popitem()[1].close()   # every pipe, and its pinned known_hosts file

    # ---------------------------------------------------------------- pre-copy
    @_cutting_links
    def predump(self, args: dict, ch) -> dict:
        """Pre-copy, one iteration while the container runs (agents/criu.py ``predump``); with ``send`` it is
        streamed over the direct link at once."""
        cid, n = args["container_id"], int(args["iteration"])
        if not 1 <= n <= 99:
            raise MigrationError(f"invalid pre-copy iteration {n}")
        work = journal.workdir(self.id, "src", create=not self.predumped and n == 1)
        self.predumped = True
        runc_root = _runc_root(cid)
        if runc_root is None:
            raise CheckpointError("pre-copy needs the container's runc state on this host (runc runtime)")
        result = criu.predump(runc_root, cid, work, n)
        result["bytes"] = dir_size(work / result["dir"])
        if args.get("send") is not None:
            result["sent"] = self._send_over_link(args["send"] | {"dir": result["dir"]}, ch)
        return result

    # ---------------------------------------------------------------- the freeze
    @_cutting_links
    def dump(self, args: dict, ch) -> dict:
        """Freeze and dump, then save the writable layer; with ``send``, stream it all over the direct link.

        Where runc is reachable (the usual case) the container is frozen and dumped with ``--leave-running``
        (agents/criu.py): a rollback is an instant thaw. With ``page_link`` its memory pages go straight into the
        direct link; with ``lazy`` (post-copy) CRIU keeps serving them after the dump. Without runc, Docker's own
        checkpoint (with exit) is used, and a rollback restores from the images."""
        started = time.monotonic()
        cid = args["container_id"]
        work = journal.workdir(self.id, "src", create=not self.predumped)
        parent = journal.predump_dir(args["parent"]) if args.get("parent") else None
        dk = Docker()
        try:
            info = dk.inspect(cid)
            upper, name, runc_root = rootfs.upper_dir(info), info["Name"].lstrip("/"), dk.runc_root(info)
            _refuse_exec_sessions(dk, info, name)   # again: one may have begun since the preflight
            hints = watches.irmap_hints(info["State"]["Pid"], name)   # where CRIU finds each watched file
            if not args.get("file_locks"):   # no dump of them: CRIU would fail after the freeze
                file_locks.refuse_unmovable(info["State"]["Pid"], name, args.get("destination") or "the destination")
            journal.write(work, role="source", migration_id=self.id, container_id=cid, name=name,
                          destination=args.get("destination"), state="frozen")
            # the destination made the network namespace: CRIU must not; tcp-close: connections restore closed
            extra = criu.external_netns(runc_root, cid) if runc_root and args.get("external_netns") else ""
            extra += "tcp-close\n" if args.get("tcp_close") else ""
            extra += "tcp-established\n" if args.get("keep_ip") else ""
            # locks held (flock, POSIX, OFD) are dumped, and held again on the destination, whose restore takes
            # CRIU's file-locks (it said so at create)
            extra += "file-locks\n" if args.get("file_locks") else ""
            extra += hints
            lock = _netns_of(info) if args.get("keep_ip") else None   # the network to lock for the move
            dk.between_health_probes(info)   # no health probe into the frozen container
            t0, freeze_after = time.time(), time.monotonic() - started
            page_wire = 0
            if runc_root:
                policy, (page_bytes, page_wire) = None, self._dump_with_runc(runc_root, info, work, parent, extra,
                                                                             lock, args, ch)
            elif args.get("lazy") or parent:
                raise CheckpointError("post-copy and pre-copy need the container's runc state on this host (runc "
                                      "runtime)")
            elif args.get("external_netns") or args.get("tcp_close"):
                raise CheckpointError("the container's runc state is gone: it cannot be dumped as planned")
            else:
                policy, page_bytes = self._dump_with_docker(dk, info, name, work), 0
            t_dumped = time.time()
            _save_layer(upper, work, cid)
            # freeze_after: what this call did before it froze the container (checks, journal), not downtime
            result = {"frozen_at": t0, "freeze_after": freeze_after, "dump_seconds": t_dumped - t0,
                      "layer_seconds": time.time() - t_dumped, "images_bytes": dir_size(work / CHECKPOINT),
                      "restart_policy": policy, "frozen": bool(runc_root), "page_bytes": page_bytes,
                      "page_wire_bytes": page_wire}
        finally:
            dk.close()
        if args.get("send") is not None:   # straight on over the direct link, no round trip to the CLI
            send = args["send"] | ({"threads": 0} if result["images_bytes"] < SMALL_STREAM else {})
            result["sent"] = self._send_over_link(send, ch)
        return result

    def _dump_with_runc(self, runc_root: Path, info: dict, work: Path, parent: str | None, extra: str,
                        lock: str | None, args: dict, ch) -> tuple[int, int]:
        """Freeze and dump through runc (``extra``: CRIU options; ``lock``: the network namespace to lock first,
        --keep-ip). Returns the page bytes streamed and the bytes they took on the link (in zstd chunks where they
        pay, if the link was opened for framed pages). On failure the container is thawed and unlocked already."""
        cid, name = info["Id"], info["Name"].lstrip("/")
        if args.get("lazy"):
            pages = self._link("pages", "no page link was opened for this post-copy migration")
            try:
                _lock_network(lock, cid)
                self.lazy = criu.LazyDump(runc_root, cid, work, pages, extra)
            except BaseException:
                _unlock_network(lock)
                shutil.rmtree(work, ignore_errors=True)
                raise
            return 0, 0
        conn = self._link("data", "no direct data link was opened for this migration") if args.get("page_link") \
            else None
        try:
            _lock_network(lock, cid)
            return criu.freeze_dump(runc_root, cid, work, conn, _throttled(ch),
                                    args.get("destination") or "the destination", parent, extra)
        except MigrationError as exc:   # thawed already; the destination never got the files to restore
            _unlock_network(lock)
            shutil.rmtree(work, ignore_errors=True)
            raise DumpAborted(exc.message, container=name, detail=exc.detail, hint=exc.hint) from exc
        except BaseException:
            _unlock_network(lock)
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _dump_with_docker(self, dk: Docker, info: dict, name: str, work: Path) -> dict | None:
        """Docker's checkpoint with exit; the restart policy set aside (in the journal first: whatever fails from
        here on, or kills this agent, it is not lost; rollback gives it back)."""
        try:
            return checkpoint.docker_dump(dk, info, name, CHECKPOINT, work, work / CHECKPOINT, exit=True,
                                          on_policy=lambda old: journal.write(work, restart_policy=old))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def wait_pages(self, args: dict, ch) -> dict:
        """Post-copy: until the destination has every page (CRIU's lazy dump ends); the seconds it took."""
        lazy, self.lazy = self.lazy, None
        if lazy is None:
            raise TransportError("no post-copy transfer is running for this migration")
        self.links.pop("pages", None)   # the lazy dump closes it
        return lazy.wait(lambda n: ch.emit({"event": "bytes", "bytes": n}))

    # ---------------------------------------------------------------- the files
    def _sources(self, args: dict) -> list[streams.Source]:
        work = self.work
        if args.get("dir"):   # a pre-copy iteration: its pre-dump alone
            return [streams.Source(work / journal.predump_dir(args["dir"]), IMAGES)]
        sources = [streams.Source(work / CHECKPOINT, IMAGES)]
        for i, vol in enumerate(args.get("volumes", [])):
            sources.append(streams.Source(Path(vol["source"]), f"vol{i}"))
        return sources

    def send(self, args: dict, ch) -> dict:
        """The files (checkpoint, writable layer, volumes) as data frames to the CLI, which relays them."""
        return streams.send_tree(self._sources(args), ch.stdout, level=args.get("level", 3),
                                 threads=args.get("threads", -1))

    def _send_over_link(self, args: dict, ch) -> dict:
        """The files over the direct link, closing it: the destination then has everything."""
        conn = self.links.pop("data", None)
        if conn is None:
            raise TransportError("no direct data link was opened for this migration")
        t0 = time.monotonic()
        try:
            try:
                sent = streams.send_tree(self._sources(args), conn.stdin, level=args.get("level", 3),
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

    # ---------------------------------------------------------------- the end
    def resume(self, args: dict, ch) -> dict:
        """Rollback: the container runs again here: thawed, or restored from the images it was dumped to."""
        cid, work = args["container_id"], self.work
        if self.lazy is not None:   # post-copy that did not finish: the frozen source still has every page
            self.lazy.stop()
            self.lazy = None
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
            if criu.runc_state(runc_root, cid) == "paused" and not info["State"].get("Paused"):
                _unlock_network(_netns_of(info))   # --keep-ip locked it: before a single instruction runs again
                res = criu.thaw(runc_root, cid)   # frozen by source.dump: thawing is the whole rollback
                if res.returncode != 0:
                    raise RollbackError(f"cannot thaw container {info['Name'].lstrip('/')}: {res.stderr.strip()}",
                                        container=cid)
            else:   # the policy the dump set aside: from the CLI, else from the journal (recover, a lost answer)
                policy = args.get("restart_policy") or (journal.read(work) or {}).get("restart_policy")
                resume_after_failure(dk, info, info["Name"].lstrip("/"), work / CHECKPOINT, policy)
            shutil.rmtree(work, ignore_errors=True)
            return {"running": dk.inspect(cid)["State"].get("Running", False)}
        finally:
            dk.close()

    def finish(self, args: dict, ch) -> dict:
        """After the destination runs: remove the stopped source container, or keep it with its checkpoint."""
        cid, work = args["container_id"], self.work
        dk = Docker()
        try:
            criu.stop_frozen(dk, cid)
            if args.get("keep"):
                name = "migrated-" + time.strftime("%Y%m%d-%H%M%S")
                dest = dk.root_dir / "containers" / dk.inspect(cid)["Id"] / "checkpoints" / name
                dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                shutil.move(work / CHECKPOINT, dest)
                shutil.rmtree(work, ignore_errors=True)
                return {"kept": True, "checkpoint": name}
            _remove_container(dk, cid)
            shutil.rmtree(work, ignore_errors=True)
            return {"kept": False}
        finally:
            dk.close()

    def recover_lock(self, args: dict, ch) -> dict:
        """For recover: take the container's migration lock, so that a migration still in progress is left
        alone."""
        self.lock_container(args["container_id"], args.get("name") or args["container_id"])
        return {"locked": True}

    def end(self) -> None:
        """The session ended: nothing of this migration may go on from this agent."""
        if self.lazy is not None:
            self.lazy.stop()
            self.lazy = None
        self.cut_links()
        if self.predumped:   # pre-dumps of a migration that never froze the container (no journal): unneeded
            work = self.work
            if journal.read(work) is None:
                shutil.rmtree(work, ignore_errors=True)
        if self.lock is not None:
            self.lock.release()


# ---------------------------------------------------------------- what inspect tells
def _refuse_pending(cid: str, container: str) -> None:
    for pending in journal.journals("src", cid):
        raise PreflightError(f"an interrupted migration of {container} to {pending.get('destination')} is pending "
                             "here", container=container,
                             hint=f"run: cmigrate recover {os.environ.get('CMIGRATE_HOST') or 'HOST'} {container}")


def _refuse_exec_sessions(dk: Docker, info: dict, container: str) -> None:
    """A ``docker exec`` session is a process outside the container's process tree, which CRIU dumps: it would
    die with the source while its user's terminal hung up, and nothing would say so."""
    sessions = dk.exec_sessions(info)
    if sessions:
        raise PreflightError(f"container {container} has {len(sessions)} docker exec session(s) running ("
                             + "; ".join(sessions)[:200] + "): they cannot move", container=container,
                             hint="end them (or wait for them to end), then move the container")


def _refuse_shared(hc: dict, container: str) -> None:
    mode = hc.get("NetworkMode") or ""
    if mode.startswith(UNSUPPORTED_MODES) or hc.get("VolumesFrom") or hc.get("Links"):
        raise PreflightError(f"container {container} shares another container's namespace, volumes or links; "
                             "move those together (not supported yet)", container=container)


def describe(info: dict, image: dict) -> dict:
    return {
        "id": info["Id"], "name": info["Name"].lstrip("/"), "config": info["Config"], "host_config": info["HostConfig"],
        "networks": sorted((info.get("NetworkSettings") or {}).get("Networks") or {}),
        "image_id": info["Image"], "image_name": info["Config"]["Image"],
        "image_layers": (image.get("RootFS") or {}).get("Layers") or [], "image_bytes": image.get("Size", 0),
        "binds": [m["Source"] for m in info.get("Mounts", []) if m["Type"] == "bind"],
        "memory_bytes": memory_bytes(info["Id"]),
    }


def _endpoints(dk: Docker, info: dict) -> list[dict]:
    """Each network the container is on, with its address, MAC and the network's subnet: what --keep-ip keeps."""
    found = []
    for net, ep in sorted(((info.get("NetworkSettings") or {}).get("Networks") or {}).items()):
        try:
            ipam = (dk.api.inspect_network(ep.get("NetworkID") or net).get("IPAM") or {}).get("Config") or []
        except Exception:   # docker.errors.NotFound and friends: a network without IPAM config has no subnet
            ipam = []
        found.append({"network": net, "ip": ep.get("IPAddress") or "", "mac": ep.get("MacAddress") or "",
                      "subnet": ipam[0].get("Subnet") if ipam else None})
    return found


def _volumes(dk: Docker, info: dict, container: str) -> list[dict]:
    """The container's volumes, each of which moves with it: local, its alone, and only of what a tar carries."""
    volumes = []
    for m in info.get("Mounts", []):
        if m["Type"] != "volume":
            continue
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
        volumes.append({"name": m["Name"], "destination": m["Destination"], "source": m["Source"], "bytes": size})
    return volumes


def memory_bytes(cid: str) -> int:
    for path in (f"/sys/fs/cgroup/memory/docker/{cid}/memory.usage_in_bytes",
                 f"/sys/fs/cgroup/docker/{cid}/memory.current"):
        try:
            return int(Path(path).read_text())
        except (OSError, ValueError):
            continue
    return 0


# ---------------------------------------------------------------- helpers of the freeze and the end
def _netns_of(info: dict) -> str | None:
    pid = info["State"].get("Pid")
    return f"/proc/{pid}/ns/net" if pid else None


def _lock_network(netns: str | None, cid: str) -> None:
    """--keep-ip: from here the source neither answers for its address nor sends (agents/netlock.py)."""
    if netns is not None:
        try:
            netlock.lock(netns)
        except OSError as exc:
            raise CheckpointError(str(exc), container=cid) from exc


def _unlock_network(netns: str | None) -> None:
    """Undo ``_lock_network`` (nothing if it is not locked), and tell the segment the address is here again."""
    if netns is not None:
        netlock.open_up(netns)


def _runc_root(cid: str) -> Path | None:
    dk = Docker()
    try:
        return dk.runc_root(dk.inspect(cid))
    finally:
        dk.close()


def _save_layer(upper: Path, work: Path, cid: str) -> None:
    """The writable layer beside the images, of the same frozen instant; everything owner-only."""
    images = work / CHECKPOINT
    layer = rootfs.save(upper, images / META_DIR / "rootfs.tar")
    (images / META_DIR / "meta.json").write_text(json.dumps({"container_id": cid, "rootfs": layer}))
    lock_down(work)


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


def _remove_container(dk: Docker, cid: str) -> None:
    named = [m["Name"] for m in dk.inspect(cid).get("Mounts", []) if m["Type"] == "volume"]
    # force: should anything have started it again, it must not go on running beside the destination's
    dk._do("remove the source container", dk.api.remove_container, cid, v=True, force=True, container=cid)
    for vol in named:   # their data moved with the container (anonymous ones went with v=True)
        try:
            dk.api.remove_volume(vol)
        except Exception:  # already gone with the container
            pass


# ---------------------------------------------------------------- operations
def send_image(args: dict, ch) -> dict:
    """``docker save`` -> zstd -> data frames."""
    dk = Docker()
    try:
        writer = streams.FrameWriter(ch.stdout)
        raw = 0
        cctx = streams.compressor(args.get("level", 3), args.get("threads", -1))
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


def pending(args: dict, ch) -> list[dict]:
    """For recover: the migrations this host was the source of and that did not end (their journals)."""
    return journal.journals("src", args.get("container"))


OPERATIONS = {
    "source.inspect": on_migration(SourceMigration, SourceMigration.inspect),
    "source.pending": pending,
    "source.recover_lock": on_migration(SourceMigration, SourceMigration.recover_lock),
    "source.send_image": send_image,
    "source.dump": on_migration(SourceMigration, SourceMigration.dump),
    "source.predump": on_migration(SourceMigration, SourceMigration.predump),
    "source.connect": on_migration(SourceMigration, SourceMigration.connect),
    "source.send": on_migration(SourceMigration, SourceMigration.send),
    "source.wait_pages": on_migration(SourceMigration, SourceMigration.wait_pages),
    "source.resume": on_migration(SourceMigration, SourceMigration.resume),
    "source.finish": on_migration(SourceMigration, SourceMigration.finish),
}
