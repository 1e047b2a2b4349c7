"""The local lab: ``hostA`` and ``hostB`` (and with ``lab up --hosts 3``, ``hostC``) as network namespaces on one
machine.

Each host has its own address on the bridge ``cmlab0`` (198.18.0.0/24, a range reserved for tests), its own sshd
(key-only, lab-generated keys, host keys recorded in the lab's known_hosts) and its own dockerd (experimental, own
data-root, exec-root, socket, pidfile, container bridge range). Daemons are started with ``nsenter --net`` rather
than ``ip netns exec``: the latter remounts /sys and hides the cgroup v1 hierarchy, and dockerd then dies with
"Devices cgroup isn't mounted".

Commands run over SSH on a lab host see ``DOCKER_HOST`` (and ``CMIGRATE_DOCKER_EXEC_ROOT``) pointing at that
host's own dockerd, set by its sshd's ``SetEnv``.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from migrate.errors import LabError, MigrationError
from migrate.hostinfo import CRIU_LAZY_PIPE_BYTES, docker_versions
from transport.hosts import LocalHost

LAB_ROOT = Path("/var/lib/cmigrate-lab")     # keys, configs, data-roots, logs
RUN_ROOT = Path("/run/cmigrate-lab")         # exec-roots and sockets (kept short: unix socket paths <= 107)
BRIDGE = "cmlab0"
BRIDGE_ADDR = "198.18.0.1"
PREFIX = 24
TEST_IMAGE = "busybox:latest"
TEST_IMAGE_LABEL = "org.cmigrate.lab"
DOCKERD = "dockerd"
SSHD = "/usr/sbin/sshd"
READY_TIMEOUT = 90.0

Say = Callable[[str], None]


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str
    container_bip: str      # the host's docker0 address/prefix
    address_pool: str       # user-defined networks

    @property
    def netns(self) -> str:
        return f"cmlab-{self.name}"

    @property
    def veth(self) -> str:
        return f"cmlab-{self.name}"

    @property
    def state(self) -> Path:
        return LAB_ROOT / self.name

    @property
    def data_root(self) -> Path:
        return self.state / "docker"

    @property
    def exec_root(self) -> Path:
        return RUN_ROOT / self.name

    @property
    def docker_socket(self) -> Path:
        return self.exec_root / "docker.sock"

    @property
    def docker_url(self) -> str:
        return f"unix://{self.docker_socket}"

    @property
    def dockerd_pidfile(self) -> Path:
        return self.exec_root / "docker.pid"

    @property
    def sshd_pidfile(self) -> Path:
        return self.exec_root / "sshd.pid"

    @property
    def runc_root(self) -> Path:
        return self.exec_root / "runtime-runc" / "moby"

    @property
    def nsenter(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}"]


ALL_HOSTS = (
    LabHost("hostA", "198.18.0.11", "198.19.1.1/24", "198.19.16.0/20"),
    LabHost("hostB", "198.18.0.12", "198.19.2.1/24", "198.19.32.0/20"),
    LabHost("hostC", "198.18.0.13", "198.19.3.1/24", "198.19.48.0/20"),
)
DEFAULT_HOSTS = 2   # hostA and hostB; lab up --hosts 3 adds hostC (fleet moves: evacuate, balance)
# A client on the bridge, for tests and demos: a network namespace of its own, like a machine on the segment
CLIENT_NETNS, CLIENT_VETH, CLIENT_ADDR = "cmlab-client", "cmlab-client", "198.18.0.20"
# A Docker network both hosts share at layer 2: macvlan on each host's link to the bridge, one subnet, and a range
# of its own on each host for the addresses Docker picks, so that the two never pick the same one
SHARED_NETWORK = "cmshared"
SHARED_RANGES = {"hostA": "198.18.0.64/27", "hostB": "198.18.0.96/27", "hostC": "198.18.0.128/27"}
SSH_CONFIG = LAB_ROOT / "ssh_config"
CLIENT_KEY = LAB_ROOT / "id_ed25519"
KNOWN_HOSTS = LAB_ROOT / "known_hosts"
AUTHORIZED_KEYS = LAB_ROOT / "authorized_keys"
HOST_COUNT = LAB_ROOT / "hosts"   # how many hosts the running lab has (lab up --hosts N)


def hosts() -> tuple[LabHost, ...]:
    """The hosts of the lab as it was brought up (the first two when it is down)."""
    try:
        n = int(HOST_COUNT.read_text())
    except (OSError, ValueError):
        n = DEFAULT_HOSTS
    return ALL_HOSTS[:max(DEFAULT_HOSTS, min(n, len(ALL_HOSTS)))]


def host(name: str) -> LabHost:
    for h in hosts():
        if h.name == name:
            return h
    raise LabError(f"no lab host named {name!r} (the lab has {', '.join(h.name for h in hosts())})",
                   hint="cmigrate lab up --hosts 3 adds hostC" if name == "hostC" else None)


# ---------------------------------------------------------------------- helpers
_local = LocalHost("lab")


def _run(argv: list[str], check: bool = True, timeout: float = 120):
    try:
        return _local.run(argv, check=check, timeout=timeout)
    except MigrationError as exc:
        raise LabError(exc.message, argv=argv, detail=exc.detail) from exc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _wait(probe: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if probe():
            return
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, 1.0)


def _kill(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.05)


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


# Daemons the lab starts, directly or through dockerd; a client (ssh, a shell) naming a lab path is not one.
_DAEMONS = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "docker-proxy", "sshd", "runc",
            "criu")


def _lab_pids() -> list[int]:
    """Processes that belong to the lab: daemons whose command line names a lab path, and all in a lab netns."""
    marks = (str(LAB_ROOT).encode(), str(RUN_ROOT).encode())
    mine = _ancestors()
    lab_ns = set()
    for ns in [h.netns for h in ALL_HOSTS] + [_delay_netns(h) for h in ALL_HOSTS]:
        try:
            lab_ns.add(os.stat(f"/run/netns/{ns}").st_ino)
        except OSError:
            pass
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            comm = (entry / "comm").read_text().strip()
            if comm.startswith(_DAEMONS) and any(m in cmdline for m in marks):
                found.append(int(entry.name))
                continue
            if lab_ns and os.stat(entry / "ns" / "net").st_ino in lab_ns:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _lab_mounts() -> list[str]:
    marks = (str(LAB_ROOT), str(RUN_ROOT)) + tuple(f"/run/netns/{h.netns}" for h in ALL_HOSTS)
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if any(target == m or target.startswith(m + "/") for m in marks):
                mounts.append(target)
    return mounts


def _link_exists(name: str) -> bool:
    # the kernel, not /sys/class/net: sysfs shows the links of the network namespace it was mounted in, which
    # need not be ours (a lab run in a network namespace of its own, as tests/platforms does)
    return _run(["ip", "-o", "link", "show", "dev", name], check=False).status == 0


def _netns_exists(name: str) -> bool:
    return Path(f"/run/netns/{name}").exists()


def _ssh_banner(address: str, port: int = 22, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def docker_client(h: LabHost, timeout: int = 60):
    import docker
    return docker.DockerClient(base_url=h.docker_url, timeout=timeout)


def _docker_get(h: LabHost, path: str, timeout: float = 5.0) -> dict | None:
    return docker_get(h.docker_socket, path, timeout)


def docker_get(sock: Path, path: str, timeout: float = 5.0) -> dict | None:
    """GET a Docker API path over a daemon's socket; None when the daemon does not answer or says no.

    A bare HTTP/1.0 request rather than the SDK: probing a dead daemon must not leak connections.
    """
    if not sock.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or head.split()[1] != b"200":
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _docker_version(h: LabHost) -> str | None:
    answer = _docker_get(h, "/version")
    return answer.get("Version") if answer else None


def platform_versions(h: LabHost) -> dict[str, str | None]:
    """The host's Docker, and the containerd and runc it runs, as its dockerd reports them (empty when down)."""
    answer = _docker_get(h, "/version")
    return docker_versions(answer) if answer else {}


