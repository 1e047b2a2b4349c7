"""The destination end of a migration (``dest.*`` operations).

In order: ``preflight`` (names, disk, trust, the image), ``receive_image`` if needed, ``create`` the container
before the freeze (and, in the gated restore, have Docker start its way to the restore at once), ``listen`` for the
direct link, ``receive`` and verify the files (over the direct link it restores at once), ``restore`` (relayed),
post-copy's ``wait_pages``, then ``commit``: the commit point. Until then whatever this agent made is provisional:
if its session ends first (the CLI died, the link was cut), it removes it by itself (``discard``). ``forget``,
``status``, ``abandon`` and ``pending`` serve ``cmigrate recover``.

One :class:`DestinationMigration` per migration holds what lives between those calls; the agent's session
(``agents/session.py``) maps migration ids to them and ends them with the session.
"""
from __future__ import annotations

import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import docker.errors
import zstandard

from agents import cpu, criu, journal, link, netlock, trust
from agents.checkpoint import GatedRestore, restore_from, restore_map_files, this_host
from agents.dockerd import FAST_RUNTIME, Docker
from agents.journal import CHECKPOINT, IMAGES, JOURNAL
from agents.session import on_migration
from migrate.errors import (DockerError, MigrationError, PreflightError, RestoreError, RollbackError,
                            TransportError)
from migrate.hostinfo import require_criu
from transport import streams
from transport.agent import DEFAULT_IO_TIMEOUT
from transport.errors import SessionLost


