"""Checkpoint and restore on this host: Docker's commands with its gaps closed.

Beyond ``docker checkpoint``: the writable layer is saved with the memory (and put back on restore, so a rewind
rolls files back too); a checkpoint in a custom directory can be restored; the same checkpoint can be restored
again and again, also into a container that was removed and created anew; checkpoint directories are 0700.

Layout of a checkpoint ``<dir>/<name>/``: CRIU's images as Docker writes them, plus ``cmigrate/meta.json`` and
``cmigrate/rootfs.tar`` (the writable layer).
"""
from __future__ import annotations

import json
import os
import select
import shutil
import socket
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from agents import file_locks, images, rootfs, watches
from agents.paths import replace_json, require_private_dir
from agents.dockerd import FAST_RUNTIME, Docker, criu_config_for_cmigrate, criu_failure, criu_log_excerpt
from migrate import __version__
from migrate.errors import (CheckpointError, DockerError, MigrationError, PreflightError, RestoreError,
                            RollbackError, UsageError)
from migrate.hostinfo import require_criu
from migrate.names import validate_checkpoint, validate_container
from transport.hosts import LocalHost

META_DIR = "cmigrate"
TEMP_PREFIX = "cmigrate-restore-"


def _checkpoint_dir(args: dict) -> Path | None:
    d = args.get("checkpoint_dir")
    if not d:
        return None
    p = Path(d)
    if not p.is_absolute():
        raise UsageError(f"--checkpoint-dir must be an absolute path, got {d!r}")
    return require_private_dir(p, "--checkpoint-dir")


def _base(dk: Docker, inspect: dict, custom: Path | None) -> Path:
    return custom if custom else container_checkpoints(dk, inspect)


def container_checkpoints(dk: Docker, inspect: dict) -> Path:
    """Where Docker keeps the container's own checkpoints."""
    return dk.root_dir / "containers" / inspect["Id"] / "checkpoints"


def this_host() -> LocalHost:
    """This host, named as the CLI calls it (the lab's sshd sets CMIGRATE_HOST), for error messages."""
    return LocalHost(os.environ.get("CMIGRATE_HOST", "local"))


def _preflight(dk: Docker) -> None:
    dk.require_checkpointing()
    require_criu(this_host())


