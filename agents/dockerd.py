"""The local Docker daemon as an agent sees it: the SDK plus the experimental checkpoint endpoints it lacks."""
from __future__ import annotations

import datetime
import functools
import os
import re
import time
from pathlib import Path

import docker
import docker.errors
import requests

from migrate.errors import CheckpointError, DockerError, PreflightError
from migrate.hostinfo import docker_versions

HEALTH_ROOM = 1.5   # s: longer than most freezes last until the source's copy is gone (the counter: ~0.5 s)
FAST_RUNTIME = "cmigrate-runc"   # agents/cmigrate-runc registered with dockerd (--add-runtime)
LOG_PATH = re.compile(r"(?:log file:|path=)\s*(/\S+?\.log)")


@functools.cache
def _api_version(where: str) -> str:
    """The API version the daemon at ``where`` answers, asked once per process."""
    probe = docker.from_env(version="auto", timeout=30)
    try:
        return probe.api.api_version
    finally:
        probe.close()


def client(timeout: int | None = 300) -> docker.DockerClient:
    """A client of this host's daemon. The API version is asked of the daemon once per process (``auto`` asks at
    every client: a request to /version, ~6 ms, and an agent makes a client for each step of a migration, some of
    them while the container is frozen)."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        return docker.from_env(timeout=timeout, version=_api_version(where))
    except docker.errors.DockerException as exc:
        raise PreflightError(f"cannot reach the Docker daemon at {where}: {exc}",
                             hint="is dockerd running? set DOCKER_HOST if it listens elsewhere") from exc


class Docker:
    """One daemon. Methods raise DockerError/PreflightError, never docker-py's exceptions."""

    def __init__(self, timeout: int | None = 300) -> None:
        self.client = client(timeout)
        self.api = self.client.api
        self._info: dict | None = None

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ daemon
    def info(self) -> dict:
        if self._info is None:
            self._info = self._do("read daemon info", self.api.info)
        return self._info

    def require_checkpointing(self) -> None:
        """Refuse a daemon that cannot checkpoint and restore the way cmigrate does: not experimental, or keeping
        containers in containerd's image store."""
        if not self.info().get("ExperimentalBuild"):
            raise PreflightError("Docker is not in experimental mode (checkpoint and restore need it)",
                                 hint="start dockerd with --experimental, or set \"experimental\": true in "
                                      "/etc/docker/daemon.json and restart it")
        if self.uses_containerd_store():
            raise PreflightError("Docker keeps containers in containerd's image store (the containerd-snapshotter "
                                 "feature): cmigrate carries a container's writable layer only from overlay2",
                                 hint="set \"features\": {\"containerd-snapshotter\": false} in "
                                      "/etc/docker/daemon.json and restart dockerd (images and containers made "
                                      "in the containerd store are not seen by overlay2)")

    def uses_containerd_store(self) -> bool:
        """Docker 24+ with the containerd-snapshotter feature (the default of new Docker 29 installs): the
        writable layer lives in a containerd snapshot, not in an overlay2 upper directory."""
        status = dict(tuple(pair) for pair in (self.info().get("DriverStatus") or []) if len(pair) == 2)
        return status.get("driver-type") == "io.containerd.snapshotter.v1"

    def versions(self) -> dict[str, str | None]:
        """The versions of Docker and of the containerd and runc it uses, as the daemon reports them."""
        return docker_versions(self._do("read daemon version", self.api.version))

    @property
    def root_dir(self) -> Path:
        return Path(self.info()["DockerRootDir"])

    @property
    def exec_root(self) -> Path:
        """dockerd's --exec-root (the API does not say it): $CMIGRATE_DOCKER_EXEC_ROOT, or Docker's default."""
        return Path(os.environ.get("CMIGRATE_DOCKER_EXEC_ROOT", "/var/run/docker"))

    def runc_root(self, info: dict) -> Path | None:
        """runc's state directory for this container, if its runtime is runc (or our wrapper of it)."""
        runtime = info["HostConfig"].get("Runtime") or "runc"
        if runtime not in ("runc", FAST_RUNTIME):
            return None
        # Docker 20.10 keeps every runc-based runtime's state under runtime-runc; later releases per runtime
        for root in (self.exec_root / f"runtime-{runtime}" / "moby", self.exec_root / "runtime-runc" / "moby"):
            if (root / info["Id"]).exists():
                return root
        return None

    def has_fast_runtime(self) -> bool:
        return FAST_RUNTIME in (self.info().get("Runtimes") or {})

    # ------------------------------------------------------------------ containers
    def inspect(self, container: str) -> dict:
        try:
            return self.api.inspect_container(container)
        except docker.errors.NotFound as exc:
            raise PreflightError(f"no such container: {container}", container=container) from exc
        except (docker.errors.APIError, requests.RequestException) as exc:
            raise DockerError(f"cannot inspect container {container}: {exc}", container=container) from exc

    def inspect_running(self, container: str) -> dict:
        """inspect, refusing a container that is not running (or is paused: its state is half-frozen)."""
        info = self.inspect(container)
        if not info["State"].get("Running"):
            raise PreflightError(f"container {container} is not running", container=container)
        if info["State"].get("Paused"):
            raise PreflightError(f"container {container} is paused: unpause it first", container=container)
        return info

    def exec_sessions(self, info: dict) -> list[str]:
        """The command lines of the ``docker exec`` sessions running in the container, its health probes left out
        (Docker runs those as execs too; they are its own, short, and run again wherever the container runs)."""
        test = (info["Config"].get("Healthcheck") or {}).get("Test") or []   # ["CMD-SHELL", "cmd"] or ["CMD", ...]
        shell = info["Config"].get("Shell") or ["/bin/sh", "-c"]
        probe = [*shell, *test[1:]] if test[:1] == ["CMD-SHELL"] else test[1:] if test[:1] == ["CMD"] else None
        running = []
        for eid in self.inspect(info["Id"]).get("ExecIDs") or []:
            try:
                ex = self.api.exec_inspect(eid)
            except docker.errors.NotFound:
                continue   # ended meanwhile
            except (docker.errors.APIError, requests.RequestException) as exc:
                raise DockerError(f"cannot inspect exec session {eid[:12]}: {exc}", container=info["Id"]) from exc
            pc = ex.get("ProcessConfig") or {}
            argv = [pc.get("entrypoint") or "", *(pc.get("arguments") or [])]
            if ex.get("Running") and argv != probe:
                running.append(" ".join(argv))
        return running

    def between_health_probes(self, info: dict, room: float = HEALTH_ROOM) -> float:
        """Wait, if need be, until the container's next health probe is at least ``room`` seconds away; the seconds
        waited. Docker probes a frozen container too: runc refuses to exec into it, and Docker counts that as a
        failed check, so a freeze over a probe turned a healthy container "unhealthy" (with --health-retries 1)
        for anyone watching the source. Probes come ``Interval`` after the previous one ended; when the next is
        due sooner than ``room``, this waits for it to end (at most its timeout), leaving a whole interval."""
        hc = info["Config"].get("Healthcheck") or {}
        if not hc.get("Test") or hc["Test"][0] == "NONE":
            return 0.0
        interval = (hc.get("Interval") or 30 * 10**9) / 1e9
        timeout = (hc.get("Timeout") or 30 * 10**9) / 1e9
        started = time.time()
        last = _last_probe_end(self.inspect(info["Id"]))
        if last is None or last + interval - started > room or interval <= room:
            return 0.0   # no probe yet (Docker starts them itself), room enough, or never room: go now
        deadline = last + interval + timeout + 1.0
        while time.time() < deadline:
            time.sleep(0.02)
            if _last_probe_end(self.inspect(info["Id"])) != last:
                break
        return time.time() - started

    def wait_stopped(self, cid: str, timeout: float = 30.0) -> None:
        """Docker learns of a dumped container's exit asynchronously; its files are only stable once it is down."""
        deadline = time.monotonic() + timeout
        while self.inspect(cid)["State"].get("Running"):
            if time.monotonic() > deadline:
                raise CheckpointError("the container still runs after its dump", container=cid)
            time.sleep(0.01)

    def running(self) -> list[dict]:
        """The running containers as Docker lists them (Id, Names, Labels, Image: one request, no inspect each)."""
        return self._do("list the containers", self.api.containers)

    def exists(self, container: str) -> bool:
        try:
            self.api.inspect_container(container)
            return True
        except docker.errors.NotFound:
            return False

    def _do(self, what: str, fn, *args, container: str | None = None, **kwargs):
        try:
            return fn(*args, **kwargs)
        except docker.errors.NotFound as exc:
            raise PreflightError(f"{what}: {_explain(exc)}", container=container) from exc
        except (docker.errors.APIError, requests.RequestException) as exc:
            raise DockerError(f"{what}: {_explain(exc)}", container=container) from exc

    def set_restart_policy(self, cid: str, policy: dict | None) -> dict:
        """Set the restart policy; returns the one it had. A checkpoint that stops the container looks like a
        crash to Docker, which would start a fresh copy under ``always``/``on-failure``/``unless-stopped``."""
        old = self.inspect(cid)["HostConfig"].get("RestartPolicy") or {"Name": "no"}
        new = policy or {"Name": "no"}
        if (old.get("Name") or "no") != (new.get("Name") or "no"):
            self._do("update the restart policy", self.api.update_container, cid,
                     restart_policy={"Name": new.get("Name") or "no",
                                     "MaximumRetryCount": new.get("MaximumRetryCount", 0)}, container=cid)
        return old

    def pause(self, cid: str) -> None:
        self._do("pause", self.api.pause, cid, container=cid)

    def unpause(self, cid: str) -> None:
        self._do("unpause", self.api.unpause, cid, container=cid)

    # ------------------------------------------------------------------ checkpoints (experimental API)
    def checkpoint_create(self, cid: str, name: str, checkpoint_dir: str | None, exit: bool) -> None:
        body = {"CheckpointID": name, "Exit": exit}
        if checkpoint_dir:
            body["CheckpointDir"] = checkpoint_dir
        resp = self.api.post(self.api._url("/containers/{0}/checkpoints", cid), json=body)
        self._check(resp, f"docker checkpoint create {name}", cid)

    def start_from_checkpoint(self, cid: str, name: str) -> None:
        resp = self.api.post(self.api._url("/containers/{0}/start", cid), params={"checkpoint": name})
        self._check(resp, f"docker start --checkpoint {name}", cid)

    def _check(self, resp: requests.Response, what: str, cid: str) -> None:
        if resp.status_code < 300:
            return
        try:
            message = resp.json().get("message", resp.text)
        except ValueError:
            message = resp.text
        raise DockerError(f"{what} failed: {first_line(message)}", container=cid, detail=message)