class DestinationMigration:
    """One migration as its destination agent holds it, until the commit: the container it created (and the
    volumes that came with it), the direct links' listeners, post-copy's lazy-pages daemon, and the restore Docker
    began early (held at the gate until the images are verified)."""

    def __init__(self, migration_id: str, session=None) -> None:
        journal.workdir(migration_id, "dst")   # validates the id
        self.id = migration_id
        self.made = False        # this agent made something of it here (a work dir, a container)
        self.committed = True    # nothing provisional here (yet)
        self.container_id: str | None = None
        self.volumes: list[str] = []
        self.listeners: dict[str, link.Listener] = {}   # data; pages (post-copy)
        self.lazy: criu.LazyPages | None = None
        self.gated: GatedRestore | None = None
        self.criu_extra = ""     # CRIU options for the restore (tcp-close: connections come back closed)
        self.keep_ip = False     # its network stays locked until the commit (post-copy: the restore); netlock.py

    @property
    def work(self) -> Path:
        return journal.workdir(self.id, "dst")

    def _begin(self) -> Path:
        """This agent makes something of the migration here: provisional until the commit."""
        if not self.work.is_dir():
            journal.workdir(self.id, "dst", create=True)
        self.made, self.committed = True, False
        return self.work

    # ---------------------------------------------------------------- before the freeze
    def create(self, args: dict, ch) -> dict:
        """Create (not start) the container with the source's configuration, before the freeze."""
        name = args["name"]
        dk = Docker()
        try:
            config = container_config(dk, args)
            self.keep_ip = bool(args.get("keep_ip"))
            if self.keep_ip:   # the same address and MAC (checked free by the preflight)
                ep = args["endpoints"][0]
                config["NetworkingConfig"] = {"EndpointsConfig": {ep["network"]: {
                    "IPAMConfig": {"IPv4Address": ep["ip"]}, "MacAddress": ep["mac"]}}}
                config["MacAddress"] = ep["mac"]   # where Docker < 25 reads it
            self.criu_extra = _restore_options(args, config["HostConfig"]["Runtime"], name)
            cid = self._create_container(dk, name, config, args)
            # a lease: until the commit, silence from the CLI for io_timeout means it is gone (a cut link shows no
            # end of the session for as long as TCP keeps retrying), and this agent then removes what it made
            _watch_link(ch, args)
            info = dk.inspect(cid)
            mounts = {m["Destination"]: m["Source"] for m in info.get("Mounts", []) if m["Type"] == "volume"}
            netns = self._arm_restore(info, args) if args.get("arm_restore") and \
                config["HostConfig"]["Runtime"] == FAST_RUNTIME else False
            return {"id": cid, "volume_sources": mounts, "armed": self.gated is not None, "netns": netns,
                    "file_locks": "file-locks" in self.criu_extra.splitlines()}
        finally:
            dk.close()

    def _create_container(self, dk: Docker, name: str, config: dict, args: dict) -> str:
        before = {v.name for v in dk.client.volumes.list()}
        resp = dk.api.post(dk.api._url("/containers/create"), params={"name": name}, json=config)
        dk._check(resp, f"create container {name}", name)
        cid = resp.json()["Id"]
        self.container_id = cid
        self.volumes = sorted({v.name for v in dk.client.volumes.list()} - before)
        journal.write(self._begin(), role="destination", migration_id=self.id, container_id=cid, name=name,
                      volumes=self.volumes, state="created", source=args.get("source"),
                      keep_ip=bool(args.get("keep_ip")), **journal.identity())
        return cid

    def _arm_restore(self, info: dict, args: dict) -> bool:
        """Docker's own way to the restore (~0.2 s here: rootfs, containerd task; and with ``netns`` the network
        namespace and its endpoint, ~0.1 s more) overlaps what comes before it, not the downtime. Whether the
        namespace is made here (the source then dumps it as external)."""
        mode = info["HostConfig"].get("NetworkMode") or "default"
        # Docker's prestart hook binds the namespace to its sandbox key: none without networking at all
        netns = (bool(args.get("netns")) and mode != "host" and not mode.startswith("container:")
                 and not info["Config"].get("NetworkDisabled"))
        if self.keep_ip and not netns:
            raise PreflightError("--keep-ip needs the network namespace made before the freeze, which this container "
                                 "cannot have here", container=info["Name"].lstrip("/"))
        self.gated = GatedRestore(info, self.work / CHECKPOINT, netns, self.criu_extra,
                                  netlock.RULES if self.keep_ip else None)
        if args.get("wait_gate", True):
            self.gated.wait_ready()
        return netns

    def listen(self, args: dict, ch) -> dict:
        """Wait for a direct data link from the source (agents/link.py): a unix socket in the work dir."""
        work = self._begin()
        kind = "pages" if args.get("kind") == "pages" else "data"   # pages: post-copy's link for lazy-pages
        if kind in self.listeners:
            self.listeners.pop(kind).close()
        listener = self.listeners[kind] = link.Listener(work, "pages.sock" if kind == "pages" else link.SOCKET_NAME)
        return {"socket": str(listener.path), "token": listener.token}

    # ---------------------------------------------------------------- the files, the restore
    def receive(self, args: dict, ch) -> dict:
        """The checkpoint's files (or a pre-dump's, with ``dir``), verified against the sender's manifest before
        anything uses them; over the direct link (``direct``), then the restore at once (``restore_id``)."""
        work = self.work
        if args.get("dir"):   # a pre-copy iteration: beside the final images, which link to it as their parent
            targets = {IMAGES: work / journal.predump_dir(args["dir"])}
            args = {k: v for k, v in args.items() if k not in ("restore_id", "lazy")}
        else:
            targets = {IMAGES: work / CHECKPOINT}
            for i, src in enumerate(args.get("volume_sources", [])):
                targets[f"vol{i}"] = Path(src)
        targets[IMAGES].mkdir(mode=0o700, exist_ok=True)
        listener = self.listeners.pop("data", None)
        if args.get("direct"):
            if listener is None:
                raise TransportError("no direct data link is waiting for this migration")
            return self._receive_direct(listener, targets, args, getattr(ch.stdin, "fd", None))
        if listener is not None:
            listener.close()
        return self._receive_relayed(targets, args, ch)

    def _receive_relayed(self, targets: dict[str, Path], args: dict, ch) -> dict:
        reader = streams.FrameReader(ch.stdin)
        _watch_link(ch, args)
        try:
            written = streams.receive_tree(reader, targets)
        except MigrationError as exc:
            if isinstance(exc, SessionLost):
                self.discard_quietly()
                raise
            reader.drain()
            raise
        except (OSError, zstandard.ZstdError) as exc:
            reader.drain()
            raise TransportError(f"the transfer stream is corrupt: {exc}") from exc
        end = reader.drain()
        ch.stream_read()   # verifying can take a while: the CLI reads our signs of life again
        if end.get("type") != "end":
            raise TransportError("the transfer was aborted by the sender")
        streams.verify(end.get("manifest") or {}, written)
        return {"files": len(written), "wire_bytes": reader.received}

    def _receive_direct(self, listener: link.Listener, targets: dict[str, Path], args: dict, cli: int | None) -> dict:
        try:
            result = _receive_verified(listener, targets, args, cli)
        except BaseException:
            self._cancel_gated()
            raise
        lazy_dir = self._start_lazy_pages(targets[IMAGES], args) if args.get("lazy") else None
        if args.get("restore_id"):   # everything verified: restore at once, no round trip to the CLI
            result |= self.restore({"container_id": args["restore_id"],
                                    "lazy_dir": str(lazy_dir) if lazy_dir else None}, None)
        return result

    def _start_lazy_pages(self, images: Path, args: dict) -> Path:
        """Post-copy: the lazy-pages daemon on the page link, for the restore to find (its dir)."""
        listener = self.listeners.pop("pages", None)
        if listener is None:
            raise TransportError("no page link is waiting for this post-copy migration")
        self.lazy = criu.LazyPages(listener.accept(args.get("io_timeout")), images)
        return self.lazy.dir

    def restore(self, args: dict, ch) -> dict:
        if self.gated is not None:   # Docker waits at the gate: let it restore
            gated, self.gated = self.gated, None
            gated.release(Path(args["lazy_dir"]) if args.get("lazy_dir") else None)
            # --keep-ip: the network opens at the commit point, so that a rollback before it finds the source's
            # connections as the peers left them; post-copy runs here from now on, whatever happens
            if self.keep_ip and args.get("lazy_dir"):
                _open_network(self.container_id)
            return {"running_at": time.time()}
        dk = Docker()
        try:
            lazy_dir = Path(args["lazy_dir"]) if args.get("lazy_dir") else None
            restore_from(dk, dk.inspect(args["container_id"]), self.work / CHECKPOINT, lazy_dir, self.criu_extra)
            return {"running_at": time.time()}
        finally:
            dk.close()

    def wait_pages(self, args: dict, ch) -> dict:
        """Post-copy: until the lazy-pages daemon has every page (it exits); the seconds since it started.
        Without its pages the container would go on with zeroed memory: if they stop, it must not run a moment
        longer."""
        lazy, self.lazy = self.lazy, None
        if lazy is None:
            raise TransportError("no post-copy transfer is running here")
        try:
            return {"seconds": lazy.wait(float(args.get("io_timeout") or DEFAULT_IO_TIMEOUT))}
        except MigrationError:
            self.discard_quietly()
            raise

    # ---------------------------------------------------------------- the commit, or not
    def commit(self, args: dict, ch) -> dict:
        """The commit point: from here the destination keeps the container, whatever happens to the CLI. Only
        the journal stays (state committed), until the source has let go (``dest.forget``)."""
        work = self.work
        _require_kept(self.container_id)
        journal.write(work, state="committed")
        if self.keep_ip:
            _open_network(self.container_id)
        if hasattr(ch.stdin, "timeout"):
            ch.stdin.timeout = None   # the lease ends: from here the container stays, whatever the CLI does
        for entry in work.iterdir():
            if entry.name != JOURNAL:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        self.committed = True
        return {"committed": True}

    def discard(self, args: dict | None = None, ch=None) -> dict:
        """Remove what this migration made here: the container, volumes it created, received files."""
        while self.listeners:
            self.listeners.popitem()[1].close()
        self._cancel_gated()   # before removing the container: Docker holds it while it waits at the gate
        if self.lazy is not None:
            self.lazy.kill()
            self.lazy = None
        removed = self._remove_container() if self.container_id else []
        if self.made:
            shutil.rmtree(self.work, ignore_errors=True)
        self.container_id, self.made, self.committed = None, False, True
        return {"removed": removed}

    def _remove_container(self) -> list[str]:
        removed = []
        dk = Docker()
        try:
            try:
                dk.api.remove_container(self.container_id, force=True, v=True)
                removed.append(self.container_id)
            except docker.errors.NotFound:
                pass
            except Exception as exc:   # dockerd down, say: the container may still be there, even run
                raise RollbackError(f"cannot remove the migration's container here: {exc}",
                                    hint="once dockerd runs again: cmigrate recover <source host>") from exc
            if dk.exists(self.container_id):   # the source is thawed on this word: make sure of it
                raise RollbackError("the migration's container is still here after Docker removed it",
                                    hint="cmigrate recover <source host>")
            for vol in self.volumes:
                try:
                    dk.api.remove_volume(vol, force=True)
                except Exception:
                    pass
        finally:
            dk.close()
        # an agent killed in the middle of the restore could not remove these itself
        for f in restore_map_files(self.container_id):
            f.unlink(missing_ok=True)
        return removed

    def discard_quietly(self) -> None:
        """Clean up on the way out of a failure: the failure is what gets reported."""
        try:
            self.discard()
        except MigrationError as exc:
            print(f"cmigrate-agent: {exc.line()}", file=sys.stderr)

    def abandon(self, args: dict, ch) -> dict:
        """For recover: an uncommitted migration whose agent died without cleaning up: remove what it made."""
        found = journal.read(self.work)
        if found is not None and found.get("state") == "committed":
            raise MigrationError("this migration was committed here: its container stays", container=found["name"])
        if found is None:
            shutil.rmtree(self.work, ignore_errors=True)
            return {"removed": []}
        # the agent that made it may still be at work (its CLI lost the session mid-call): it could restore the
        # container after we removed it, so it goes first
        stopped = journal.stop_owner(found)
        self.container_id, self.volumes, self.made = found["container_id"], found.get("volumes") or [], True
        return self.discard() | {"stopped_agent": stopped}

    def _cancel_gated(self) -> None:
        if self.gated is not None:
            self.gated.cancel()
            self.gated = None

    def end(self) -> None:
        """The session ended: if the CLI went away before committing, nothing of this migration may stay."""
        while self.listeners:
            self.listeners.popitem()[1].close()
        if not self.committed:
            self.discard_quietly()