# ---------------------------------------------------------------------- test image
MEMHOG_SOURCE = Path(__file__).parent / "workloads" / "memhog.c"
# memhog: memory of a known size and dirtying rate; udpecho: a UDP flow; locker: file locks; watcher: inotify and
# fanotify watches; forest: many processes, threads, pipes and zombies
WORKLOADS = ("memhog", "udpecho", "locker", "watcher", "forest")
FAST_RUNC = Path(__file__).resolve().parents[2] / "agents" / "cmigrate-runc"


def build_memhog(out: Path, source: Path | None = None) -> bytes:
    """A workload (``memhog``, or ``source``), compiled static so that it runs in the busybox image."""
    _run(["cc", "-static", "-O2", "-o", str(out), str(source or MEMHOG_SOURCE)])
    return out.read_bytes()


def busybox_rootfs_tar(busybox: str = "/bin/busybox") -> bytes:
    """A minimal root filesystem, built offline (no registry here): busybox-static with a link per applet, and
    the test workloads (``WORKLOADS``, each from ``workloads/NAME.c``)."""
    applets = _run([busybox, "--list-full"]).out.split()
    LAB_ROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
    built = {w: build_memhog(LAB_ROOT / w, MEMHOG_SOURCE.with_name(f"{w}.c")) for w in WORKLOADS}
    buf = io.BytesIO()
    now = int(time.time())

    def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.linkname = kind, mode, now, link
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if data else None)

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "proc", "sys", "dev", "var",
                  "var/www", "home"):
            add(d, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, Path(busybox).read_bytes())
        for w, binary in built.items():
            add(f"bin/{w}", tarfile.REGTYPE, 0o755, binary)
        for applet in applets:
            if applet != "bin/busybox":
                add(applet, tarfile.SYMTYPE, 0o777, link="/bin/busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        add("var/www/index.html", tarfile.REGTYPE, 0o644, b"hello from cmigrate's lab\n")
    return buf.getvalue()


# the bench's database-like workload (migrate/bench/db.py): Debian's Redis (redis-tools ships the server as
# redis-check-rdb, which serves when named redis-server) and its libraries, on the test image's root filesystem
DB_IMAGE = "cmlab-db:latest"
REDIS = {"usr/bin/redis-server": "/usr/bin/redis-check-rdb", "usr/bin/redis-cli": "/usr/bin/redis-cli"}


def db_rootfs_tar(base: bytes) -> bytes | None:
    """The test image's root filesystem with Redis added; None where redis-tools is not installed."""
    if not all(Path(src).exists() for src in REDIS.values()):
        return None
    libs: set[str] = set()
    for src in REDIS.values():
        for line in _run(["ldd", src]).out.splitlines():
            path = line.split("=>")[-1].split("(")[0].strip()
            if path.startswith("/"):
                libs.add(path)
    buf = io.BytesIO(base)
    with tarfile.open(fileobj=buf, mode="a") as tar:
        for name, src in [*REDIS.items(), *((lib.lstrip("/"), lib) for lib in sorted(libs))]:
            data = Path(src).read_bytes()   # the file a symlink names, under the symlink's name
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def import_test_image(h: LabHost, rootfs: bytes, image: str = TEST_IMAGE) -> None:
    repository, tag = image.rsplit(":", 1)
    client = docker_client(h)
    try:
        client.api.import_image_from_data(
            rootfs, repository=repository, tag=tag,
            changes=['CMD ["sh"]', "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                     f"LABEL {TEST_IMAGE_LABEL}=test-image"])
        client.images.get(image)
    except Exception as exc:
        raise LabError(f"cannot import the test image {image} into {h.name}'s dockerd: {exc}") from exc
    finally:
        client.close()


def _has_test_image(h: LabHost) -> bool:
    image = _docker_get(h, f"/images/{TEST_IMAGE}/json")
    return bool(image) and TEST_IMAGE_LABEL in ((image.get("Config") or {}).get("Labels") or {})


# ---------------------------------------------------------------------- status
@dataclass
class HostStatus:
    name: str
    address: str
    netns: bool
    sshd: bool
    dockerd: str | None
    test_image: bool

    @property
    def healthy(self) -> bool:
        return self.netns and self.sshd and self.dockerd is not None and self.test_image


def host_status(h: LabHost) -> HostStatus:
    netns = _netns_exists(h.netns)
    sshd_pid = _read_pid(h.sshd_pidfile)
    sshd = netns and sshd_pid is not None and _pid_alive(sshd_pid) and _ssh_banner(h.address)
    dockerd = _docker_version(h) if netns else None
    return HostStatus(h.name, h.address, netns, sshd, dockerd, dockerd is not None and _has_test_image(h))


def is_up(n: int | None = None) -> bool:
    """Is the lab up, with at least ``n`` hosts (None: as many as it was brought up with)?"""
    running = hosts()
    if n is not None and len(running) < n:
        return False
    return _link_exists(BRIDGE) and _netns_exists(CLIENT_NETNS) and SSH_CONFIG.exists() and \
        all(host_status(h).healthy for h in running)


# ---------------------------------------------------------------------- up
def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _keygen(path: Path, comment: str) -> str:
    if not path.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return Path(f"{path}.pub").read_text().strip()


def _sshd_config(h: LabHost) -> str:
    # SHLVL=1: bash run by sshd sources ~/.bashrc when its shell level is below 2 (Debian builds it with
    # SSH_SOURCE_BASHRC). A lab host stands for a clean host, not for this machine's root, whose ~/.bashrc (pyenv
    # init on the build machines) cost 85 ms of every command run over SSH, three per migration
    env = (f"DOCKER_HOST={h.docker_url} CMIGRATE_DOCKER_EXEC_ROOT={h.exec_root} CMIGRATE_HOST={h.name} "
           f"CMIGRATE_CONTAINERD_TMP={h.exec_root}/tmp CMIGRATE_SSH_CONFIG={SSH_CONFIG} SHLVL=1")
    return f"""# cmigrate lab: sshd of {h.name}
ListenAddress {h.address}
Port 22
HostKey {h.state}/ssh_host_ed25519_key
PidFile {h.sshd_pidfile}
AuthorizedKeysFile {AUTHORIZED_KEYS}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
X11Forwarding no
AllowTcpForwarding yes
MaxSessions 100
MaxStartups 100:30:200
ClientAliveInterval 15
SetEnv {env}
Subsystem sftp internal-sftp
"""


def _ssh_config(lab_hosts: tuple[LabHost, ...]) -> str:
    blocks = [f"""Host {h.name}
    HostName {h.address}
    User root
    Port 22
    IdentityFile {CLIENT_KEY}
    IdentitiesOnly yes
    UserKnownHostsFile {KNOWN_HOSTS}
    StrictHostKeyChecking yes
    BatchMode yes
""" for h in lab_hosts]
    return "# cmigrate lab: ssh -F " + str(SSH_CONFIG) + " hostA\n" + "\n".join(blocks)


def _start_network(say: Say, lab_hosts: tuple[LabHost, ...]) -> None:
    say(f"network: bridge {BRIDGE} {BRIDGE_ADDR}/{PREFIX}")
    _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    _run(["ip", "addr", "add", f"{BRIDGE_ADDR}/{PREFIX}", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    for h in lab_hosts:
        say(f"{h.name}: network namespace {h.netns}, address {h.address}")
        _run(["ip", "netns", "add", h.netns])
        _run(["ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns])
        _run(["ip", "link", "set", h.veth, "master", BRIDGE, "up"])
        _run(["ip", "-n", h.netns, "addr", "add", f"{h.address}/{PREFIX}", "dev", "eth0"])
        _run(["ip", "-n", h.netns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", h.netns, "link", "set", "lo", "up"])
    say(f"client: network namespace {CLIENT_NETNS}, address {CLIENT_ADDR}")
    _run(["ip", "netns", "add", CLIENT_NETNS])
    _run(["ip", "link", "add", CLIENT_VETH, "type", "veth", "peer", "name", "eth0", "netns", CLIENT_NETNS])
    _run(["ip", "link", "set", CLIENT_VETH, "master", BRIDGE, "up"])
    _run(["ip", "-n", CLIENT_NETNS, "addr", "add", f"{CLIENT_ADDR}/{PREFIX}", "dev", "eth0"])
    _run(["ip", "-n", CLIENT_NETNS, "link", "set", "eth0", "up"])
    _run(["ip", "-n", CLIENT_NETNS, "link", "set", "lo", "up"])


def client(argv: list[str]) -> list[str]:
    """``argv`` as run on the lab's client, a machine on the segment (its own network namespace)."""
    return ["nsenter", f"--net=/run/netns/{CLIENT_NETNS}", "--", *argv]


CLONE_NEWNET = 0x40000000


def client_socket(family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket of the lab's client: made in its network namespace (a socket keeps the namespace it was made in),
    by a thread that enters it and ends, so that this process stays where it is."""
    import ctypes
    import threading
    made: dict = {}

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            with open(f"/run/netns/{CLIENT_NETNS}") as ns:
                if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {CLIENT_NETNS}")
            made["sock"] = socket.socket(family, kind)
        except OSError as exc:
            made["error"] = exc

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if "error" in made:
        raise LabError(f"cannot make a socket on the lab's client: {made['error']}")
    return made["sock"]


def _make_shared_network(h: LabHost) -> None:
    """The macvlan network both hosts share (``SHARED_NETWORK``), on each host's eth0."""
    import docker.types
    client_ = docker_client(h)
    try:
        if not client_.networks.list(names=[SHARED_NETWORK]):
            pool = docker.types.IPAMPool(subnet=f"{BRIDGE_ADDR.rsplit('.', 1)[0]}.0/{PREFIX}",
                                         iprange=SHARED_RANGES[h.name], gateway=BRIDGE_ADDR)
            client_.networks.create(SHARED_NETWORK, driver="macvlan", options={"parent": "eth0"},
                                    ipam=docker.types.IPAMConfig(pool_configs=[pool]))
    finally:
        client_.close()


def _start_sshd(h: LabHost) -> None:
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd's privilege-separation directory
    config = h.state / "sshd_config"
    _write(config, _sshd_config(h))
    _run(["/usr/sbin/sshd", "-t", "-f", str(config)])
    _run(h.nsenter + [SSHD, "-f", str(config), "-E", str(h.state / "sshd.log")])


def _daemon_config(h: LabHost) -> Path:
    """The host's own daemon.json (the machine's /etc/docker/daemon.json is not the lab's business)."""
    return h.state / "daemon.json"


def _start_dockerd(h: LabHost) -> None:
    h.data_root.mkdir(parents=True, exist_ok=True)
    h.exec_root.mkdir(parents=True, exist_ok=True)
    config = _daemon_config(h)
    if not config.exists():
        _write(config, "{}\n")
    argv = h.nsenter + [
        DOCKERD, "--experimental", "--config-file", str(config),
        "--data-root", str(h.data_root), "--exec-root", str(h.exec_root),
        "-H", h.docker_url, "--pidfile", str(h.dockerd_pidfile),
        "--bip", h.container_bip, "--default-address-pool", f"base={h.address_pool},size=24",
        "--shutdown-timeout", "3", "--log-level", "warn",
        "--add-runtime", f"cmigrate-runc={FAST_RUNC}",
    ]
    # containerd unpacks restored checkpoints into $XDG_RUNTIME_DIR (default /tmp) and leaks them
    # (containerd#10166): keep them inside the lab, where the agents clean them and lab down removes the rest.
    (h.exec_root / "tmp").mkdir(mode=0o700, exist_ok=True)
    # and the PATH a service manager would give it: not the invoking shell's (on the build machines, pyenv's shims
    # first, a bash script in front of every python3 that Docker's children run: 70 ms each)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(h.exec_root / "tmp"), "PATH": SERVICE_PATH}
    # setsid --fork detaches dockerd from us: it outlives this command and is not our child to reap.
    with open(h.state / "dockerd.log", "ab") as log:
        res = subprocess.run(["setsid", "--fork", *argv], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             env=env)
    if res.returncode != 0:
        raise LabError(f"cannot start {h.name}'s dockerd", detail=_log_tail(h.state / "dockerd.log"))


SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LINK_RATE = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[kmg]?bit)")
LINK_DELAY = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:us|ms|s)")


def shape_link(name: str, rate: str, delay: str | None = None) -> None:
    """Make a lab host's link like a real one: ``rate`` (tc's units: ``1gbit``, ``100mbit``) each way, and with
    ``delay`` (``1ms``) that much added each way. The rate is tbf's, on both ends of the host's veth; the delay is
    netem's where the kernel has netem, else the lab's delay line (migrate/lab/delayline.py) in the link.
    ``unshape_link`` undoes it."""
    if not LINK_RATE.fullmatch(rate) or (delay is not None and not LINK_DELAY.fullmatch(delay)):
        raise LabError(f"invalid link shape {rate!r}{f', {delay!r}' if delay else ''}: give a rate like 1gbit or "
                       "100mbit, and a delay like 1ms")
    h = host(name)
    unshape_link(name)
    if delay and _shape_with_netem(h, rate, delay):
        return
    try:
        if delay:
            _insert_delay_line(h, _seconds(delay))
        tbf = ["tbf", "rate", rate, "burst", "1mb", "latency", "100ms"]
        for argv in ([*_veth_side(h), "tc", "qdisc", "replace", "dev", h.veth, "root", *tbf],   # into the host
                     [*h.nsenter, "tc", "qdisc", "replace", "dev", "eth0", "root", *tbf]):    # out of it
            res = _run(argv, check=False)
            if res.status != 0:
                raise LabError(f"cannot shape {name}'s link (tbf): {res.err.strip()[-200:]}")
    except BaseException:
        unshape_link(name)
        raise


def _seconds(delay: str) -> float:
    value = float(delay.rstrip("mus"))
    return value / {"us": 1e6, "ms": 1e3, "s": 1.0}[delay.lstrip("0123456789.")]


def _shape_with_netem(h: LabHost, rate: str, delay: str) -> bool:
    """netem's rate and delay on both ends, if this kernel has netem (False: it has none, nothing changed)."""
    netem = ["netem", "rate", rate, "limit", "100000", "delay", delay]
    if _run(["tc", "qdisc", "replace", "dev", h.veth, "root", *netem], check=False).status != 0:
        return False   # these build machines' kernels: CONFIG_NET_SCH_NETEM is not set
    res = _run([*h.nsenter, "tc", "qdisc", "replace", "dev", "eth0", "root", *netem], check=False)
    if res.status != 0:
        unshape_link(h.name)
        raise LabError(f"cannot shape {h.name}'s link (netem): {res.err.strip()[-200:]}")
    return True


def _delay_netns(h: LabHost) -> str:
    return f"cmlab-dl-{h.name}"


def _delay_links(h: LabHost) -> tuple[str, str]:
    """The veth pair that joins the delay line to the bridge: its end in the delay namespace, its end on the
    bridge."""
    return f"{h.veth}-d", f"{h.veth}-b"


def _veth_side(h: LabHost) -> list[str]:
    """How to run a command where the host's veth is: the delay namespace while a delay line holds it."""
    return ["nsenter", f"--net=/run/netns/{_delay_netns(h)}"] if _netns_exists(_delay_netns(h)) else []


def _insert_delay_line(h: LabHost, seconds: float) -> None:
    """Put a delay line between the host's veth and the bridge: the veth moves into a namespace of its own (no
    address there, so nothing but the delay line answers on it), joined to the bridge by a new veth pair."""
    ns, (inner, outer) = _delay_netns(h), _delay_links(h)
    _run(["ip", "netns", "add", ns])
    _run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns])
    _run(["ip", "link", "set", outer, "master", BRIDGE, "up"])
    _run(["ip", "link", "set", h.veth, "netns", ns])
    for dev in ("lo", h.veth, inner):
        _run(["ip", "-n", ns, "link", "set", dev, "up"])
    log = h.state / "delayline.log"
    # setsid --fork: a daemon of its own, not our child; it says "ready PID" once its sockets are bound
    with open(log, "wb") as err:
        proc = subprocess.Popen(["setsid", "--fork", "nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m",
                                 "migrate.lab.delayline", h.veth, inner, f"{seconds:g}"],
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        ready = proc.stdout.readline().split()
        proc.stdout.close()
        proc.wait()
    if len(ready) != 2 or ready[0] != b"ready" or not ready[1].isdigit():
        raise LabError(f"{h.name}'s delay line did not start", detail=_log_tail(log))
    _write(h.state / "delayline.pid", f"{int(ready[1])}\n")


def unshape_link(name: str) -> None:
    h = host(name)
    _run([*_veth_side(h), "tc", "qdisc", "del", "dev", h.veth, "root"], check=False)
    _run([*h.nsenter, "tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
    ns = _delay_netns(h)
    if not _netns_exists(ns):
        return
    pid = _read_pid(h.state / "delayline.pid")
    if pid and _pid_alive(pid):
        _kill(pid, timeout=5)
    (h.state / "delayline.pid").unlink(missing_ok=True)
    # the veth back here (the namespace of this process), on the bridge again
    if _run(["ip", "-n", ns, "link", "set", h.veth, "netns", str(os.getpid())], check=False).status == 0:
        _run(["ip", "link", "set", h.veth, "master", BRIDGE, "up"], check=False)
    _run(["ip", "netns", "del", ns], check=False)   # and the pair to the bridge with it
    if _link_exists(_delay_links(h)[1]):
        _run(["ip", "link", "del", _delay_links(h)[1]], check=False)


def restart_dockerd(name: str, config: dict | None = None) -> None:
    """Restart a lab host's dockerd with ``config`` as its daemon.json ({} or None: the lab's default), e.g.
    ``{"features": {"containerd-snapshotter": True}}``; returns once it answers. Its containers stop."""
    h = host(name)
    _write(_daemon_config(h), json.dumps(config or {}) + "\n")
    pid = _read_pid(h.dockerd_pidfile)
    if pid is not None and _pid_alive(pid):
        _kill(pid, timeout=30)
    ensure_dockerd(name)


def ensure_dockerd(name: str) -> None:
    """Start a lab host's dockerd again if it died (the fault tests kill it), and wait until it answers."""
    h = host(name)
    if _docker_version(h) is not None:
        return
    pid = _read_pid(h.dockerd_pidfile)
    if pid is not None:   # one shutting down: let it finish
        _wait(lambda: not _pid_alive(pid), 30, f"{h.name}'s old dockerd to exit")
        h.dockerd_pidfile.unlink(missing_ok=True)   # a killed dockerd leaves it, and the next refuses to start
    # its containerd dies with it, but not at once; a new one would wait for the old one's database lock
    config = str(h.exec_root / "containerd" / "containerd.toml")
    _wait(lambda: _run(["pgrep", "-f", f"containerd --config {config}"], check=False).status != 0, 30,
          f"{h.name}'s old containerd to exit")
    _start_dockerd(h)
    _wait(lambda: _docker_version(h) is not None, READY_TIMEOUT, f"{h.name}'s dockerd")


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


PIPE_MAX_SIZE = Path("/proc/sys/fs/pipe-max-size")


def _allow_lazy_page_pipes(say: Say) -> None:
    """CRIU's lazy page server (post-copy) sizes a pipe at 3.3 MB; above fs.pipe-max-size (1 MiB by default)
    only CAP_SYS_RESOURCE may, and root on these build machines lacks it: post-copy then fails on its first
    page. The lab's hosts share this kernel: raise the limit to 4 MiB (it lasts until reboot)."""
    try:
        if int(PIPE_MAX_SIZE.read_text()) < CRIU_LAZY_PIPE_BYTES:
            PIPE_MAX_SIZE.write_text(str(1 << 22))
            say("raised fs.pipe-max-size to 4 MiB for CRIU's lazy page server (post-copy)")
    except (OSError, ValueError) as exc:
        say(f"cannot raise fs.pipe-max-size ({exc}): post-copy may be refused")


def up(say: Say = lambda s: None, n_hosts: int | None = None) -> None:
    """Bring the lab up with ``n_hosts`` hosts (2 or 3; None: as many as it last had, else 2); a no-op when it
    already runs with at least that many, a clean restart after a crash (or to add hostC)."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, dockerd)", hint="run as root")
    if n_hosts is not None and not DEFAULT_HOSTS <= n_hosts <= len(ALL_HOSTS):
        raise LabError(f"the lab has {DEFAULT_HOSTS} to {len(ALL_HOSTS)} hosts, not {n_hosts}")
    for binary in ("ip", "nsenter", "ssh-keygen", DOCKERD, SSHD, "criu", "busybox", "cc"):
        if _run(["sh", "-c", 'command -v "$1"', "sh", binary], check=False).status != 0:
            raise LabError(f"{binary} is not installed", hint="run ./install.sh first")
    if is_up(n_hosts):
        say("lab is already up" + (f" with {len(hosts())} hosts" if len(hosts()) != DEFAULT_HOSTS else ""))
        return
    lab_hosts = ALL_HOSTS[:max(n_hosts or len(hosts()), DEFAULT_HOSTS)]   # read before down() forgets it
    if _link_exists(BRIDGE) or any(_netns_exists(n) for n in [h.netns for h in ALL_HOSTS] + [CLIENT_NETNS]) or \
            LAB_ROOT.exists() or RUN_ROOT.exists():
        say("cleaning up what a previous lab left behind")
        down(say)
    LAB_ROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
    RUN_ROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(HOST_COUNT, f"{len(lab_hosts)}\n")
    try:
        client_pub = _keygen(CLIENT_KEY, "cmigrate-lab-client")
        _write(AUTHORIZED_KEYS, client_pub + "\n", 0o600)
        known = []
        for h in lab_hosts:
            h.state.mkdir(mode=0o700, parents=True, exist_ok=True)
            h.exec_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            pub = _keygen(h.state / "ssh_host_ed25519_key", f"cmigrate-lab-{h.name}")
            key_type, key_b64 = pub.split()[:2]
            known.append(f"{h.name},{h.address} {key_type} {key_b64}")
        _write(KNOWN_HOSTS, "\n".join(known) + "\n", 0o644)
        _write(SSH_CONFIG, _ssh_config(lab_hosts), 0o644)
        _allow_lazy_page_pipes(say)
        _start_network(say, lab_hosts)
        for h in lab_hosts:
            say(f"{h.name}: starting sshd and dockerd")
            _start_sshd(h)
            _start_dockerd(h)
        rootfs = busybox_rootfs_tar()
        db_rootfs = db_rootfs_tar(rootfs)
        for h in lab_hosts:
            _wait(lambda: _ssh_banner(h.address), READY_TIMEOUT, f"{h.name}'s sshd at {h.address}:22")
            try:
                _wait(lambda: _docker_version(h) is not None, READY_TIMEOUT, f"{h.name}'s dockerd")
            except LabError as exc:
                exc.detail = _log_tail(h.state / "dockerd.log")
                raise
            say(f"{h.name}: dockerd {_docker_version(h)} ready; importing test image {TEST_IMAGE}, network "
                f"{SHARED_NETWORK}")
            import_test_image(h, rootfs)
            if db_rootfs is not None:
                import_test_image(h, db_rootfs, DB_IMAGE)
            _make_shared_network(h)
    except BaseException:
        say("lab up failed; removing what it created")
        try:
            down(lambda s: None)
        except MigrationError:
            pass
        raise
    say(f"lab is up ({', '.join(h.name for h in lab_hosts)}): ssh -F {SSH_CONFIG} hostA")


# ---------------------------------------------------------------------- down
def _remove_containers(h: LabHost) -> None:
    """Containers whose dockerd is gone (a crash) still run under containerd's shims: delete them via runc."""
    if not h.runc_root.exists():
        return
    res = _run(["runc", "--root", str(h.runc_root), "list", "-q"], check=False)
    for cid in res.out.split():
        _run(["runc", "--root", str(h.runc_root), "delete", "--force", cid], check=False)


def down(say: Say = lambda s: None) -> None:
    """Remove everything the lab created. Safe to run twice, and after a crash."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, dockerd)", hint="run as root")
    for h in ALL_HOSTS:
        pid = _read_pid(h.dockerd_pidfile)
        if pid and _pid_alive(pid):
            say(f"{h.name}: stopping dockerd (pid {pid})")
            _kill(pid, timeout=30)
        _remove_containers(h)
    for attempt in range(3):
        pids = _lab_pids()
        if not pids:
            break
        say(f"stopping {len(pids)} lab process(es)")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM if attempt == 0 else signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_gone(pids, 10.0)
    for target in sorted(_lab_mounts(), key=lambda m: m.count("/"), reverse=True):
        if _run(["umount", target], check=False).status != 0:
            _run(["umount", "-l", target], check=False)
    for h in ALL_HOSTS:
        if _netns_exists(h.netns):
            say(f"{h.name}: removing network namespace {h.netns}")
            _run(["ip", "netns", "del", h.netns], check=False)
        if _netns_exists(_delay_netns(h)):   # a delay line's, left by a shaped link (bench --link)
            _run(["ip", "netns", "del", _delay_netns(h)], check=False)
        for link in (h.veth, _delay_links(h)[1]):
            if _link_exists(link):
                _run(["ip", "link", "del", link], check=False)
    if _netns_exists(CLIENT_NETNS):
        _run(["ip", "netns", "del", CLIENT_NETNS], check=False)
    if _link_exists(CLIENT_VETH):
        _run(["ip", "link", "del", CLIENT_VETH], check=False)
    if _link_exists(BRIDGE):
        say(f"removing bridge {BRIDGE}")
        _run(["ip", "link", "del", BRIDGE])
    for root in (RUN_ROOT, LAB_ROOT):
        if root.exists():
            say(f"removing {root}")
            _run(["rm", "-rf", "--one-file-system", str(root)])
    left = leftovers()
    if left:
        raise LabError("lab down left things behind: " + "; ".join(left))


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.05)


def leftovers() -> list[str]:
    """What of the lab is still on this machine (empty after a clean ``down``)."""
    left = []
    left += [f"network namespace {n}" for n in [h.netns for h in ALL_HOSTS] + [_delay_netns(h) for h in ALL_HOSTS]
             + [CLIENT_NETNS] if _netns_exists(n)]
    left += [f"link {name}" for name in [BRIDGE, CLIENT_VETH] + [h.veth for h in ALL_HOSTS]
             + [_delay_links(h)[1] for h in ALL_HOSTS] if _link_exists(name)]
    left += [f"process {pid}" for pid in _lab_pids() if _pid_alive(pid)]
    left += [f"mount {m}" for m in _lab_mounts()]
    left += [f"directory {d}" for d in (LAB_ROOT, RUN_ROOT) if d.exists()]
    return left
