"""Public API for checkpoints on one host: create, ls, rm, and start from a checkpoint.

Each function runs the work in a cmigrate-agent on ``host`` (``"local"`` or an SSH host name) and raises a
:class:`migrate.errors.MigrationError` subclass on failure, with ``host`` set.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from migrate.errors import PreflightError
from migrate.hosts import agent
from migrate.names import validate_checkpoint, validate_container, validate_image_ref
from transport import archive


def _dir(checkpoint_dir: str | None) -> str | None:
    return str(checkpoint_dir) if checkpoint_dir else None


def create(container: str, name: str, *, host: str = "local", leave_running: bool = False,
           checkpoint_dir: str | None = None, ssh_config: str | None = None) -> dict:
    """Checkpoint a running container (memory and writable layer). Returns name, dir, bytes, frozen_seconds."""
    container, name = validate_container(container), validate_checkpoint(name)
    with agent(host, ssh_config) as a:
        return a.call("checkpoint.create", container=container, name=name, leave_running=leave_running,
                      checkpoint_dir=_dir(checkpoint_dir))


def create_all(name: str, *, host: str = "local", leave_running: bool = False,
               ssh_config: str | None = None) -> list[dict]:
    """Checkpoint ``name`` of every running container on ``host`` (a few at a time, each in its own directory,
    each with its layer): by default they stop, to be started with ``start_all`` after the host restarts. One
    outcome per container: container, ok, and its result or error; one that fails does not stop the others."""
    name = validate_checkpoint(name)
    with agent(host, ssh_config) as a:
        return a.call("checkpoint.create_all", name=name, leave_running=leave_running)


def start_all(checkpoint: str, *, host: str = "local", ssh_config: str | None = None) -> list[dict]:
    """Start every stopped container on ``host`` that has checkpoint ``checkpoint`` from it (``create_all``'s
    counterpart). One outcome per container, as ``create_all``'s."""
    checkpoint = validate_checkpoint(checkpoint)
    with agent(host, ssh_config) as a:
        return a.call("checkpoint.restore_all", name=checkpoint)


def ls(container: str, *, host: str = "local", checkpoint_dir: str | None = None,
       ssh_config: str | None = None) -> list[dict]:
    """The container's checkpoints, oldest first: name, created (epoch seconds), bytes, dir."""
    container = validate_container(container)
    with agent(host, ssh_config) as a:
        return a.call("checkpoint.ls", container=container, checkpoint_dir=_dir(checkpoint_dir))


def rm(container: str, name: str, *, host: str = "local", checkpoint_dir: str | None = None,
       ssh_config: str | None = None) -> dict:
    container, name = validate_container(container), validate_checkpoint(name)
    with agent(host, ssh_config) as a:
        return a.call("checkpoint.rm", container=container, name=name, checkpoint_dir=_dir(checkpoint_dir))


def start(container: str, checkpoint: str, *, host: str = "local", checkpoint_dir: str | None = None,
          ssh_config: str | None = None, name: str | None = None) -> dict:
    """Start a stopped container from a checkpoint: memory and writable layer as they were at that point. With
    ``name``, start a new container of that name from it instead (a clone: any number of times, each with its own
    name and address, connections closed), the original left as it is."""
    container, checkpoint = validate_container(container), validate_checkpoint(checkpoint)
    with agent(host, ssh_config) as a:
        if name is not None:
            return a.call("checkpoint.clone", container=container, name=checkpoint, new=validate_container(name),
                          checkpoint_dir=_dir(checkpoint_dir))
        return a.call("checkpoint.restore", container=container, name=checkpoint,
                      checkpoint_dir=_dir(checkpoint_dir))