def dir_size(path: Path) -> int:
    """Bytes in the files below ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _criu_failure(cls, what: str, exc: DockerError, container: str):
    """A dump or restore Docker ran failed: CRIU's word, from the log Docker's error names (criu_failure)."""
    log, excerpt = criu_log_excerpt(exc.detail or exc.message)
    if not excerpt:
        return cls(f"{what} failed: {exc.message.split(' failed: ', 1)[-1]}", container=container,
                   detail=exc.detail)
    return criu_failure(cls, f"{what} of {container}", log, exc.message, container=container)


# ---------------------------------------------------------------------- create
def create(args: dict, ch) -> dict:
    container, name = args["container"], validate_checkpoint(args["name"])
    leave_running = bool(args.get("leave_running"))
    custom = _checkpoint_dir(args)
    dk = Docker()
    try:
        info = dk.inspect_running(container)
        _preflight(dk)
        upper = rootfs.upper_dir(info)
        base = _base(dk, info, custom)
        target = base / name
        if target.exists():
            raise PreflightError(f"checkpoint {name} already exists in {base}", container=container)
        if custom:
            custom.mkdir(mode=0o700, parents=True, exist_ok=True)
        options = _dump_options(info, container)
        started = time.monotonic()
        try:
            policy = docker_dump(dk, info, container, name, custom, target, exit=not leave_running)
        finally:
            restore_map_files(info["Id"]).dump.unlink(missing_ok=True)
        try:
            layer = rootfs.save(upper, target / META_DIR / "rootfs.tar")
        except MigrationError:
            # files untouched: the images still fit them
            resume_after_failure(dk, info, container, target, policy)
            shutil.rmtree(target, ignore_errors=True)
            raise
        if leave_running:
            dk.unpause(info["Id"])
        # else its restart policy stays set aside ("no") until a restore from a checkpoint puts it back: a
        # daemon restarting (the host's reboot) would start a fresh copy under always/unless-stopped
        frozen = time.monotonic() - started
        meta = {"cmigrate": __version__, "name": name, "container": info["Name"].lstrip("/"),
                "container_id": info["Id"], "image": info["Config"]["Image"], "created": time.time(),
                "leave_running": leave_running, "tty": bool(info["Config"].get("Tty")), "rootfs": layer,
                "criu_options": options.splitlines(), "restart_policy": policy}
        (target / META_DIR / "meta.json").write_text(json.dumps(meta, indent=1))
        lock_down(target)
        return {"name": name, "dir": str(target), "bytes": dir_size(target), "frozen_seconds": frozen,
                "running": leave_running}
    finally:
        dk.close()


def _dump_options(info: dict, container: str) -> str:
    """CRIU's options for a checkpoint of this container, handed to the dump by the cmigrate-runc runtime (a map
    file it reads on ``checkpoint``): held file locks (``file-locks``) and the paths of watched files
    (agents/watches.py). Docker's own checkpoint of a container under plain runc can pass CRIU nothing: one that
    holds locks, or watches files outside /etc (CRIU's irmap looks there only), is refused before it is paused."""
    pid = info["State"]["Pid"]
    hints = watches.irmap_hints(pid, container)
    locks = file_locks.held(pid)
    if (info["HostConfig"].get("Runtime") or "") == FAST_RUNTIME:
        options = ("file-locks\n" if locks else "") + hints
        if options:
            RESTORE_MAPS.mkdir(mode=0o700, parents=True, exist_ok=True)
            restore_map_files(info["Id"]).dump.write_text(options)
        return options
    unseen = [line.split(" ", 1)[1] for line in hints.splitlines() if not line.split(" ", 1)[1].startswith("/etc")]
    if locks or unseen:
        what = "holds file locks (" + "; ".join(locks)[:200] + ")" if locks else \
            "watches files CRIU cannot find by itself (" + ", ".join(unseen)[:200] + ")"
        raise PreflightError(f"container {container} {what}, which Docker's checkpoint cannot carry under the "
                             f"{info['HostConfig'].get('Runtime') or 'runc'} runtime", container=container,
                             hint=f"run the container with --runtime {FAST_RUNTIME} (./install.sh registers it), "
                             "or move it with cmigrate, which dumps it itself")
    return ""


def docker_dump(dk: Docker, info: dict, container: str, name: str, checkpoint_dir: Path | None, target: Path,
                exit: bool, on_policy=None) -> dict | None:
    """Docker's own checkpoint ``name`` (into ``checkpoint_dir``, else the container's; it lands in ``target``),
    frozen first, so that the files saved after it belong to the same instant as the memory. With ``exit`` the
    container stops, and may not be started afresh meanwhile: its restart policy is set aside (``on_policy`` hears
    of it first, for a journal) and returned. On failure the container runs on, with its policy back, and
    ``target`` is gone."""
    policy = None
    if exit:
        old = dk.inspect(info["Id"])["HostConfig"].get("RestartPolicy") or {"Name": "no"}
        if on_policy is not None:
            on_policy(old)
        policy = dk.set_restart_policy(info["Id"], None)
    try:
        dk.pause(info["Id"])
        dk.checkpoint_create(info["Id"], name, str(checkpoint_dir) if checkpoint_dir else None, exit=exit)
        if exit:
            dk.wait_stopped(info["Id"])
    except BaseException as exc:   # a failed pause too
        resume_after_failure(dk, info, container, target, policy)
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, DockerError):
            raise _criu_failure(CheckpointError, "checkpoint", exc, container) from exc
        raise
    return policy