# ---------------------------------------------------------------- helpers
def _restore_options(args: dict, runtime: str, name: str) -> str:
    """CRIU's options for this migration's restore, which only the cmigrate-runc runtime can hand to CRIU: always
    file-locks (the source dumps the locks its processes hold, since this restore can take them back); and for a
    container with Docker's init (``--init``), CRIU's older mount engine: CRIU 4.2's mount-v2 takes the container's
    /etc/hosts, hostname and resolv.conf for bind mounts of the init's binary (a file mount of the host's
    /usr/bin/docker-init) and fails the restore ("Can't remount ... with MS_PRIVATE: No such file or directory")."""
    option = "tcp-close" if args.get("tcp_close") else "tcp-established" if args.get("keep_ip") else None
    locks = "file-locks\n" if runtime == FAST_RUNTIME else ""
    if runtime == FAST_RUNTIME and (args.get("host_config") or {}).get("Init"):
        locks += "mntns-compat-mode\n"
    if option is None:
        return locks
    if runtime != FAST_RUNTIME:
        raise PreflightError(f"--{'tcp-close' if args.get('tcp_close') else 'keep-ip'} needs the {FAST_RUNTIME} "
                             f"runtime on this host, to pass CRIU's {option} to the restore", container=name,
                             hint="install cmigrate here with ./install.sh")
    return option + "\n" + locks