def _explain(exc: docker.errors.APIError) -> str:
    return first_line(getattr(exc, "explanation", None) or str(exc))


def first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "no message"


def criu_log_excerpt(message: str, lines: int = 12) -> tuple[str | None, str]:
    """The CRIU log named in a Docker/runc error, and its relevant lines (errors and what led to them)."""
    m = LOG_PATH.search(message or "")
    if not m:
        return None, ""
    path = Path(m.group(1))
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return str(path), ""
    # CRIU in this VM always logs an Error for RLIMIT_NOFILE and carries on: not the cause of anything.
    wanted = [ln for ln in text if "Error (" in ln and "RLIMIT_NOFILE" not in ln]
    return str(path), "\n".join((wanted or text[-lines:])[:lines])


def criu_failure(cls, what: str, log: Path | str | None, fallback: str, speaker: str = "CRIU", **fields):
    """The one way a CRIU failure is told: "<what> failed, CRIU says: <its first error line>", the log's relevant
    lines as the detail and its path as the hint; ``fallback`` (runc's stderr, an exit status) where the log
    says nothing. ``speaker`` names the CRIU that spoke ("CRIU's page server")."""
    first, excerpt = criu_says(Path(log), fallback) if log else (fallback, "")
    return cls(f"{what} failed, {speaker} says: {first.strip()}",
               detail=f"CRIU log {log}:\n{excerpt}" if excerpt else fallback,
               hint=f"full log: {log}" if log and excerpt else "", **fields)