def inspect(container: str, name: str, *, host: str = "local", checkpoint_dir: str | None = None,
            search: str | None = None, ssh_config: str | None = None) -> dict:
    """What a checkpoint holds, decoded from CRIU's images on ``host``: processes (pid, parent, name, state, uid,
    command line, memory, open files and sockets), mounts, namespaces, the writable layer's changed and deleted
    paths, CRIU's dump stats; with ``search``, where that text lies in the processes' memory (pid, address)."""
    container, name = validate_container(container), validate_checkpoint(name)
    with agent(host, ssh_config) as a:
        return a.call("checkpoint.inspect", container=container, name=name, checkpoint_dir=_dir(checkpoint_dir),
                      search=search)


def export(container: str, name: str, file: str | os.PathLike, *, host: str = "local", with_image: bool = False,
           oci: str | None = None, checkpoint_dir: str | None = None, ssh_config: str | None = None,
           on_bytes: Callable[[int], None] | None = None) -> dict:
    """Write checkpoint ``name`` of ``container`` on ``host`` to ``file`` here, one zstd-compressed tar: CRIU's
    images, the writable layer, the volumes' data, the configuration, with ``with_image`` the image, and a
    manifest (sha256 of every file, the versions and CPU features of the host that wrote it). Owner-only (it
    holds the container's memory); streamed (``on_bytes`` hears of each chunk); a failed export leaves no file.
    With ``oci`` (an image reference), the same as an OCI image of that name instead, which ``docker load`` takes
    (``org.criu.checkpoint.*`` annotations, one uncompressed layer); ``import_file`` takes either."""
    container, name = validate_container(container), validate_checkpoint(name)
    out = Path(file)
    if out.exists() or out.is_symlink():
        raise PreflightError(f"{out} already exists", hint="remove it, or name another file")
    part = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise PreflightError(f"cannot write {out}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as f, agent(host, ssh_config) as a:
            def sink(chunk: bytes) -> None:
                f.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
            res = a.download("checkpoint.export", sink, container=container, name=name, with_image=with_image,
                             oci=validate_image_ref(oci) if oci else None, checkpoint_dir=_dir(checkpoint_dir))
        os.rename(part, out)
    finally:
        part.unlink(missing_ok=True)
    return res | {"file": str(out)}


def import_file(file: str | os.PathLike, *, host: str = "local", name: str | None = None, start: bool = False,
                allow_privileged: bool = False, ignore_cpu: bool = False, ssh_config: str | None = None,
                on_bytes: Callable[[int], None] | None = None) -> dict:
    """Make the container of checkpoint file ``file`` (from ``export``), stopped, on ``host`` (named ``name``,
    else as it was), with its volumes' data and the checkpoint, which ``start`` then restores; with ``start``,
    restore it at once. The host judges the file's manifest before it is sent (CRIU, CPU, image, name, disk),
    and verifies every file in it before it makes anything."""
    path = Path(file)
    manifest = archive.read_manifest(path)
    brief = {k: v for k, v in manifest.items() if k != "members"} | {
        "bytes": sum(m.get("size", 0) for m in manifest["members"].values())}
    options = {"name": validate_container(name) if name else None, "allow_privileged": allow_privileged,
               "ignore_cpu": ignore_cpu}
    with agent(host, ssh_config) as a:
        a.call("checkpoint.import_check", manifest=brief, **options)
        with open(path, "rb") as f:
            return a.upload("checkpoint.import", f, on_bytes, start=start, **options)


def inspect_file(file: str | os.PathLike, *, host: str = "local", search: str | None = None,
                 ssh_config: str | None = None) -> dict:
    """``inspect`` of a checkpoint file (from ``export``) on ``host``, verified first."""
    with agent(host, ssh_config) as a:
        return a.call("checkpoint.inspect_file", file=os.path.abspath(file) if host == "local" else str(file),
                      search=search)


def diff(container: str, name: str, other: str, *, host: str = "local", checkpoint_dir: str | None = None,
         ssh_config: str | None = None) -> dict:
    """From checkpoint ``name`` to ``other``: processes added and removed, memory change per process and in all,
    the writable layer's files added, removed and changed."""
    container = validate_container(container)
    name, other = validate_checkpoint(name), validate_checkpoint(other)
    with agent(host, ssh_config) as a:
        return a.call("checkpoint.diff", container=container, name=name, other=other,
                      checkpoint_dir=_dir(checkpoint_dir))


def render_diff(d: dict) -> str:
    """``diff``'s report as text."""
    sign = lambda n: f"{'+' if n >= 0 else '-'}{_mib(abs(n))}"  # noqa: E731
    lines = [f"{d['container']}: checkpoint {d['from']} -> {d['to']}"]
    lines += [f"  process added:   {p['pid']} {' '.join(p['cmdline']) or p['name']}" for p in d["processes_added"]]
    lines += [f"  process removed: {p['pid']} {' '.join(p['cmdline']) or p['name']}" for p in d["processes_removed"]]
    lines += [f"  process {p['pid']} {p['name']}: {p['before']} -> {p['after']}" for p in d["processes_changed"]]
    lines.append(f"  memory: {sign(d['memory_change'])} in all")
    lines += [f"    pid {m['pid']} {m['name']}: {_mib(m['before'])} -> {_mib(m['after'])}" for m in d["memory"]
              if m["change"]]
    lines += [f"  file added:   {p}" for p in d["files_added"]] + [f"  file removed: {p}" for p in d["files_removed"]]
    lines += [f"  file changed: {p}" for p in d["files_changed"]]
    return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def render(report: dict) -> str:
    """``inspect``'s report as text, as ``cmigrate checkpoint inspect`` prints it."""
    meta, stats = report.get("meta") or {}, report.get("stats") or {}
    lines = [f"checkpoint {report['name']} of {report['container']} ({report['dir']})"
             + (f": image {meta['image']}, cmigrate {meta.get('cmigrate')}" if meta.get("image") else "")]
    if stats:
        lines.append(f"CRIU: frozen {stats.get('frozen_time', 0) / 1000:.1f} ms, memory dump "
                     f"{stats.get('memdump_time', 0) / 1000:.1f} ms, {stats.get('pages_written', 0)} pages written")
    lines.append("namespaces: " + ", ".join(f"{k} {v}" for k, v in sorted(report.get("namespaces", {}).items())))
    procs = report.get("processes") or []
    lines += [f"processes ({len(procs)}):",
              f"  {'PID':>6} {'PPID':>6} {'UID':>6} {'STATE':<7} {'THREADS':>7} {'MEMORY':>10} {'DUMPED':>10}  COMMAND"]
    for p in procs:
        command = " ".join(p["cmdline"]) or f"[{p['name']}]"
        lines.append(f"  {p['pid']:>6} {p['ppid']:>6} {p['uid'] if p['uid'] is not None else '-':>6} "
                     f"{p['state']:<7} {p['threads']:>7} {_mib(p['memory_bytes']):>10} {_mib(p['dumped_bytes']):>10}"
                     f"  {command[:200]}")
        lines += [f"           fd {f['fd']}: {f['what']}" for f in p["files"]]
    mounts = report.get("mounts") or []
    lines.append(f"mounts ({len(mounts)}):")
    lines += [f"  {m['mountpoint']} {m['fstype']} {m['source']}{' (external)' if m['external'] else ''}"
              for m in mounts]
    layer = report.get("layer") or {}
    if layer:
        lines.append(f"writable layer: {layer['bytes']} bytes in {len(layer['changed'])} changed files, "
                     f"{len(layer['deleted'])} deleted")
        lines += [f"  + {p}" for p in layer["changed"]] + [f"  - {p}" for p in layer["deleted"]]
    if "search" in report:
        found = report["search"]["found"]
        lines.append(f"search {report['search']['text']!r}: {len(found)} found")
        printable = lambda s: "".join(c if c.isprintable() else "." for c in s)  # noqa: E731
        lines += [f"  pid {m['pid']} at {m['address']}: {printable(m['context'])}" for m in found]
    return "\n".join(lines)