def _require_kept(container_id: str) -> None:
    """Before the commit: this host's Docker still takes new connections and runs the container. A dockerd told
    to stop closes its socket at once, yet a request already under way (the restore's ``docker start``) goes on
    and succeeds: then the daemon stops every container on its way out, this one too, after the commit had let
    the source go."""
    try:
        dk = Docker(timeout=30)   # a client of its own: a new connection, not one the daemon let live on
    except MigrationError as exc:
        raise DockerError(f"Docker here stopped serving before the commit point: {exc}") from exc
    try:
        if not dk.inspect(container_id)["State"].get("Running"):
            raise RestoreError("the restored container stopped before the commit point")
    except DockerError as exc:
        raise DockerError(f"Docker here stopped serving before the commit point: {exc}") from exc
    finally:
        dk.close()


def _open_network(container_id: str) -> None:
    """Unlock the container's network (agents/netlock.py) and announce its addresses, if it is locked."""
    dk = Docker()
    try:
        pid = dk.inspect(container_id)["State"].get("Pid")
    except MigrationError:
        return   # gone: nothing to open
    finally:
        dk.close()
    if pid:
        netlock.open_up(f"/proc/{pid}/ns/net")


def _watch_link(ch, args: dict) -> None:
    """While data flows in, silence for longer than the CLI's io_timeout means the link is gone."""
    if hasattr(ch.stdin, "timeout"):
        ch.stdin.timeout = args.get("io_timeout")


