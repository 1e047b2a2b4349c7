"""A checkpoint as one file, on the agent's side: export streams it to the CLI, import takes it from the CLI and
makes the container and its checkpoint on this host (``transport/archive.py`` is the file's format).

The file holds the checkpoint's directory (CRIU's images, the writable layer, cmigrate's meta), the data of the
container's local volumes, its configuration, and with ``with_image`` its image (``docker save``); the manifest
records the versions of cmigrate, CRIU, Docker and the kernel, and the CPU's features, that wrote it. Import
verifies every file against the manifest before it makes anything, and refuses what this host cannot restore.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from agents import checkpoint, cpu, destination, journal
from agents.checkpoint import lock_down, this_host
from agents.dockerd import Docker
from agents.source import describe
from migrate import __version__
from migrate.errors import DockerError, MigrationError, PreflightError, RestoreError
from migrate.hostinfo import criu_info, require_criu
from migrate.names import validate_checkpoint, validate_container
from transport import archive, streams
from transport.errors import TransportError

CHECKPOINT, VOLUMES, IMAGE = "checkpoint", "volumes", "image"
IMAGE_FILE = "image.tar"


# ---------------------------------------------------------------------- export
def export(args: dict, ch) -> dict:
    """The checkpoint ``name`` of ``container`` as a checkpoint file, in data frames to the CLI."""
    container, name = args["container"], validate_checkpoint(args["name"])
    source = checkpoint.readable(args, name)[0]
    meta = checkpoint.read_meta(source)
    dk = Docker()
    try:
        info = dk.inspect(container)
        image = dk.client.images.get(info["Image"]).attrs
        volumes = _volumes(info, container)
        with tempfile.TemporaryDirectory(prefix="export-", dir=_scratch()) as scratch:   # 0700
            sources = [streams.Source(source, CHECKPOINT)]
            sources += [streams.Source(Path(v["source"]), f"{VOLUMES}/{i}") for i, v in enumerate(volumes)]
            if args.get("with_image"):
                _save_image(dk, info, Path(scratch) / IMAGE_FILE)
                sources.append(streams.Source(Path(scratch), IMAGE))
            found = criu_info(this_host())
            manifest = {
                "created": time.time(), "host": this_host().name, "checkpoint": name,
                "cmigrate": __version__, "criu": found.version, "platform": dk.versions(),
                "kernel": os.uname().release, "arch": os.uname().machine, "cpuinfo": cpu.dump(),
                "container": describe(info, image), "meta": meta,
                "volumes": [{k: v[k] for k in ("name", "destination", "mode", "uid", "gid")} for v in volumes],
                "image_included": bool(args.get("with_image")),
                "members": archive.digests(sources),
            }
            writer = streams.FrameWriter(ch.stdout)
            if args.get("oci"):
                raw = archive.write_oci(writer, manifest, sources, Path(scratch), args["oci"],
                                        annotations(manifest), GOARCH.get(manifest["arch"], manifest["arch"]))
            else:
                raw = archive.write(writer, manifest, sources, level=int(args.get("level", 3)))
            writer.flush()
        return {"container": container, "name": name, "files": len(manifest["members"]), "raw_bytes": raw,
                "bytes": writer.sent, "image_included": manifest["image_included"], "oci": args.get("oci")}
    finally:
        dk.close()


GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
          "riscv64": "riscv64"}


def annotations(manifest: dict) -> dict[str, str]:
    """The ``org.criu.checkpoint.*`` annotations checkpointctl defines (and CRI-O and Podman write), for an OCI
    image of the checkpoint."""
    c, platform = manifest["container"], manifest.get("platform") or {}
    release = _os_release()
    return {
        "org.criu.checkpoint.container.name": c["name"],
        archive.ENGINE_ANNOTATION: archive.ENGINE,
        "org.criu.checkpoint.engine.version": manifest["cmigrate"],
        "org.criu.checkpoint.rootfsImageName": c["image_name"],
        "org.criu.checkpoint.rootfsImageID": c["image_id"],
        "org.criu.checkpoint.rawImageName": c["image_name"],
        "org.criu.checkpoint.runtime.name": "runc",
        "org.criu.checkpoint.runtime.version": platform.get("runc") or "",
        "org.criu.checkpoint.criu.version": manifest.get("criu") or "",
        "org.criu.checkpoint.host.arch": GOARCH.get(manifest["arch"], manifest["arch"]),
        "org.criu.checkpoint.host.kernel": manifest["kernel"],
        "org.criu.checkpoint.cgroup.version": "2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "1",
        "org.criu.checkpoint.distribution.name": release.get("NAME", ""),
        "org.criu.checkpoint.distribution.version": release.get("VERSION_ID", ""),
    }


def _os_release() -> dict[str, str]:
    try:
        lines = Path("/etc/os-release").read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip('"') for k, _, v in (line.partition("=") for line in lines) if v}


def _scratch() -> Path:
    root = journal.work_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def _volumes(info: dict, container: str) -> list[dict]:
    """The container's volumes, whose data goes in the file: local ones only (a driver's keeps its own)."""
    found = []
    for m in info.get("Mounts", []):
        if m["Type"] != "volume":
            continue
        if m.get("Driver", "local") != "local":
            raise PreflightError(f"volume {m['Name']} uses driver {m['Driver']}: only local volumes can be exported",
                                 container=container)
        st = os.stat(m["Source"])
        found.append({"name": m["Name"], "destination": m["Destination"], "source": m["Source"],
                      "mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid})
    return found


def _save_image(dk: Docker, info: dict, target: Path) -> None:
    ref = info["Config"]["Image"]
    ref = info["Image"] if ref.startswith("sha256:") else ref
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in dk.api.get_image(ref, chunk_size=streams.CHUNK):
                f.write(chunk)
    except MigrationError:
        raise
    except Exception as exc:  # docker-py / requests errors mid-stream
        raise DockerError(f"docker save {ref} failed: {exc}") from exc


# ---------------------------------------------------------------------- import
def check(args: dict, ch) -> dict:
    """Can this host take the checkpoint file whose ``manifest`` (without its members) the CLI read: judged
    before the file is sent, and again once it is here."""
    dk = Docker()
    try:
        return {"image": _judge(dk, args["manifest"], args), "name": _name(args["manifest"], args)}
    finally:
        dk.close()


def _name(manifest: dict, args: dict) -> str:
    return validate_container(args.get("name") or manifest["container"]["name"])


def _judge(dk: Docker, manifest: dict, args: dict) -> str | None:
    """The image to create the container from here (None: the file's own, to load); PreflightError for what
    this host cannot restore: CRIU older than the checkpoint's, a CPU without its features, a name or volume in
    the way, a missing bind source or network, too little disk, an image neither here nor in the file."""
    c, name = manifest["container"], _name(manifest, args)
    found = require_criu(this_host())
    if _version(found.version) < _version(manifest.get("criu")):
        raise PreflightError(f"the checkpoint was written by CRIU {manifest.get('criu')}, and this host's CRIU "
                             f"{found.version} is older: it may not read the images", container=name,
                             hint="install CRIU as new as the exporting host's here (./install.sh)")
    size = sum(m.get("size", 0) for m in (manifest.get("members") or {}).values()) or manifest.get("bytes", 0)
    pre = destination.preflight({
        "name": name, "image_id": c["image_id"], "image_name": c["image_name"], "image_layers": c["image_layers"],
        "binds": c["binds"], "networks": c["networks"], "bytes_needed": int(1.2 * size),
        "named_volumes": [v["name"] for v in manifest.get("volumes") or [] if len(v["name"]) != 64],
        "host_config": c["host_config"], "source": f"the file's host ({manifest.get('host')})",
        "allow_privileged": bool(args.get("allow_privileged")), "cpuinfo": manifest.get("cpuinfo"),
        "ignore_cpu": bool(args.get("ignore_cpu"))}, None)
    if pre["image"] is None and not manifest.get("image_included"):
        raise PreflightError(f"image {c['image_name']} is not on this host, and the checkpoint file does not hold "
                             "it", container=name, hint="pull it here, or export with --with-image")
    return pre["image"]


def _version(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in (text or "0").split("."))
    except ValueError:
        return (0,)


def import_(args: dict, ch) -> dict:
    """Take a checkpoint file from the CLI's data frames: verify it whole, judge this host, then make the
    container (stopped), its volumes' data and its checkpoint here; with ``start``, restore it. On failure
    nothing it made stays."""
    reader = streams.FrameReader(ch.stdin)
    try:
        with tempfile.TemporaryDirectory(prefix="import-", dir=_scratch()) as scratch:
            stage = Path(scratch)
            targets = {p: stage / p for p in (CHECKPOINT, VOLUMES, IMAGE)}
            for t in targets.values():
                t.mkdir(mode=0o700)
            with archive.Reader(reader) as r:
                manifest = r.manifest
                r.extract(targets)   # every file whole, or TransportError
            if reader.drain().get("type") != "end":
                raise TransportError("the checkpoint file's stream was aborted")
            return _place(manifest, stage, args)
    finally:
        if reader.end is None:   # failed part-way: read on to the end, so the CLI's writes do not block
            reader.drain()


def _place(manifest: dict, stage: Path, args: dict) -> dict:
    name = _name(manifest, args)
    cp_name = validate_checkpoint(manifest["checkpoint"])
    dk = Docker()
    made: list[str] = []   # the container, then the volumes it came with
    try:
        image = _judge(dk, manifest, args)
        loaded = image is None
        if loaded:
            image = _load_image(dk, stage / IMAGE / IMAGE_FILE, manifest["container"]["image_id"])
        c = manifest["container"]
        config = destination.container_config(dk, {
            "name": name, "image": image, "config": c["config"], "host_config": c["host_config"],
            "networks": c["networks"], "source": f"the file's host ({manifest.get('host')})",
            "allow_privileged": bool(args.get("allow_privileged"))})
        before = {v.name for v in dk.client.volumes.list()}
        resp = dk.api.post(dk.api._url("/containers/create"), params={"name": name}, json=config)
        dk._check(resp, f"create container {name}", name)
        cid = resp.json()["Id"]
        made.append(cid)
        made += sorted({v.name for v in dk.client.volumes.list()} - before)
        info = dk.inspect(cid)
        mounts = {m["Destination"]: m["Source"] for m in info.get("Mounts", []) if m["Type"] == "volume"}
        for i, vol in enumerate(manifest.get("volumes") or []):
            _fill_volume(stage / VOLUMES / str(i), Path(mounts[vol["destination"]]), vol)
        base = checkpoint.container_checkpoints(dk, info)
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.move(stage / CHECKPOINT, base / cp_name)
        lock_down(base / cp_name)
    except BaseException:
        _remove(dk, made)
        raise
    try:
        result = {"container": name, "id": cid, "checkpoint": cp_name, "image_loaded": loaded, "started": False}
        if args.get("start"):
            try:
                checkpoint.restore({"container": name, "name": cp_name}, None)
            except MigrationError as exc:
                raise RestoreError(f"imported, but the restore failed: {exc.message}", container=name,
                                   detail=exc.detail, hint=f"the container and its checkpoint are here: cmigrate "
                                   f"start --checkpoint {cp_name} {name} tries again") from exc
            result["started"] = True
        return result
    finally:
        dk.close()


def _load_image(dk: Docker, tar: Path, image_id: str) -> str:
    if not tar.is_file():
        raise PreflightError("the checkpoint file holds no image, and this host lacks it",
                             hint="export with --with-image")
    try:
        with open(tar, "rb") as f:
            for _ in dk.api.load_image(iter(lambda: f.read(streams.CHUNK), b"")):
                pass
        dk.client.images.get(image_id)
    except MigrationError:
        raise
    except Exception as exc:
        raise DockerError(f"docker load of the checkpoint file's image failed: {exc}") from exc
    return image_id


def _fill_volume(staged: Path, target: Path, vol: dict) -> None:
    """A new, empty volume gets the file's data, and its top directory's owner and mode."""
    if any(target.iterdir()):
        raise PreflightError(f"volume {vol['name']} is not empty here", hint="remove it first")
    for entry in staged.iterdir() if staged.is_dir() else ():   # an empty volume has no members
        shutil.move(entry, target / entry.name)
    os.chown(target, vol["uid"], vol["gid"])
    os.chmod(target, vol["mode"])


def _remove(dk: Docker, made: list[str]) -> None:
    if not made:
        return
    try:
        dk.api.remove_container(made[0], force=True, v=True)
        for vol in made[1:]:
            try:
                dk.api.remove_volume(vol, force=True)
            except Exception:   # docker.errors.NotFound: it went with the container (v=True)
                pass
    except Exception:   # the daemon is gone: nothing more can be done here, and the first error stands
        pass


# ---------------------------------------------------------------------- inspect
def inspect_file(args: dict, ch) -> dict:
    """``checkpoint inspect`` of a checkpoint file on this host (agents/images.py on its images, verified first;
    the volumes and image in it are read through, not written)."""
    from agents import images
    path = Path(args["file"])
    if not path.is_absolute():
        raise TransportError(f"{path} is not an absolute path")
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise PreflightError(f"cannot read {path}: {exc.strerror}") from exc
    with f, tempfile.TemporaryDirectory(prefix="inspect-") as scratch, archive.Reader(f) as r:
        target = Path(scratch) / CHECKPOINT
        target.mkdir(mode=0o700)
        r.extract({CHECKPOINT: target}, skip=frozenset({VOLUMES, IMAGE}))
        found = images.Checkpoint(target)
        manifest = r.manifest
        report = found.describe() | {"name": manifest["checkpoint"], "container": manifest["container"]["name"],
                                     "dir": str(path), "exported": {k: manifest.get(k) for k in (
                                         "host", "created", "cmigrate", "criu", "kernel", "arch", "platform",
                                         "image_included")}}
        if args.get("search"):
            report["search"] = {"text": args["search"], "found": found.search(args["search"])}
    return report


OPERATIONS = {
    "checkpoint.inspect_file": inspect_file,
    "checkpoint.export": export,
    "checkpoint.import_check": check,
    "checkpoint.import": import_,
}
