"""Live migration of one container from a source host to a destination host (stop-and-copy).

The state machine, and what a failure in each state leaves behind:

    preflight   both hosts checked; nothing touched              -> nothing to undo
    prepared    image present on DST, DST container created       -> DST container removed
    frozen      SRC container dumped and stopped                  -> DST removed, SRC resumed from its images
    restored    DST container runs from the checkpoint            -> (commit point) DST keeps it
    committed   SRC container removed (or kept stopped)           -> done

Everything that can happen before the freeze does (SSH sessions, image transfer, container creation), so the
freeze covers only dump, transfer and restore.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from migrate.errors import (DumpAborted, Interrupted, MigrationError, PreflightError, RollbackError, TransportError,
                            UsageError)
from migrate.faults import Injector
from migrate.hostinfo import platform_line
from migrate.hosts import agent as agent_on, open_host
from migrate.names import validate_container, validate_host, validate_timeout
from transport.agent import DEFAULT_AGENT, DEFAULT_IO_TIMEOUT, AgentSession

Progress = Callable[[dict], None]
MODES = ("auto", "stop-copy", "pre-copy", "post-copy")
POST_COPY_RISK = ("post-copy: {dst} runs the container before its memory has arrived; until every page has, "
                  "losing {src} or the link between them stops it there (the frozen original on {src} is "
                  "resumed if cmigrate can still reach it)")
DATA_PATHS = ("auto", "direct", "relay")
PAGE_COMPRESSION = ("auto", "off")
# below this much container memory a stop-copy dump and transfer take less time (~0.1-0.3 s) than Docker's way to
# the gated restore (~0.3 s: containerd task, network namespace and endpoint): the freeze waits until Docker is
# there (post-copy and pre-copy's frozen parts are short whatever the memory: they always wait). Above it Docker
# gets there during the dump anyway, and waiting would only lengthen the migration.
WAIT_GATE_BELOW = 128 * 2**20
STREAM_PAGES_FROM = 64 * 2**20   # bytes of container memory from which pages go through CRIU's page server
# below this much to carry (memory, writable layer, volumes), ``auto`` relays through the sessions already open: a
# direct link's own SSH connection and agent start cost ~0.15 s more than the destination's create they overlap
# (measured on the lab: the seed's counter moved in 1.15-1.20 s relayed, 1.30 s direct, the same downtime), and
# relaying a few MiB through this machine takes less than that
RELAY_BELOW = 16 * 2**20


@dataclass
class Report:
    """What a migration did and how long each part took (seconds, bytes)."""

    container: str
    source: str
    destination: str
    migration_id: str
    mode: str = "stop-copy"
    modes: dict[str, list[str]] = field(default_factory=dict)   # what each host supports, from CRIU's checks
    platform: dict[str, dict] = field(default_factory=dict)   # each host's Docker, containerd and runc versions
    postcopy_seconds: float | None = None   # post-copy: from running on DST until every page had arrived
    precopy: list[dict] = field(default_factory=list)   # pre-copy: per iteration pages, bytes, seconds
    precopy_stop: str | None = None   # why pre-copy stopped iterating
    data_path: str = "relay"
    pages_streamed: bool = False
    pages_compressed: bool = False   # streamed pages took fewer bytes on the link than raw (transport/pagecodec.py)
    phases: dict[str, float] = field(default_factory=dict)
    downtime: float = 0.0
    frozen_dump: float = 0.0
    raw_bytes: int = 0
    wire_bytes: int = 0
    image_transferred: bool = False
    image_wire_bytes: int = 0
    memory_bytes: int = 0
    destination_id: str = ""
    agent_peak_rss_kib: dict[str, int] = field(default_factory=dict)
    kept_source: bool = False
    source_checkpoint: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.wire_bytes if self.wire_bytes else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"compression_ratio": round(self.ratio, 3)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def human(self) -> str:
        mib = 2 ** 20
        lines = [f"migrated {self.container}: {self.source} -> {self.destination} ({self.mode}, data "
                 f"{'straight from ' + self.source if self.data_path == 'direct' else 'relayed by this machine'})"]
        lines += [f"  {name:<10} {secs * 1000:8.0f} ms" for name, secs in self.phases.items()]
        lines.append(f"  downtime   {self.downtime * 1000:8.0f} ms  (frozen on {self.source} -> running on "
                     f"{self.destination})")
        lines.append(f"  bytes      {self.raw_bytes / mib:.1f} MiB raw, {self.wire_bytes / mib:.1f} MiB on the wire "
                     f"(ratio {self.ratio:.2f})")
        for host, v in self.platform.items():
            lines.append(f"  {host:<10} {platform_line(v)}")
        for it in self.precopy:
            lines.append(f"  pre-dump {it['iteration']:<2} {it['pages']:>9} pages {it['bytes'] / mib:8.1f} MiB "
                         f"{it['wire_bytes'] / mib:8.1f} MiB on the wire {it['seconds'] * 1000:7.0f} ms "
                         f"(container paused {it['frozen_ms']:.0f} ms)")
        if self.precopy_stop:
            lines.append(f"  pre-copy   stopped: {self.precopy_stop}; the rest moved frozen")
        if self.postcopy_seconds is not None:
            lines.append(f"  post-copy  every page on {self.destination} {self.postcopy_seconds * 1000:.0f} ms "
                         f"after it started there (until then it depended on {self.source})")
        if self.image_transferred:
            lines.append(f"  image      transferred ({self.image_wire_bytes / mib:.1f} MiB on the wire)")
        if self.kept_source:
            lines.append(f"  source     kept stopped on {self.source} with checkpoint {self.source_checkpoint}")
        return "\n".join(lines)


@dataclass
class PrecopyRule:
    """When pre-copy stops pre-dumping and freezes the container for the last, small dump: after
    ``max_iterations``; when an iteration wrote fewer than ``min_pages`` pages (what is left moves quickly while
    frozen); or when it wrote more than ``shrink`` times the pages of the one before (memory is dirtied about as
    fast as it is copied: more iterations would not make the frozen part smaller). P.Haul's rule, LXD's limits."""

    max_iterations: int = 8
    min_pages: int = 1024
    shrink: float = 0.8

    def __post_init__(self) -> None:
        if not 1 <= self.max_iterations <= 99:
            raise UsageError(f"pre-copy iterations {self.max_iterations}: choose 1..99")
        if self.min_pages < 0:
            raise UsageError(f"pre-copy minimum pages {self.min_pages}: must not be negative")
        if not 0 < self.shrink <= 1:
            raise UsageError(f"pre-copy shrink ratio {self.shrink:g}: choose in (0, 1]")

    def stop(self, n: int, pages: int, previous: int | None) -> str | None:
        """Why to stop after iteration ``n`` that wrote ``pages`` (``previous``: the one before), or None."""
        if pages < self.min_pages:
            return f"pre-dump {n} wrote {pages} pages, fewer than {self.min_pages}"
        if previous is not None and pages > self.shrink * previous:
            return f"pre-dump {n} wrote {pages} pages, more than {self.shrink:g} x the {previous} before it"
        if n >= self.max_iterations:
            return f"{n} pre-dumps, the most allowed"
        return None


def migrate(container: str, source: str, destination: str, *, ssh_config: str | None = None,
            mode: str = "auto", level: int = 3, threads: int = -1, keep_source: bool = False,
            io_timeout: float = DEFAULT_IO_TIMEOUT, progress: Progress | None = None, agent: str | None = None,
            data_path: str = "auto", stream_pages: str = "auto", precopy: PrecopyRule | None = None,
            allow_privileged: bool = False, tcp_close: bool = False, keep_ip: bool = False,
            ignore_cpu: bool = False, page_compression: str = "auto") -> Report:
    """Move a running ``container`` from host ``source`` to host ``destination``; it goes on running there.

    Hosts are ``"local"`` or SSH host names (resolved through ``ssh_config`` or ~/.ssh/config). Raises a
    :class:`MigrationError` subclass on failure, after putting the container back on the source.

    ``stream_pages`` (stop-copy over the direct link): ``always`` sends memory pages from CRIU's dump straight
    into the link, ``never`` dumps them to disk and sends the files after, ``auto`` streams from 64 MiB of memory.

    ``page_compression``: ``auto`` sends streamed pages in zstd chunks where a chunk shrinks (memory that does
    not, random or compressed already, is found out in a few chunks and crosses raw); ``off`` sends them raw.

    ``precopy``: the stop rule of pre-copy's iterations (:class:`PrecopyRule`; its defaults when None).

    ``allow_privileged``: let the destination apply settings that hand the container that host (privileged,
    host-root capabilities, devices, binds of / and system paths, host PID/IPC/user namespaces), which it refuses
    by default: the source host is not trusted with root on the destination.

    ``tcp_close``: move a container that holds TCP connections, restoring them closed (CRIU's tcp-close): its
    clients see the connection end when the source lets go, and reconnect to the container's new address.
    Without it such a container is refused before the freeze, naming its connections.

    ``keep_ip``: the container keeps its IP and MAC address on the destination, and its TCP connections (CRIU's
    tcp-established). Both hosts need a network of that name and subnet on one layer-2 segment (macvlan, ipvlan);
    the container's network is locked on both hosts for the move, so that never two answer for the address, and
    the destination announces it (unsolicited ARP) once the container runs there.

    ``ignore_cpu``: move it even where the destination's CPU lacks features the source's has (refused by
    default, naming them: a process that picked them at start-up would die of SIGILL there).

    ``data_path``: ``direct`` sends the checkpoint from the source host to the destination over OpenSSH between
    them (the source must reach ``destination`` by that name with its own keys); ``relay`` passes it through this
    machine; ``auto`` relays below ``RELAY_BELOW`` to carry, and otherwise tries direct and falls back to relay
    (the report says which was used, and why).
    """
    container = validate_container(container)
    validate_host(source)
    validate_host(destination)
    if source == destination:
        raise UsageError(f"source and destination are the same host ({source})")
    _check_choices(mode, stream_pages, page_compression, data_path, level)
    _check_connection_options(tcp_close, keep_ip, keep_source)
    if io_timeout is None:
        raise UsageError("an I/O timeout is needed: a migration never waits forever on a silent host")
    validate_timeout(io_timeout)
    emit = progress or (lambda event: None)
    m = _Migration(container, source, destination, ssh_config, level, threads, keep_source, io_timeout, emit, agent)
    m.data_path, m.mode, m.stream_pages, m.page_compression = data_path, mode, stream_pages, page_compression
    m.allow_privileged, m.tcp_close, m.keep_ip, m.ignore_cpu = allow_privileged, tcp_close, keep_ip, ignore_cpu
    m.precopy = precopy or PrecopyRule()
    return m.run()


def _check_choices(mode: str, stream_pages: str, page_compression: str, data_path: str, level: int) -> None:
    if mode not in MODES:
        raise UsageError(f"mode {mode!r} is not available: choose from {', '.join(MODES)}")
    if stream_pages not in ("auto", "always", "never"):
        raise UsageError(f"stream_pages {stream_pages!r}: choose from auto, always, never")
    if page_compression not in PAGE_COMPRESSION:
        raise UsageError(f"page compression {page_compression!r}: choose from {', '.join(PAGE_COMPRESSION)}")
    if data_path not in DATA_PATHS:
        raise UsageError(f"data path {data_path!r} is not available: choose from {', '.join(DATA_PATHS)}")
    if not 1 <= level <= 19:
        raise UsageError(f"compression level {level} is out of range 1..19")


def _check_connection_options(tcp_close: bool, keep_ip: bool, keep_source: bool) -> None:
    if tcp_close and keep_ip:
        raise UsageError("--keep-ip keeps the connections: drop --tcp-close")
    if keep_ip and keep_source:
        raise UsageError("--keep-ip: the source's checkpoint would hold the address the destination now has: drop "
                         "--keep-source")
    if tcp_close and keep_source:
        raise UsageError("--tcp-close leaves no source checkpoint that restores as it was: drop --keep-source")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, MigrationError):
        return exc.message
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"


class _Migration:
    def __init__(self, container, source, destination, ssh_config, level, threads, keep_source, io_timeout,
                 emit, agent) -> None:
        self.container, self.src_name, self.dst_name = container, source, destination
        self.ssh_config, self.level, self.threads = ssh_config, level, threads
        self.keep_source, self.io_timeout, self.emit, self.agent = keep_source, io_timeout, emit, agent
        self.external_netns = False   # the source dumps the network namespace as external (see dest.create)
        self.id = uuid.uuid4().hex[:16]
        self.report = Report(container, source, destination, self.id)
        self.state = "init"
        self.src = self.dst = None
        self.hosts = []
        self.src_info: dict = {}
        self.dst_id: str | None = None
        self.dump: dict = {}
        self.volume_sources: list[str | None] = []   # where each volume's data goes on the destination
        self.finished = False   # the source let go of the container
        self.allow_privileged = False
        self.tcp_close = False   # connected TCP sockets restore closed (CRIU's tcp-close)
        self.keep_ip = False     # the same address on the destination, connections kept (CRIU's tcp-established)
        self.ignore_cpu = False  # the destination's CPU may lack what the source's has (agents/cpu.py)
        self.file_locks = False  # the destination restores file locks: the dump carries them (CRIU's file-locks)
        self.framed_pages = False   # the dump's pages cross the direct link in frames (transport/pagecodec.py)
        self.t_freeze = 0.0
        self.fault = Injector()   # CMIGRATE_FAULT (migrate/faults.py); nothing unless set

    def phase(self, name: str, t0: float) -> None:
        self.report.phases[name] = time.monotonic() - t0
        self.emit({"event": "phase-done", "phase": name, "seconds": self.report.phases[name]})

    def _open(self, name: str) -> AgentSession:
        host = open_host(name, self.ssh_config)
        self.hosts.append(host)
        return AgentSession(host, self.agent, self.io_timeout)   # bounded from the version handshake on

    def run(self) -> Report:
        try:
            self._run()
            if self.fault.plan:
                self.report.warnings.append("CMIGRATE_FAULT: never reached " + ", ".join(
                    f"{action}@{point}" for point, action in self.fault.plan.items()))
            return self.report
        except BaseException as exc:
            self._rollback(exc)
            if isinstance(exc, KeyboardInterrupt):
                raise Interrupted(self._interrupted(), container=self.container) from exc
            raise
        finally:
            sessions = [s for s in (self.src, self.dst) if s is not None]
            for session in sessions:   # both agents end at once, then each is waited for
                session.say_bye()
            for session in sessions:
                session.close()
            for host in self.hosts:
                host.close()

    def _run(self) -> None:
        """The state machine, one phase after the other (the module docstring says what each state leaves)."""
        t = time.monotonic()
        self.emit({"event": "phase", "phase": "preflight"})
        self._open_sessions()
        info, pre = self._preflight()
        self.phase("preflight", t)
        self.state = "prepared"
        image = self._send_image(info) if pre["image"] is None else pre["image"]
        self._create(info, image)
        parent = self._precopy(info, self.report.data_path == "direct") if self.report.mode == "pre-copy" else None
        self.fault("prepared")
        self.state = "frozen"
        self._freeze(info, parent)
        self.state = "restored"
        if self.report.mode == "post-copy":
            self.state = "pages"   # running on DST, but its memory is still partly on SRC only
            self._wait_pages()
            self.state = "restored"
        self.fault("restored")
        # ---- commit point: the destination keeps the container; the source lets go of it
        self.dst.call("dest.commit", migration_id=self.id)
        if self.keep_ip and self.report.mode != "post-copy":   # its network opened only now (agents/netlock.py)
            self.report.downtime = time.monotonic() - self.t_freeze - self.dump.get("freeze_after", 0.0)
        self.state = "committed"
        self.fault("committed")
        self._finish(info)
        self._collect_stats()

    def _open_sessions(self) -> None:
        """Both agents, their SSH handshakes at once. No call waits forever on a link that died silently (agents
        report progress at least four times a second during long calls): the sessions are bounded by io_timeout
        from their handshake on; only post-copy's wait for the last page lifts this (the destination agent bounds
        that wait itself)."""
        with ThreadPoolExecutor(2) as pool:
            opening = [pool.submit(self._open, name) for name in (self.src_name, self.dst_name)]
            wait(opening)
        self.src, self.dst = (f.result() if not f.exception() else None for f in opening)
        for f in opening:
            if f.exception():
                raise f.exception()
        self.fault.context = {"CMIGRATE_MIGRATION_ID": self.id, "CMIGRATE_CONTAINER": self.container,
                              "CMIGRATE_SOURCE": self.src_name, "CMIGRATE_DESTINATION": self.dst_name,
                              "CMIGRATE_SRC_AGENT_PID": str(self.src.remote.get("pid", "")),
                              "CMIGRATE_DST_AGENT_PID": str(self.dst.remote.get("pid", ""))}

    def _preflight(self) -> tuple[dict, dict]:
        """The source takes the container in hand and describes it; the destination says whether it can take it;
        the mode is chosen from what both kernels can do."""
        r = self.report
        info = self.src_info = self.src.call("source.inspect", container=self.container, migration_id=self.id)
        r.memory_bytes = info["memory_bytes"]
        # room for the images, the writable layer, the volumes and (maybe) the image, with a margin
        need = int(1.2 * (info["memory_bytes"] + info["upper_bytes"] + sum(v["bytes"] for v in info["volumes"])
                          + info["image_bytes"]))
        pre = self.dst.call("dest.preflight", name=info["name"], image_id=info["image_id"],
                            image_name=info["image_name"], image_layers=info["image_layers"], binds=info["binds"],
                            networks=info["networks"], bytes_needed=need,
                            named_volumes=[v["name"] for v in info["volumes"] if len(v["name"]) != 64],
                            host_config=info["host_config"], source=self.src_name,
                            allow_privileged=self.allow_privileged, keep_ip=self.keep_ip,
                            endpoints=info.get("endpoints") or [], cpuinfo=info.get("cpuinfo"),
                            ignore_cpu=self.ignore_cpu)
        r.modes = {self.src_name: info["criu"]["modes"], self.dst_name: pre["criu"]["modes"]}
        r.platform = {self.src_name: info.get("platform") or {}, self.dst_name: pre.get("platform") or {}}
        r.mode = self._choose_mode(info["criu"], pre["criu"])
        self._judge_connections(info)
        if r.mode == "post-copy" and info.get("lazy_pipes_problem"):
            raise PreflightError(f"post-copy is not possible: {info['lazy_pipes_problem']}", host=self.src_name,
                                 container=self.container,
                                 hint="sysctl -w fs.pipe-max-size=4194304 (or use --mode stop-copy)")
        return info, pre

    def _judge_connections(self, info: dict) -> None:
        """A container with TCP connections moves only if they may be closed: its address changes, and CRIU cannot
        bind a connection back to another one. Refused here, before the freeze, naming them."""
        found = info.get("connections") or []
        if (self.tcp_close or self.keep_ip) and not info.get("runc_state"):
            raise PreflightError(f"--{'tcp-close' if self.tcp_close else 'keep-ip'} needs the container's runc state on the source (runc runtime)",
                                 host=self.src_name, container=self.container)
        if found and not (self.tcp_close or self.keep_ip):
            shown = ", ".join(f"{c['local']} <-> {c['peer']}" for c in found[:3]) + \
                (f" and {len(found) - 3} more" if len(found) > 3 else "")
            n = len(found)
            raise PreflightError(
                f"container {self.container} holds {n} TCP connection{'s' if n > 1 else ''} ({shown}), which "
                "cannot follow it to a new address", host=self.src_name, container=self.container,
                hint="--keep-ip keeps them, on a network both hosts share; --tcp-close moves it and closes them, "
                     "and their clients reconnect to the new address")

    def _send_image(self, info: dict) -> str:
        """The container's image, from the source's Docker to the destination's; the reference to create from."""
        t = time.monotonic()
        ref = info["image_name"] if not info["image_name"].startswith("sha256:") else info["image_id"]
        self.emit({"event": "transfer", "what": "image", "total": info["image_bytes"]})
        sent, _ = self.src.relay("source.send_image", self.dst, "dest.receive_image", {"image_id": info["image_id"]},
                                 self._bytes("image"), image=ref, level=self.level, threads=self.threads)
        self.report.image_transferred, self.report.image_wire_bytes = True, sent["wire_bytes"]
        self.emit({"event": "transfer-done", "what": "image"})
        self.phase("image", t)
        return ref

    def _create(self, info: dict, image: str) -> None:
        """The destination's container, created (and its restore begun, held at the gate) while the direct link's
        SSH handshake (source -> destination) runs."""
        r = self.report
        t = time.monotonic()
        # pages straight into the link, unless the source must keep a complete checkpoint of its own, or there are
        # too few of them to repay the page-server protocol's round trips over SSH (~0.2 s measured on the lab);
        # in frames, compressed where that pays, unless compression is off (the link's far end decodes them)
        streams = not self.keep_source and r.mode == "stop-copy" and \
            {"always": True, "never": False}.get(self.stream_pages, info["memory_bytes"] >= STREAM_PAGES_FROM)
        self.framed_pages = streams and self.page_compression == "auto"
        connecting = self._wants_link(info) and self._start_link()
        created = self.dst.call("dest.create", name=info["name"], image=image, config=info["config"],
                                host_config=info["host_config"], networks=info["networks"],
                                migration_id=self.id, io_timeout=self.io_timeout, source=self.src_name,
                                allow_privileged=self.allow_privileged, tcp_close=self.tcp_close,
                                keep_ip=self.keep_ip, endpoints=info.get("endpoints") or [],
                                arm_restore=True, netns=bool(info.get("runc_state")) and not self.keep_source,
                                wait_gate=r.mode != "stop-copy" or info["memory_bytes"] < WAIT_GATE_BELOW)
        self.dst_id = r.destination_id = created["id"]
        # the destination made the network namespace already: the source dumps it as external (--keep-source
        # does not: its checkpoint must restore with Docker alone)
        self.external_netns = bool(created.get("netns"))
        # its restore takes file locks back: the dump carries them (--keep-source does not: Docker alone restores
        # the source's checkpoint, and cannot be told to)
        self.file_locks = bool(created.get("file_locks")) and not self.keep_source
        self.volume_sources = [created["volume_sources"].get(v["destination"]) for v in info["volumes"]]
        if connecting:
            try:
                self.src.wait()
                r.data_path = "direct"
            except MigrationError as exc:
                self._no_link(exc)
        r.pages_streamed = r.data_path == "direct" and streams
        self.phase("create", t)

    def _freeze(self, info: dict, parent: str | None) -> None:
        """The freeze: from here until the destination runs, the container is down (the downtime)."""
        r = self.report
        send_args = dict(migration_id=self.id, volumes=[{"source": v["source"]} for v in info["volumes"]],
                         level=self.level, threads=self.threads)
        receive_args = {"migration_id": self.id, "volume_sources": self.volume_sources,
                        "io_timeout": self.io_timeout}
        self.emit({"event": "phase", "phase": "dump"})
        t_freeze = self.t_freeze = time.monotonic()
        if r.data_path == "direct":
            sent = self._freeze_direct(info, send_args, receive_args, parent)
        else:
            sent = self._freeze_relayed(info, send_args, receive_args, parent)
        r.raw_bytes = sent["raw_bytes"] + self.dump.get("page_bytes", 0) + sum(i["bytes"] for i in r.precopy)
        pages_wire = self.dump.get("page_wire_bytes", self.dump.get("page_bytes", 0))
        r.pages_compressed = pages_wire < self.dump.get("page_bytes", 0)   # raw chunks alone take a few bytes more
        r.wire_bytes = sent["wire_bytes"] + pages_wire + sum(i["wire_bytes"] for i in r.precopy)
        # from the freeze itself: the source's checks before it, in the same call, are not downtime
        r.downtime = time.monotonic() - t_freeze - self.dump.get("freeze_after", 0.0)

    def _finish(self, info: dict) -> None:
        """After the commit: the source lets go (removes its frozen copy, or keeps it with its checkpoint), then
        the destination forgets the journal. A failure here leaves the container running on the destination, and
        a warning that says what to run."""
        r = self.report
        t = time.monotonic()
        try:
            fin = self._on(self.src, self.src_name, "source.finish", container_id=info["id"],
                           migration_id=self.id, keep=self.keep_source)
            self.finished = True
            r.kept_source, r.source_checkpoint = fin["kept"], fin.get("checkpoint")
        except MigrationError as exc:
            r.warnings.append(f"the container runs on {self.dst_name}, but its stopped copy on {self.src_name} "
                              f"could not be cleaned up: {exc.line()}; run: cmigrate recover {self.src_name} "
                              f"{self.container}")
        else:
            try:
                self._on(self.dst, self.dst_name, "dest.forget", migration_id=self.id)
            except MigrationError as exc:
                r.warnings.append(f"the migration is complete, but {self.dst_name} still keeps its journal "
                                  f"({exc.line()}); run: cmigrate recover {self.dst_name} {self.container}")
        self.phase("finish", t)

    def _collect_stats(self) -> None:
        for role, session in (("source", self.src), ("destination", self.dst)):
            try:
                self.report.agent_peak_rss_kib[role] = session.call("stats")["peak_rss_kib"]
            except MigrationError:
                pass

    def _choose_mode(self, src: dict, dst: dict) -> str:
        """The mode asked for, if both kernels can do it (CRIU's own feature checks say); ``auto`` never picks
        post-copy (it can lose the container with the link)."""
        dirty = src.get("dirty_tracking") and dst.get("dirty_tracking")
        if self.mode == "pre-copy" or (self.mode == "auto" and dirty):
            for name, criu in ((self.src_name, src), (self.dst_name, dst)):
                if not criu.get("dirty_tracking"):
                    raise PreflightError(
                        "pre-copy needs soft-dirty memory tracking, and this kernel has none "
                        "(CONFIG_MEM_SOFT_DIRTY; 'criu check --feature mem_dirty_track' fails)", host=name,
                        container=self.container, hint="use --mode stop-copy or post-copy, or a kernel built "
                                                       "with CONFIG_MEM_SOFT_DIRTY=y")
            if self.keep_source:
                raise UsageError("pre-copy leaves the source's checkpoint split over its pre-dumps: drop "
                                 "--keep-source")
            return "pre-copy"
        if self.mode == "post-copy":
            if not dst.get("uffd"):
                raise PreflightError("post-copy needs userfaultfd on the destination, and this kernel has none "
                                     "('criu check --feature uffd-noncoop' fails)", host=self.dst_name,
                                     container=self.container, hint="use --mode stop-copy")
            if self.data_path == "relay":
                raise UsageError("post-copy needs the direct data link: drop --data-path relay")
            if self.keep_source:
                raise UsageError("post-copy leaves no complete checkpoint on the source: drop --keep-source")
            return "post-copy"
        return "stop-copy"

    def _wants_link(self, info: dict) -> bool:
        """Whether to open a direct data link: asked for, needed (post-copy, pre-copy's iterations), or worth its
        setup (``RELAY_BELOW``)."""
        if self.data_path != "auto":
            return self.data_path == "direct"
        carried = info["memory_bytes"] + info["upper_bytes"] + sum(v["bytes"] for v in info["volumes"])
        return self.report.mode != "stop-copy" or carried >= RELAY_BELOW

    def _start_link(self) -> bool:
        """Ask the source to open the direct data link(s) to the destination; the answers are collected later."""
        try:
            listen = self.dst.call("dest.listen", migration_id=self.id)
            if self.report.mode == "post-copy":   # a second link for CRIU's lazy page traffic
                pages = self.dst.call("dest.listen", migration_id=self.id, kind="pages")
                self.src.call("source.connect", framed_pages=self.page_compression == "auto",
                              **self._connect_args(pages, kind="pages"))
        except MigrationError as exc:
            self._no_link(exc)
            return False
        self.src.start("source.connect", framed_pages=self.framed_pages, **self._connect_args(listen))
        return True

    def _no_link(self, exc: MigrationError) -> None:
        """No direct link: an error if it was asked for, else the data is relayed (and the report says why)."""
        if self.data_path == "direct" or self.report.mode == "post-copy":
            exc.hint = exc.hint or (f"{self.src_name} must reach {self.dst_name} by ssh with its own keys and "
                                    "known hosts; or use --data-path relay")
            raise exc
        self.report.warnings.append(f"no direct link {self.src_name} -> {self.dst_name} ({exc.message}); "
                                    "the data was relayed through this machine")

    def _freeze_relayed(self, info: dict, send_args: dict, receive_args: dict, parent: str | None) -> dict:
        """Dump; relay the files through this machine; restore: one call after the other."""
        r = self.report
        t = time.monotonic()
        dump = self.dump = self.src.call("source.dump", container_id=info["id"], migration_id=self.id,
                                         destination=self.dst_name, parent=parent,
                                         external_netns=self.external_netns, tcp_close=self.tcp_close,
                                         keep_ip=self.keep_ip, file_locks=self.file_locks)
        r.frozen_dump = dump["dump_seconds"]
        self.phase("dump", t)
        self.fault("frozen")
        t = time.monotonic()
        self.emit({"event": "transfer", "what": "checkpoint", "total": dump["images_bytes"] +
                   sum(v["bytes"] for v in info["volumes"])})
        sent, _ = self.src.relay("source.send", self.dst, "dest.receive", receive_args,
                                 self._bytes("checkpoint"), **send_args)
        self.emit({"event": "transfer-done", "what": "checkpoint"})
        self.phase("transfer", t)
        t = time.monotonic()
        self.emit({"event": "phase", "phase": "restore"})
        self.dst.call("dest.restore", container_id=self.dst_id, migration_id=self.id)
        self.phase("restore", t)
        return sent

    def _freeze_direct(self, info: dict, send_args: dict, receive_args: dict, parent: str | None) -> dict:
        """One call to each end: the source dumps and streams at once (pages while dumping, if streamed); the
        destination receives, verifies and restores. No round trip through this machine in between."""
        r = self.report
        t = time.monotonic()
        lazy = r.mode == "post-copy"
        self.dst.start("dest.receive", direct=True, pages=r.pages_streamed, restore_id=self.dst_id, lazy=lazy,
                       **receive_args)
        on_bytes = self._bytes("checkpoint")
        try:
            dump = self.dump = self.src.call("source.dump", container_id=info["id"], migration_id=self.id,
                                             destination=self.dst_name, parent=parent,
                                             page_link=r.pages_streamed,
                                             send=send_args, lazy=lazy,
                                             external_netns=self.external_netns, tcp_close=self.tcp_close,
                                             keep_ip=self.keep_ip, file_locks=self.file_locks,
                                             progress=lambda m: on_bytes(m.get("bytes", 0)))
        except DumpAborted as exc:
            self.state = "prepared"   # the source thawed it; the destination cannot have restored anything
            cause = self._collect_dest()
            if cause is not None and not isinstance(cause, TransportError):   # e.g. its disk full: say that
                raise DumpAborted(f"{cause.message} (on {self.dst_name}: the dump on {self.src_name} stopped)",
                                  host=self.dst_name, container=self.container, detail=cause.detail,
                                  hint=cause.hint) from exc
            raise
        except MigrationError:
            self._collect_dest()
            raise
        r.frozen_dump = dump["dump_seconds"]
        self.fault("frozen")
        sent = dump["sent"]
        r.phases["dump"] = time.monotonic() - t - sent["seconds"]
        r.phases["transfer"] = sent["seconds"]
        self.emit({"event": "transfer-done", "what": "checkpoint"})
        t = time.monotonic()
        self.emit({"event": "phase", "phase": "restore"})
        # everything has arrived: the destination checks it against the manifest, restores and answers
        try:
            self.dst.wait()
        except TransportError:
            self.dst.sever()
            raise
        self.phase("restore", t)
        return sent

    def _precopy(self, info: dict, direct: bool) -> str:
        """Pre-copy: pre-dumps while the container runs, each sent to the destination as soon as it is made,
        until the stop rule says that what is left is small enough to move frozen. Returns the last pre-dump's
        directory: the final dump's parent."""
        r, rule = self.report, self.precopy
        t = time.monotonic()
        self.emit({"event": "phase", "phase": "pre-copy"})
        send = dict(migration_id=self.id, level=self.level, threads=self.threads)
        previous = None
        for n in range(1, rule.max_iterations + 1):
            receive = {"migration_id": self.id, "dir": f"pre-{n}", "io_timeout": self.io_timeout}
            predump = dict(container_id=info["id"], migration_id=self.id, iteration=n)
            if direct:
                if n > 1:
                    self._relink()   # one stream per link
                self.dst.start("dest.receive", direct=True, **receive)
                try:
                    it = self.src.call("source.predump", send=send, **predump,
                                       progress=lambda m: self._bytes("pre-copy")(m.get("bytes", 0)))
                except MigrationError:
                    self._collect_dest()
                    raise
                self.dst.wait()
                sent = it.pop("sent")
            else:
                it = self.src.call("source.predump", **predump)
                sent, _ = self.src.relay("source.send", self.dst, "dest.receive", receive, self._bytes("pre-copy"),
                                         dir=f"pre-{n}", **send)
            it["wire_bytes"] = sent["wire_bytes"]
            r.precopy.append(it)
            self.emit({"event": "pre-dump", **it})
            r.precopy_stop = rule.stop(n, it["pages"], previous)
            if r.precopy_stop:
                break
            previous = it["pages"]
        if direct:
            self._relink()   # for the final dump
        self.phase("pre-copy", t)
        return f"pre-{len(r.precopy)}"

    def _relink(self) -> None:
        """A new direct data link (each carries one stream)."""
        self.src.call("source.connect", **self._connect_args(self.dst.call("dest.listen", migration_id=self.id)))

    def _connect_args(self, listen: dict, **kind: str) -> dict:
        """source.connect's arguments for the destination's listener ``listen`` (what dest.listen answered): the
        source joins it over its own SSH, running the agent command there."""
        # the destination as this machine verified it (address and host key): the source's own config may
        # resolve the name elsewhere, or accept a key it has never seen
        pin = self.dst.host.pin() if hasattr(self.dst.host, "pin") else None
        return dict(migration_id=self.id, target=self.dst_name, socket=listen["socket"], token=listen["token"],
                    io_timeout=self.io_timeout, agent=self.agent or os.environ.get("CMIGRATE_AGENT") or DEFAULT_AGENT,
                    pin=pin, **kind)

    def _wait_pages(self) -> None:
        """Post-copy: the container runs on the destination; its remaining pages arrive on demand and in the
        background. Only when all have may the source let go."""
        t = time.monotonic()
        self.emit({"event": "phase", "phase": "pages"})
        on_bytes = self._bytes("pages")
        self.src.start("source.wait_pages", migration_id=self.id)
        self.dst.set_timeout(None)   # silent until the last page, however long that takes
        try:
            self.dst.call("dest.wait_pages", migration_id=self.id, io_timeout=self.io_timeout)
        finally:
            self.dst.set_timeout(self.io_timeout)
            done = self.src.wait(progress=lambda m: on_bytes(m.get("bytes", 0)))
        self.report.postcopy_seconds = time.monotonic() - t
        self.report.wire_bytes += done.get("page_wire_bytes", done.get("page_bytes", 0))
        self.report.raw_bytes += done.get("page_bytes", 0)
        self.phase("pages", t)

    def _collect_dest(self) -> MigrationError | None:
        """The source failed mid-stream: the destination sees its stream end and answers (an error, returned);
        if its link is gone too, stop waiting for it (it cleans up by itself)."""
        try:
            self.dst.wait()
        except TransportError as exc:
            self.dst.sever()
            return exc
        except MigrationError as exc:
            return exc
        return None

    def _bytes(self, what: str):
        def on_bytes(n: int) -> None:
            if what == "checkpoint" and n:
                self.fault("transfer")
            self.emit({"event": "bytes", "what": what, "bytes": n})
        return on_bytes

    def _rollback(self, exc: BaseException) -> None:
        """Undo what the migration did, through the sessions it had or, where one died with its agent, a fresh
        one. The source is thawed only once the destination is known to hold no running copy: otherwise it stays
        frozen (with its journal) for ``cmigrate recover``, because running it could make it run twice."""
        if self.state == "init":
            return
        if self.state == "committed":
            self._finish_after_interrupt(exc)
            return
        dst_clean = self._discard_destination() if self.dst is not None else True
        if isinstance(exc, DumpAborted):
            exc.hint = (exc.hint + "; " if exc.hint else "") + f"{self.container} runs on {self.src_name} again"
        if self.state not in ("frozen", "pages", "restored") or self.src is None:
            return
        if not dst_clean:
            what = "post-copy failed" if self.state == "pages" else "migration failed"
            raise RollbackError(
                f"{what} ({_one_line(exc)}) and {self.dst_name} could not be told to drop its copy, so "
                f"{self.container} stays frozen on {self.src_name} (thawing it could make it run twice)",
                host=self.dst_name, container=self.container,
                hint=f"once {self.dst_name} is reachable: cmigrate recover {self.src_name} {self.container}") from exc
        try:
            self._on(self.src, self.src_name, "source.resume", container_id=self.src_info["id"],
                     migration_id=self.id, restart_policy=self.dump.get("restart_policy"))
        except MigrationError as e:
            raise RollbackError(
                f"migration failed ({_one_line(exc)}) and {self.container} could not be resumed on {self.src_name}: "
                f"{e.message}", host=self.src_name, container=self.container,
                hint=f"it is kept frozen there with its checkpoint; once the host is reachable: cmigrate recover "
                     f"{self.src_name} {self.container}") from exc
        if isinstance(exc, MigrationError):
            exc.hint = (exc.hint + "; " if exc.hint else "") + \
                f"rolled back: {self.container} runs on {self.src_name} again"

    def _interrupted(self) -> str:
        c, src, dst = self.container, self.src_name, self.dst_name
        if self.state == "committed":
            return f"interrupted after the commit point: {c} runs on {dst}, its copy on {src} was removed"
        if self.state in ("frozen", "pages", "restored"):
            return f"interrupted: rolled back, {c} runs on {src} again and {dst} kept nothing of it"
        return f"interrupted before the freeze: {c} runs on {src}, untouched"

    def _discard_destination(self) -> bool:
        """Remove what the destination made: through our session, else a fresh agent that finds the migration
        by its journal there. False if neither could."""
        try:
            self.dst.call("dest.discard", migration_id=self.id)
            return True
        except MigrationError:
            pass
        try:
            self._fresh(self.dst_name, "dest.abandon", migration_id=self.id)
            return True
        except MigrationError:
            # before the freeze nothing on the destination can run; its agent removes the rest when it notices
            return self.state == "prepared"

    def _on(self, session: AgentSession, host_name: str, op: str, **args) -> dict:
        """A call through our session to ``host_name``; through a fresh one if ours is gone (its agent killed,
        say)."""
        try:
            return session.call(op, **args)
        except TransportError:
            return self._fresh(host_name, op, **args)

    def _fresh(self, host_name: str, op: str, **args) -> dict:
        with agent_on(host_name, self.ssh_config, self.agent, self.io_timeout) as session:
            return session.call(op, **args)

    def _finish_after_interrupt(self, exc: BaseException) -> None:
        """Past the commit point the destination owns the container: an interruption (Ctrl-C, a lost source
        agent) finishes the migration rather than leave the frozen source copy behind."""
        try:
            if not self.finished:
                self._on(self.src, self.src_name, "source.finish", container_id=self.src_info["id"],
                         migration_id=self.id, keep=self.keep_source)
            self._on(self.dst, self.dst_name, "dest.forget", migration_id=self.id)
        except MigrationError as e:
            raise RollbackError(
                f"{self.container} runs on {self.dst_name}, but its frozen copy on {self.src_name} could not be "
                f"removed ({e.message})", host=self.src_name, container=self.container,
                hint=f"cmigrate recover {self.src_name} {self.container}") from exc