def criu_says(log: Path, fallback: str) -> tuple[str, str]:
    """For an error message: CRIU's first error line in ``log`` without its source location (``fallback`` when the
    log has none), and the log's relevant lines."""
    _, excerpt = criu_log_excerpt(f"log file: {log}")
    first = (excerpt.splitlines() or [fallback])[0]
    return first.split("): ", 1)[-1], excerpt


def _last_probe_end(info: dict) -> float | None:
    """When the container's last health probe ended (epoch seconds), from Docker's health log."""
    log = ((info["State"].get("Health") or {}).get("Log")) or []
    if not log:
        return None
    stamp = log[-1].get("End") or ""   # 2026-12-03T08:01:02.123456789Z (or with an offset)
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", stamp)
    if not m:
        return None
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    whole = datetime.datetime.fromisoformat(m.group(1) + zone).timestamp()
    return whole + float("0." + (m.group(2) or "0"))


def criu_config_for_cmigrate() -> str:
    """A CRIU configuration for the dumps and restores cmigrate runs itself, handed to CRIU through runc by the
    ``CRIU_CONFIG_FILE`` environment variable (scoped to that one run; never the global /etc/criu/runc.conf).

    ``network-lock skip``: CRIU otherwise "unlocks" the container's network after every dump and restore by
    running iptables-restore twice (IPv4, IPv6): 60-80 ms of frozen time measured here. The lock only matters for
    established TCP connections, which runc does not dump unless told to (--tcp-established), so it is kept
    whenever the host's runc.conf asks for that."""
    try:
        global_conf = Path("/etc/criu/runc.conf").read_text()
    except OSError:
        global_conf = ""
    return "" if "tcp-established" in global_conf else "network-lock skip\n"