def lock_down(target: Path) -> None:
    """Memory images hold the container's secrets: owner-only, all the way down."""
    os.chmod(target, 0o700)
    for root, dirs, files in os.walk(target):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o700)
        for f in files:
            os.chmod(os.path.join(root, f), 0o600)


def resume_after_failure(dk: Docker, info: dict, container: str, images: Path, policy: dict | None) -> None:
    """After a failed checkpoint the container must run as before: unpause it, or restore it from the images;
    and get its restart policy back."""
    try:
        _resume(dk, info, container, images)
    finally:
        if policy:
            dk.set_restart_policy(info["Id"], policy)


def _resume(dk: Docker, info: dict, container: str, images: Path) -> None:
    state = dk.inspect(info["Id"])["State"]
    if state.get("Paused"):
        dk.unpause(info["Id"])
    elif not state.get("Running"):
        if not (images / "inventory.img").exists():
            raise RollbackError(f"checkpoint failed and container {container} stopped without usable images",
                                container=container)
        try:
            _start_from(dk, info, images)
        except MigrationError as exc:
            raise RollbackError(f"checkpoint failed and container {container} could not be restored from its "
                                f"images ({exc.message}); they are kept in {images}", container=container) from exc


# ---------------------------------------------------------------------- ls / rm
def list_checkpoints(args: dict, ch) -> list[dict]:
    container = args["container"]
    custom = _checkpoint_dir(args)
    dk = Docker()
    try:
        info = dk.inspect(container)
        base = _base(dk, info, custom)
    finally:
        dk.close()
    found = []
    if base.is_dir():
        for entry in sorted(base.iterdir()):
            if not entry.is_dir() or entry.name.startswith(TEMP_PREFIX) or not (entry / "inventory.img").exists():
                continue
            created = entry.stat().st_mtime
            meta_file = entry / META_DIR / "meta.json"
            if meta_file.exists():
                try:
                    created = json.loads(meta_file.read_text()).get("created", created)
                except ValueError:
                    pass
            found.append({"name": entry.name, "created": created, "bytes": dir_size(entry), "dir": str(entry)})
    return sorted(found, key=lambda c: c["created"])


def remove(args: dict, ch) -> dict:
    name = args["name"]
    target = _existing(args, name)[0]
    shutil.rmtree(target)
    return {"name": name, "removed": str(target)}