def _receive_verified(listener: link.Listener, targets: dict[str, Path], args: dict, cli: int | None) -> dict:
    conn = listener.accept(args.get("io_timeout"))
    reader = streams.FrameReader(conn)
    try:
        if args.get("pages"):
            criu.page_server(conn, targets[IMAGES], cli, args.get("io_timeout"))
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


def container_config(dk: Docker, args: dict) -> dict:
    """What to create the container from here: the source's configuration (``config``, ``host_config``) on
    ``image``, its volumes made empty, judged for trust (again: this is what is applied, whatever the preflight was
    shown), on its user-defined network, under cmigrate-runc where that is installed."""
    config = dict(args["config"])
    config["Image"] = args["image"]
    config["HostConfig"] = _volumes_without_copy(dict(args["host_config"]), config.get("Volumes") or {})
    trust.require_trusted(config["HostConfig"], args["name"], args.get("source"), bool(args.get("allow_privileged")))
    networks = args.get("networks") or []
    if len(networks) > 1 or (networks and networks[0] not in ("bridge", "host", "none")):
        config["NetworkingConfig"] = {"EndpointsConfig": {networks[0]: {}}}
    runtime = config["HostConfig"].get("Runtime") or "runc"
    if runtime in ("runc", FAST_RUNTIME):   # runc either way; restore faster where the wrapper is installed
        config["HostConfig"]["Runtime"] = FAST_RUNTIME if dk.has_fast_runtime() else "runc"
    return config


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


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


# ---------------------------------------------------------------- operations that need no migration object
def preflight(args: dict, ch) -> dict:
    """Can this host take the container: CRIU, Docker, trust, no name or volume in the way, binds, networks and
    disk there; and which image to create it from (None: it must come)."""
    name = args["name"]
    dk = Docker()
    try:
        dk.require_checkpointing()
        found = require_criu(this_host())
        trust.require_trusted(args.get("host_config") or {}, name, args.get("source"),
                              bool(args.get("allow_privileged")))
        _refuse_in_the_way(dk, name, args)
        if args.get("keep_ip"):
            _require_address(dk, name, args.get("endpoints") or [])
        _require_disk(dk, name, int(args.get("bytes_needed", 0)))
        if args.get("cpuinfo") and not args.get("ignore_cpu"):
            _require_cpu(name, args["cpuinfo"], args.get("source") or "the source")
        image = _image_match(dk, args["image_id"], args["image_name"], args.get("image_layers", []))
        return {"image": image, "criu": found.to_dict(), "docker_version": dk.info().get("ServerVersion"),
                "platform": dk.versions()}
    finally:
        dk.close()


def _refuse_in_the_way(dk: Docker, name: str, args: dict) -> None:
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


def _require_address(dk: Docker, name: str, endpoints: list[dict]) -> None:
    """--keep-ip: a network here with the same name and subnet, and the address free on it."""
    if len(endpoints) != 1 or not endpoints[0].get("ip") or not endpoints[0].get("subnet"):
        raise PreflightError("--keep-ip moves a container on exactly one user-defined network with an IPv4 address",
                             container=name)
    ep = endpoints[0]
    nets = dk.client.networks.list(names=[ep["network"]])
    subnets = [c.get("Subnet") for c in ((nets[0].attrs.get("IPAM") or {}).get("Config") or [])] if nets else []
    if ep["subnet"] not in subnets:
        raise PreflightError(f"--keep-ip: this host has no network {ep['network']} with subnet {ep['subnet']}",
                             container=name, hint="create it with the same subnet on the same segment (macvlan, "
                                                  "ipvlan), or migrate without --keep-ip")
    taken = dk.api.inspect_network(nets[0].id).get("Containers") or {}
    for other in taken.values():
        if (other.get("IPv4Address") or "").split("/")[0] == ep["ip"]:
            raise PreflightError(f"--keep-ip: address {ep['ip']} is in use here, by {other.get('Name')}",
                                 container=name)


def _require_cpu(name: str, source_cpuinfo: str, source: str) -> None:
    lacking = cpu.missing(source_cpuinfo)
    if lacking:
        shown = ", ".join(lacking[:6]) + (f" and {len(lacking) - 6} more" if len(lacking) > 6 else "")
        raise PreflightError(f"this host's CPU lacks what {source}'s has: {shown}; processes that use it would die "
                             "of SIGILL here", container=name,
                             hint="move it to a host with at least the same CPU features, or --ignore-cpu if you "
                                  "know its processes do not use them")


def _require_disk(dk: Docker, name: str, need: int) -> None:
    for path in sorted({dk.root_dir, _existing(journal.work_root())}):   # the images land in the work root
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
        if free < need:
            raise PreflightError(f"not enough disk at {path}: {free // 2**20} MiB free, {need // 2**20} MiB needed",
                                 container=name)


def receive_image(args: dict, ch) -> dict:
    reader = streams.FrameReader(ch.stdin)
    dk = Docker()
    try:
        dctx = zstandard.ZstdDecompressor()

        def chunks():
            with dctx.stream_reader(reader, closefd=False) as z:
                while chunk := z.read(streams.CHUNK):
                    yield chunk
            ch.stream_read()   # all of it read; Docker's import may go on a while: the CLI reads our signs of life

        try:
            for _ in dk.api.load_image(chunks()):
                pass
        except MigrationError:
            raise
        except Exception as exc:
            raise DockerError(f"docker load failed: {exc}") from exc
        end = reader.drain()
        ch.stream_read()   # (again, where Docker failed before the end)
        if end.get("type") != "end":
            raise TransportError("the image stream was aborted")
        dk.client.images.get(args["image_id"])
        return {"wire_bytes": reader.received}
    finally:
        dk.close()


def forget(args: dict, ch) -> dict:
    """The migration is over on both hosts: its journal goes (and a container still locked for the move, its
    agent having died between the commit and the unlock, opens)."""
    work = journal.workdir(args["migration_id"], "dst")
    found = journal.read(work) or {}
    if found.get("keep_ip") and found.get("state") == "committed":
        _open_network(found["container_id"])
    shutil.rmtree(work, ignore_errors=True)
    return {"forgotten": True}


def status(args: dict, ch) -> dict:
    """For recover: did this host commit the migration, and does its container run?"""
    found = journal.read(journal.workdir(args["migration_id"], "dst"))
    if found is None:
        return {"known": False, "committed": False, "running": False}
    dk = Docker()
    try:
        try:
            running = bool(dk.inspect(found["container_id"])["State"].get("Running"))
        except MigrationError:
            running = False
    finally:
        dk.close()
    return {"known": True, "committed": found.get("state") == "committed", "running": running,
            "container_id": found["container_id"]}


def pending(args: dict, ch) -> list[dict]:
    """For recover: migrations this host was the destination of and committed, whose journal is still here
    (the source let go, but the word never reached this host)."""
    return [j for j in journal.journals("dst", args.get("container")) if j.get("state") == "committed"
            and j.get("source")]


def discard(args: dict, ch) -> dict:
    """Remove what this session made of the migration here (nothing if it made nothing)."""
    m = ch.session.find(DestinationMigration, args.get("migration_id"))
    return m.discard() if m is not None else {"removed": []}


OPERATIONS = {
    "dest.preflight": preflight,
    "dest.receive_image": receive_image,
    "dest.create": on_migration(DestinationMigration, DestinationMigration.create),
    "dest.listen": on_migration(DestinationMigration, DestinationMigration.listen),
    "dest.receive": on_migration(DestinationMigration, DestinationMigration.receive),
    "dest.restore": on_migration(DestinationMigration, DestinationMigration.restore),
    "dest.wait_pages": on_migration(DestinationMigration, DestinationMigration.wait_pages),
    "dest.commit": on_migration(DestinationMigration, DestinationMigration.commit),
    "dest.forget": forget,
    "dest.status": status,
    "dest.abandon": on_migration(DestinationMigration, DestinationMigration.abandon),
    "dest.discard": discard,
    "dest.pending": pending,
}