# ---------------------------------------------------------------------- restore
def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link CRIU's images into ``dst`` (copy across filesystems); cmigrate's own files stay out."""
    dst.mkdir(mode=0o700)
    for entry in src.iterdir():
        if entry.name == META_DIR:
            continue
        if entry.is_dir():
            shutil.copytree(entry, dst / entry.name, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, dst / entry.name)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


RESTORE_MAPS = Path("/run/cmigrate/restore")


class RestoreMapFiles(NamedTuple):
    """What a restore of one container tells the cmigrate-runc wrapper: the images' directory, CRIU's options for
    that restore, the lazy-pages daemon's directory (post-copy); and for a restore begun before its images arrived,
    the gate (a socket: "go" from the destination agent lets runc restore) and a marker that the source dumped the
    network namespace as external (the wrapper makes it before the gate: restore_gate.py)."""
    mapping: Path
    conf: Path
    lazy: Path
    gate: Path
    netns: Path
    lock: Path   # the network lock's nft rules: restore_gate.py locks the new namespace before the endpoint is in
    dump: Path   # CRIU's options for a checkpoint Docker runs (cmigrate checkpoint create)


def restore_map_files(cid: str) -> RestoreMapFiles:
    return RestoreMapFiles(RESTORE_MAPS / cid, RESTORE_MAPS / f"{cid}.conf", RESTORE_MAPS / f"{cid}.lazy",
                           RESTORE_MAPS / f"{cid}.gate", RESTORE_MAPS / f"{cid}.netns", RESTORE_MAPS / f"{cid}.lock",
                           RESTORE_MAPS / f"{cid}.dump")


def _start_from(dk: Docker, info: dict, source: Path, lazy_dir: Path | None = None, criu_extra: str = "") -> None:
    """``docker start --checkpoint`` from any directory (``criu_extra``: CRIU options for this restore, under
    cmigrate-runc only).

    Docker restores only from the container's own checkpoints folder, and refuses a checkpoint whose content
    containerd already holds ("content sha256:... already exists"): it gets a fresh copy each time, under a name
    of its own and with a nonce so that its digest is new. A container running under cmigrate-runc gets only a
    stub: the wrapper has runc read the images from ``source`` itself, saving Docker's two copies.
    """
    temp_name = TEMP_PREFIX + uuid.uuid4().hex[:12]
    temp = dk.root_dir / "containers" / info["Id"] / "checkpoints" / temp_name
    temp.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fast = (info["HostConfig"].get("Runtime") or "") == FAST_RUNTIME
    mapping, conf, lazy, _, netns, lock, _ = restore_map_files(info["Id"])
    if lazy_dir is not None and not fast:
        raise RestoreError("a post-copy restore needs the cmigrate-runc runtime on this host",
                           hint="register it with dockerd (see README)")
    try:
        if fast:
            temp.mkdir(mode=0o700)
            RESTORE_MAPS.mkdir(mode=0o700, parents=True, exist_ok=True)
            conf.write_text(criu_config_for_cmigrate() + _cgroup_root(dk, info) + criu_extra)
            if lazy_dir is not None:   # the wrapper adds --lazy-pages and points CRIU at our lazy-pages daemon
                lazy.write_text(str(lazy_dir))
            mapping.write_text(str(source))
        else:
            _link_tree(source, temp)
        (temp / "cmigrate-nonce").write_text(temp_name)
        dk.start_from_checkpoint(info["Id"], temp_name)
    finally:
        for f in (mapping, conf, lazy, netns, lock):
            f.unlink(missing_ok=True)
        shutil.rmtree(temp, ignore_errors=True)
        _remove_containerd_copy(temp_name)


def _cgroup_root(dk: Docker, info: dict) -> str:
    """A CRIU option for the restore on cgroup v2: runc 1.1 tells CRIU the new container's cgroups on v1 only, so
    on v2 CRIU put the task back into the cgroup it was dumped from, the source container's, named after it: on
    another host a stray cgroup outside Docker's, and where both containers share a kernel (the lab) the frozen
    source itself, where the restored task froze too and the restore hung. Name the destination's own."""
    daemon = dk.info()
    if str(daemon.get("CgroupVersion")) != "2":
        return ""
    parent = info["HostConfig"].get("CgroupParent") or ""
    if daemon.get("CgroupDriver") == "systemd":
        return f"cgroup-root {_slice_path(parent or 'system.slice')}/docker-{info['Id']}.scope\n"
    return f"cgroup-root /{(parent or 'docker').strip('/')}/{info['Id']}\n"


def _slice_path(name: str) -> str:
    """systemd's path of a slice: a-b.slice is /a.slice/a-b.slice."""
    parts = name.removesuffix(".slice").split("-")
    return "".join("/" + "-".join(parts[:i + 1]) + ".slice" for i in range(len(parts)))


def _remove_containerd_copy(temp_name: str) -> None:
    """containerd 1.6 unpacks each restored checkpoint into $XDG_RUNTIME_DIR or /tmp (``ctrd-checkpoint*``) and
    never removes it (containerd#10166): a full copy of the images leaked per restore. Ours carry our nonce."""
    for tmp in {os.environ.get("CMIGRATE_CONTAINERD_TMP") or "/tmp", "/tmp"}:
        for leaked in Path(tmp).glob("ctrd-checkpoint*"):
            if _read_root_file(leaked / "cmigrate-nonce", len(temp_name) + 1) == temp_name.encode():
                shutil.rmtree(leaked, ignore_errors=True)


def _read_root_file(path: Path, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of ``path`` if it is a regular file of root's, in a directory of root's; else None.
    /tmp is everyone's: a FIFO planted there would block a plain open forever, a symlink lead elsewhere."""
    try:
        if os.lstat(path.parent).st_uid != 0:
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def restore_from(dk: Docker, info: dict, images: Path, lazy_dir: Path | None = None, criu_extra: str = "") -> None:
    """Restore a stopped container from ``images``: its writable layer first (put back as it was if the restore
    fails), then memory and processes; it must be running afterwards. With ``lazy_dir`` (post-copy) its memory
    comes later, on demand, from the lazy-pages daemon listening there."""
    name = info["Name"].lstrip("/")
    layer = images / META_DIR / "rootfs.tar"
    replaced = rootfs.Replaced(rootfs.upper_dir(info), layer) if layer.exists() else None
    try:
        _start_from(dk, info, images, lazy_dir, criu_extra)
    except MigrationError as exc:
        if replaced:
            replaced.undo()
        if isinstance(exc, DockerError):
            raise _criu_failure(RestoreError, "restore", exc, name) from exc
        raise
    if replaced:
        replaced.commit()
    _check_running(dk, info)


def _check_running(dk: Docker, info: dict) -> None:
    name = info["Name"].lstrip("/")
    if not dk.inspect(info["Id"])["State"].get("Running"):
        raise RestoreError(f"container {name} stopped right after its restore", container=name)


# From "go" at the gate to a running container: CRIU restores the memory (seconds per GiB at worst, through
# Docker's slow path tens of seconds); past this, something hangs.
RESTORE_TIMEOUT = 600.0


class GatedRestore:
    """A restore begun before its images have arrived, so that Docker's own path to ``runc restore`` (rootfs mount,
    network endpoint, containerd task and shim: ~60 ms here) overlaps the dump and the transfer instead of adding
    to the downtime. ``docker start --checkpoint`` runs in a thread; the cmigrate-runc wrapper stops before runc
    and connects to this agent's gate socket; ``release()`` puts the writable layer in (through the mounted
    overlay: Docker mounted it) and says "go". Fail-safe: when this agent dies or ``cancel()`` closes the gate,
    the wrapper reads end-of-file (or cannot connect) and refuses the restore: nothing runs from images that were
    not verified, and nothing waits forever."""

    def __init__(self, info: dict, images: Path, netns: bool = False, criu_extra: str = "",
                 lock_rules: str | None = None) -> None:
        """``netns``: the source dumps the network namespace as external; the wrapper makes it before the gate.
        ``criu_extra``: CRIU options for this restore (``tcp-close``, say). ``lock_rules``: nft rules the wrapper
        locks the new namespace with before the endpoint moves in (agents/netlock.py; with ``netns`` only)."""
        if (info["HostConfig"].get("Runtime") or "") != FAST_RUNTIME:
            raise RestoreError("a gated restore needs the cmigrate-runc runtime")
        rootfs.upper_dir(info)   # overlay2 only, as for any restore of ours
        self.info, self.images, self.error, self.criu_extra = info, images, None, criu_extra
        self.merged = Path(info["GraphDriver"]["Data"]["MergedDir"])
        files = restore_map_files(info["Id"])
        self.path, self.netns, self.lazy, self.made_netns = files.gate, files.netns, files.lazy, netns
        self.lock = files.lock
        RESTORE_MAPS.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self.netns.unlink(missing_ok=True)
        self.lock.unlink(missing_ok=True)
        if netns:
            self.netns.write_text("external\n")
            if lock_rules:
                self.lock.write_text(lock_rules)
        self.conn: socket.socket | None = None
        self.sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(1)
        self.thread = threading.Thread(target=self._start, name="gated-restore", daemon=True)
        self.thread.start()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until Docker has reached the gate: everything of the restore that can come before the images
        (rootfs, network namespace and endpoint, containerd task) is done, none of it in the frozen time."""
        deadline = time.monotonic() + timeout
        while self.conn is None and self.thread.is_alive():
            if time.monotonic() > deadline:
                self.cancel()
                raise RestoreError(f"Docker did not reach the restore within {timeout:.0f} s")
            if select.select([self.sock], [], [], 0.05)[0]:
                self.conn, _ = self.sock.accept()
        if self.conn is None:   # Docker gave up before the gate: say why, before anything is frozen
            self.cancel()
            exc = self.error
            if isinstance(exc, DockerError):
                raise _criu_failure(RestoreError, "restore", exc, self.info["Name"].lstrip("/")) from exc
            raise exc if exc is not None else RestoreError("Docker's restore ended before its gate")

    def _start(self) -> None:
        dk = Docker(timeout=None)   # it waits at the gate for as long as the dump and the transfer take
        try:
            _start_from(dk, self.info, self.images, criu_extra=self.criu_extra)
        except BaseException as exc:   # reported by release()
            self.error = exc
        finally:
            dk.close()

    def release(self, lazy_dir: Path | None = None, timeout: float = 60.0) -> None:
        """The images are complete and verified: wait for Docker to reach the gate, put the writable layer in,
        let runc restore, and wait for the container to run. With ``lazy_dir`` (post-copy) its memory comes
        later, from the lazy-pages daemon listening there."""
        self.wait_ready(timeout)   # Docker waits at the gate (or this raised)
        conn, self.conn = self.conn, None
        try:
            layer = self.images / META_DIR / "rootfs.tar"
            if layer.exists():
                rootfs.apply_to_mounted(self.merged, layer)
            if lazy_dir is not None:   # the wrapper reads it past the gate and adds --lazy-pages
                self.lazy.write_text(str(lazy_dir))
            conn.sendall(b"go\n")
        except BaseException:
            self.cancel()
            raise
        finally:
            conn.close()
        self.thread.join(RESTORE_TIMEOUT)
        if self.thread.is_alive():   # Docker's restore hangs (CRIU stuck, say): the caller discards the container
            self._close()
            raise RestoreError(f"Docker's restore did not end within {RESTORE_TIMEOUT:.0f} s after the gate opened")
        self._close()
        exc = self.error
        if isinstance(exc, DockerError):
            raise _criu_failure(RestoreError, "restore", exc, self.info["Name"].lstrip("/")) from exc
        if exc is not None:
            raise exc
        dk = Docker()
        try:
            _check_running(dk, self.info)
            runc_root = dk.runc_root(self.info)
            if self.made_netns and runc_root is not None:
                forget_netns_path(runc_root / self.info["Id"] / "state.json")
        finally:
            dk.close()

    def cancel(self) -> None:
        """Refuse the restore (the wrapper sees the gate closed) and wait for Docker to give up."""
        self._close()
        self.thread.join(30)

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.path.unlink(missing_ok=True)
        self.netns.unlink(missing_ok=True)
        self.lock.unlink(missing_ok=True)


def forget_netns_path(state_file: Path) -> None:
    """runc keeps the network namespace's path the restore was given (restore_gate.py) in its state, and would
    then dump that namespace as external in every later checkpoint, which Docker alone cannot restore. Once the
    container runs, make it what Docker made: a namespace of its own, no path (dockerd holds it as sandbox key).
    Docker waits for nothing here: its start has returned, no runc command is running for this container."""
    try:
        state = json.loads(state_file.read_text())
        for ns in state["config"]["namespaces"]:
            if ns["type"] == "NEWNET":
                ns["path"] = ""
        replace_json(state_file, state, state_file.stat().st_mode & 0o7777)
    except (OSError, ValueError, KeyError) as exc:
        raise RestoreError(f"cannot update runc's state of the restored container: {exc}") from exc


def restore(args: dict, ch) -> dict:
    container, name = args["container"], validate_checkpoint(args["name"])
    custom = _checkpoint_dir(args)
    dk = Docker()
    try:
        info = dk.inspect(container)
        if info["State"].get("Running"):
            raise PreflightError(f"container {container} is already running", container=container)
        _preflight(dk)
        base = _base(dk, info, custom)
        source = base / name
        if not (source / "inventory.img").exists():
            raise PreflightError(f"no checkpoint {name} for container {container} in {base}", container=container)
        started = time.monotonic()
        # locks held at the checkpoint are held again (file-locks); only cmigrate-runc can tell CRIU so
        fast = (info["HostConfig"].get("Runtime") or "") == FAST_RUNTIME
        restore_from(dk, info, source, criu_extra="file-locks\n" if fast else "")
        held = read_meta(source).get("restart_policy")
        if held and (info["HostConfig"].get("RestartPolicy") or {}).get("Name", "no") in ("", "no"):
            dk.set_restart_policy(info["Id"], held)   # set aside by the checkpoint: running again, it is back
        return {"container": container, "name": name, "seconds": time.monotonic() - started}
    finally:
        dk.close()


def read_meta(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / META_DIR / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


def _existing(args: dict, *names: str) -> list[Path]:
    """The directories of the container's checkpoints ``names``; PreflightError for one that is not there."""
    container = args["container"]
    custom = _checkpoint_dir(args)
    dk = Docker()
    try:
        base = _base(dk, dk.inspect(container), custom)
    finally:
        dk.close()
    dirs = [base / validate_checkpoint(name) for name in names]
    for d in dirs:
        if not (d / "inventory.img").exists():
            raise PreflightError(f"no checkpoint {d.name} for container {container} in {base}", container=container)
    return dirs


def readable(args: dict, *names: str) -> list[Path]:
    """``_existing``, each a directory of root's that only root may write."""
    return [require_private_dir(d, f"checkpoint {d.name}") for d in _existing(args, *names)]


def inspect(args: dict, ch) -> dict:
    """What a checkpoint holds (agents/images.py), and with ``search`` where a text lies in its memory."""
    container, name = args["container"], args["name"]
    found = images.Checkpoint(readable(args, name)[0])
    report = found.describe() | {"name": name, "container": container}
    if args.get("search"):
        report["search"] = {"text": args["search"], "found": found.search(args["search"])}
    return report


def clone(args: dict, ch) -> dict:
    """A new container ``new`` started from checkpoint ``name`` of ``container``: the same image, configuration and
    writable layer, a name and address of its own, as many times as asked. Connections the checkpoint holds are
    restored closed (CRIU's tcp-close); published ports are left out (the original, or another clone, holds
    them). Runs under cmigrate-runc, the one way to hand CRIU that option. On failure the new container is gone."""
    container, name, new = args["container"], args["name"], validate_container(args["new"])
    source = readable(args, name)[0]
    dk = Docker()
    try:
        if dk.exists(new):
            raise PreflightError(f"a container named {new} already exists", container=new)
        if not dk.has_fast_runtime():
            raise PreflightError(f"a clone needs the {FAST_RUNTIME} runtime on this host", container=new,
                                 hint="install cmigrate here with ./install.sh")
        _preflight(dk)
        info = dk.inspect(container)
        resp = dk.api.post(dk.api._url("/containers/create"), params={"name": new}, json=_clone_config(info))
        dk._check(resp, f"create container {new}", new)
        cid = resp.json()["Id"]
        try:
            started = time.monotonic()
            restore_from(dk, dk.inspect(cid), source, criu_extra="tcp-close\nfile-locks\n")
        except BaseException:
            dk.api.remove_container(cid, force=True, v=True)
            raise
        address = [ep.get("IPAddress") for ep in (dk.inspect(cid)["NetworkSettings"].get("Networks") or {}).values()]
        return {"container": new, "id": cid, "from": container, "name": name, "addresses": address,
                "seconds": time.monotonic() - started}
    finally:
        dk.close()


def _clone_config(info: dict) -> dict:
    config = dict(info["Config"])
    config.pop("Hostname", None)   # its own, as Docker gives every container; CRIU restores the UTS name anyway
    hc = dict(info["HostConfig"])
    hc["Runtime"], hc["PortBindings"], hc["PublishAllPorts"] = FAST_RUNTIME, {}, False
    config["HostConfig"] = hc
    networks = sorted((info.get("NetworkSettings") or {}).get("Networks") or {})
    if networks and networks[0] not in ("bridge", "host", "none"):
        config["NetworkingConfig"] = {"EndpointsConfig": {networks[0]: {}}}
    return config


def diff(args: dict, ch) -> dict:
    """From checkpoint ``name`` to ``other`` of one container (agents/images.py ``diff``)."""
    a, b = readable(args, args["name"], args["other"])
    return images.diff(images.Checkpoint(a), images.Checkpoint(b)) | {
        "container": args["container"], "from": args["name"], "to": args["other"]}


# ---------------------------------------------------------------------- a whole host at once
ALL_AT_ONCE = 4   # containers dumped or restored side by side: CRIU is CPU- and disk-bound, dockerd serialises some


def _each(containers: list[dict], step, args: dict, ch) -> list[dict]:
    """``step`` (create or restore) for each container, ALL_AT_ONCE at a time; one's failure is its own: the
    others go on. Each outcome says the container and either the step's result or its error."""
    from concurrent.futures import ThreadPoolExecutor

    def one(c: dict) -> dict:
        try:
            result = step(args | {"container": c["name"]}, ch)
            outcome = {"container": c["name"], "ok": True, "result": result}
        except MigrationError as exc:
            outcome = {"container": c["name"], "ok": False, "error": exc.line()}
        except Exception as exc:  # noqa: BLE001 - one container's bug must not stop the others
            outcome = {"container": c["name"], "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if ch is not None:
            ch.emit({"event": "container-done"} | outcome)
        return outcome

    with ThreadPoolExecutor(ALL_AT_ONCE) as pool:
        return list(pool.map(one, containers))


def _whole_host(args: dict) -> None:
    if args.get("checkpoint_dir"):
        raise UsageError("--all keeps each checkpoint in its container's own directory: leave out --checkpoint-dir")


def create_all(args: dict, ch) -> list[dict]:
    """Checkpoint ``name`` of every running container (``create`` each; by default they stop, to be restored
    after the host restarts)."""
    _whole_host(args)
    dk = Docker()
    try:
        running = [{"id": c.id, "name": c.name} for c in dk.client.containers.list()]
    finally:
        dk.close()
    return _each(sorted(running, key=lambda c: c["name"]), create, args, ch)


def restore_all(args: dict, ch) -> list[dict]:
    """Restore every stopped container that has checkpoint ``name`` (``restore`` each)."""
    _whole_host(args)
    name = validate_checkpoint(args["name"])
    dk = Docker()
    try:
        found = []
        for c in dk.client.containers.list(all=True):
            info = c.attrs
            if not info["State"].get("Running") and (container_checkpoints(dk, info) / name / "inventory.img").exists():
                found.append({"id": c.id, "name": c.name})
    finally:
        dk.close()
    if not found:
        raise PreflightError(f"no stopped container here has a checkpoint {name}")
    return _each(sorted(found, key=lambda c: c["name"]), restore, args, ch)


OPERATIONS = {
    "checkpoint.create_all": create_all,
    "checkpoint.restore_all": restore_all,
    "checkpoint.inspect": inspect,
    "checkpoint.diff": diff,
    "checkpoint.clone": clone,
    "checkpoint.create": create,
    "checkpoint.ls": list_checkpoints,
    "checkpoint.rm": remove,
    "checkpoint.restore": restore,
}
