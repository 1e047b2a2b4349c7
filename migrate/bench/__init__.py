"""Benchmarks on the lab: cmigrate against the naive Docker workflow and the raw link, side by side.

    cmigrate bench [--sizes 64,256,1024] [--dirty 0,10,100] [--procs 1,10,50,200] [--repeats 5] [--out DIR]

Workloads: the seed's counter container, ``memhog`` holding N MiB of random pages and dirtying D MB/s,
``memhog-text`` the same with text-like pages (key=value records: zstd level 1 shrinks them 3.6x), with ``--db
MIB`` ``db``: a Redis holding about MIB MiB of customers, orders and sessions as JSON (migrate/bench/db.py; its
digest must be the same after the move), and with ``--procs``
``forest-N``: N processes under docker-init passing a token round a ring of pipes, each with a second thread, and
N/10 zombies (migrate/lab/workloads/forest.c), for the dump and restore time against the process count (the
summary's last table: each phase's time). Every workload also
logs a CLOCK_REALTIME timestamp every 5 ms into a tmpfs (/tmp/ticks, carried by CRIU): the longest gap across a
move is the downtime as the workload saw it. Methods run alternately (A B C A B C ...):

- ``cmigrate``: ``cmigrate --json NAME hostA hostB`` (stop-copy, the mode ``auto`` picks here);
- ``postcopy``: ``cmigrate --json --mode post-copy NAME hostA hostB``; its ``postcopy_s`` is the window after the
  restart on hostB until every page had arrived (until then the container depends on hostA and the link);
- ``keepip`` and ``keepip-postcopy``: the same two with ``--keep-ip``, the workload on the lab's shared network
  with an echo server beside it, and a TCP client on the lab's client machine numbering lines through one
  connection straight through the move (migrate/lab/echo.py): its ``client_stall_s`` is the longest wait for
  an echo, the client's view of the move (every echo must come back, in order, on the same connection);
- ``naive``: the seed's workflow: ``docker checkpoint create --checkpoint-dir`` on hostA, tar over ssh into the
  destination container's checkpoints folder on hostB, ``docker start --checkpoint`` there;
- ``clone`` and ``cold`` (``--methods clone,cold``; the ``warm-5s`` workload only, a server that warms a 64 MiB
  cache for 5 s before it serves): seconds from the command to the first HTTP answer, for a clone of its warm
  checkpoint (``cmigrate start --checkpoint warm --name NAME``) and for ``docker run``;
- ``raw``: the same checkpoint images through ``tar | zstd -T0 | ssh hostB cat``: the transfer floor (no
  downtime: the container keeps running).

Output: ``results.csv``, ``summary.md`` (medians, min and max, ratios cmigrate/naive and cmigrate/raw) and
``plot.png`` (downtime and total time against memory size per method).
"""
from __future__ import annotations

import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from migrate import lab
from migrate.bench import db
from migrate.errors import LabError
from migrate.lab.echo import ECHO_SERVER, EchoClient

DOCKER = "/usr/bin/docker"
TICKER = "memhog 0 0 5 &"
COUNTER = 'i=0; while true; do echo $i; i=$(expr $i + 1); sleep 1; done'
MIGRATIONS = ("cmigrate", "postcopy", "keepip", "keepip-postcopy", "naive", "raw")
STARTS = ("clone", "cold")   # the warm-5s workload only: time to a serving container
METHODS = MIGRATIONS + ("cmigrate-raw-pages",) + STARTS   # the A/B of compressed pages: on demand
# a server that spends 5 s warming a 64 MiB cache before it serves
WARM = "memhog 64 0 1000 & sleep 5; echo warmed > /state; exec httpd -f -p 8080 -h /var/www"
WARM_WORKLOAD = "warm-5s"
AGENT_RSS_GOAL_MIB = 64   # each agent's peak, every workload: a trial over it is flagged in the summary


@dataclass
class Trial:
    workload: str
    memory_mib: int
    dirty_mbps: float
    method: str
    repeat: int
    downtime_s: float | None       # from the workload's own ticks (None for raw: it never stops)
    reported_downtime_s: float | None
    total_s: float
    wire_bytes: int
    cli_peak_rss_kib: int | None
    src_agent_peak_rss_kib: int | None
    dst_agent_peak_rss_kib: int | None
    ok: bool
    note: str = ""
    postcopy_s: float | None = None   # post-copy: restart on hostB -> every page there
    phases: str = ""   # cmigrate's report: seconds per phase ("dump=2.61 transfer=0.02 restore=0.63 ...")
    client_stall_s: float | None = None   # keepip*: the longest wait of the TCP echo client for an echo
    link: str = ""   # hostB's link as shaped for the trial (bench --link: "1gbit", "100mbit,1ms"); "" unshaped


def _ssh(host: str, *argv: str, check: bool = True, timeout: float = 600, input: bytes | None = None):
    res = subprocess.run(["ssh", "-F", str(lab.SSH_CONFIG), host, shlex.join(argv)], capture_output=True,
                         timeout=timeout, input=input)
    if check and res.returncode != 0:
        raise LabError(f"{host}: {argv[0]} {argv[1] if len(argv) > 1 else ''} failed: "
                       f"{res.stderr.decode(errors='replace').strip()[-300:]}")
    return res


def _docker(host: str, *args: str, check: bool = True, timeout: float = 600):
    return _ssh(host, DOCKER, *args, check=check, timeout=timeout)


def _run_args(workload: str, mib: int, dirty: float, echo: bool = False) -> list[str]:
    """``echo``: on the lab's shared network, with an echo server beside the workload."""
    net = ["--network", lab.SHARED_NETWORK] if echo else []
    if workload == "db":
        script = f"{TICKER} {db.SERVER} & {ECHO_SERVER}" if echo else f"{TICKER} exec {db.SERVER}"
        return [*net, "--tmpfs", "/tmp", db.IMAGE, "/bin/sh", "-c", script]
    if workload == "counter":
        script = f"{TICKER} {COUNTER}"
        if echo:
            script = f"{TICKER} ({COUNTER}) & {ECHO_SERVER}"
        return [*net, "--security-opt=seccomp:unconfined", "--tmpfs", "/tmp", "busybox", "/bin/sh", "-c", script]
    if workload.startswith("forest-"):
        return ["--init", "--tmpfs", "/tmp", "busybox", "/bin/sh", "-c",
                f"{TICKER} exec forest {int(workload.removeprefix('forest-'))}"]
    hog = ["memhog", str(mib), f"{dirty:g}", "5", "text" if workload == "memhog-text" else "random"]
    if echo:
        return [*net, "--tmpfs", "/tmp", "busybox", "/bin/sh", "-c", f"{shlex.join(hog)} & {ECHO_SERVER}"]
    return ["--tmpfs", "/tmp", "busybox", *hog]


def _start(name: str, workload: str, mib: int, dirty: float, echo: bool = False) -> str | None:
    """Start the workload on hostA and wait until it runs for real; the database's digest (db), else None."""
    digest = _launch(name, workload, mib, dirty, echo)
    # right before the timed part: the hypervisor takes freed guest memory back within seconds
    warm_memory(3 * mib + 512)
    return digest


def _launch(name: str, workload: str, mib: int, dirty: float, echo: bool = False) -> str | None:
    _docker("hostA", "run", "-d", "--name", name, *_run_args(workload, mib, dirty, echo))
    digest = _load_db(name, mib) if workload == "db" else None
    deadline = time.monotonic() + 120
    while True:   # wait until it runs for real: memory filled, first ticks written
        out = _docker("hostA", "logs", name).stdout.decode()
        ticks = _docker("hostA", "exec", name, "sh", "-c", "wc -l < /tmp/ticks", check=False).stdout.decode()
        ready = workload in ("counter", "db") or "verified" in out or \
            (workload.startswith("forest-") and "ready" in out)
        if ready and ticks.strip().isdigit() and int(ticks) > 20:
            return digest
        if time.monotonic() > deadline:
            raise LabError(f"workload {name} did not get ready: {out[-200:]}")
        time.sleep(0.2)


def _redis(host: str, name: str, *command: str, check: bool = True, input: bytes | None = None) -> str:
    return _ssh(host, DOCKER, "exec", *(["-i"] if input is not None else []), name, "redis-cli", *command,
                check=check, input=input).stdout.decode().strip()


def _load_db(name: str, mib: int) -> str:
    """Fill the database with about ``mib`` MiB of records (migrate/bench/db.py); its digest once loaded."""
    deadline = time.monotonic() + 30
    while _redis("hostA", name, "PING", check=False) != "PONG":
        if time.monotonic() > deadline:
            raise LabError(f"{name}: Redis did not start")
        time.sleep(0.1)
    n = db.count_for(mib)
    # streamed, not joined: this process's memory must not grow by the data set (the CLI's peak RSS, measured by
    # wait4, counts what its parent held when it forked)
    loader = subprocess.Popen(["ssh", "-F", str(lab.SSH_CONFIG), "hostA", shlex.join([DOCKER, "exec", "-i", name,
                                                                                       "redis-cli", "--pipe"])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for chunk in db.resp(db.records(n)):
        loader.stdin.write(chunk)
    loaded, _ = loader.communicate(timeout=600)
    if loader.returncode != 0 or _redis("hostA", name, "DBSIZE") != str(n):
        raise LabError(f"{name}: loading {n} records failed: {loaded.decode(errors='replace')[-200:]}")
    return _redis("hostA", name, "DEBUG", "DIGEST")


def _max_gap(host: str, name: str) -> float:
    out = _docker(host, "exec", name, "cat", "/tmp/ticks").stdout.decode().split()
    ticks = [float(t) for t in out]
    return max(b - a for a, b in zip(ticks, ticks[1:]))


def _verified_after(host: str, name: str, digest: str | None = None) -> bool:
    """No memhog page came back corrupt; the database (``digest``) holds every key and value it held."""
    if digest is not None and _redis(host, name, "DEBUG", "DIGEST", check=False) != digest:
        return False
    out = _docker(host, "logs", name).stdout.decode()
    return "CORRUPT" not in out


def _cleanup(name: str) -> None:
    for h in ("hostA", "hostB"):
        _docker(h, "rm", "-f", name, check=False)


def _wait4(argv: list[str], env: dict | None = None) -> tuple[int, bytes, int]:
    """Run argv; (exit status, stdout, peak RSS in KiB of that process alone)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = proc.communicate()
    _, status, usage = os.wait4(proc.pid, 0) if proc.returncode is None else (0, proc.returncode << 8, None)
    rss = usage.ru_maxrss if usage else None
    return proc.returncode, out + err, rss


def trial_cmigrate(name, cfg, repeat, method: str = "cmigrate", mode: str = "auto", keep_ip: bool = False,
                   extra: tuple[str, ...] = ()) -> Trial:
    digest = _start(name, *cfg, echo=keep_ip)
    client = _echo_client(name) if keep_ip else None
    cli = str(Path(sys.prefix) / "bin" / "cmigrate")
    t0 = time.monotonic()
    proc = subprocess.Popen([cli, "--json", "--mode", mode, *(["--keep-ip"] if keep_ip else []), *extra, name,
                             "hostA", "hostB"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    total = time.monotonic() - t0
    stall, problem = _client_after(client) if client else (None, "")
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        rep = json.loads(out)
    except ValueError:
        return Trial(*cfg, method, repeat, None, None, total, 0, usage.ru_maxrss, None, None, False,
                     (out + err).decode(errors="replace")[-200:])
    ok = proc.returncode == 0 and _verified_after("hostB", name, digest) and not problem
    rss = rep.get("agent_peak_rss_kib", {})
    return Trial(*cfg, method, repeat, _max_gap("hostB", name), rep["downtime"], total, rep["wire_bytes"],
                 usage.ru_maxrss, rss.get("source"), rss.get("destination"), ok, problem,
                 postcopy_s=rep.get("postcopy_seconds"),
                 phases=" ".join(f"{k}={v:.3f}" for k, v in (rep.get("phases") or {}).items()),
                 client_stall_s=stall)


def _echo_client(name: str) -> EchoClient:
    """The lab's client, connected to the workload's echo server at its shared-network address, echoes coming."""
    ip = _docker("hostA", "inspect", "-f", f"{{{{.NetworkSettings.Networks.{lab.SHARED_NETWORK}.IPAddress}}}}",
                 name).stdout.decode().strip()
    # a new container has sent nothing yet: the bridge still sends its MAC (Docker derives it from the address,
    # which the previous trial's container had, last seen on hostB) to hostB's port until it does
    _docker("hostA", "exec", name, "ping", "-c", "1", "-W", "2", lab.BRIDGE_ADDR)
    client = EchoClient(ip)
    client.goes_on(f"no echoes from {name} before the move")
    return client


def _client_after(client: EchoClient) -> tuple[float | None, str]:
    """After the move: its longest stall, or what went wrong (the connection broke, an echo was wrong)."""
    try:
        client.goes_on("the echoes did not come back after the move")
    except LabError as exc:
        client.error = client.error or exc
    client.finish()
    if client.error is not None or client.wrong:
        return None, f"the TCP client: {client.error or 'wrong echoes ' + ' '.join(client.wrong[:3])}"
    return client.longest, ""


def trial_uncompressed(name, cfg, repeat) -> Trial:
    """cmigrate with its page stream raw (``--page-compression off``): the A/B of compressed pages."""
    return trial_cmigrate(name, cfg, repeat, "cmigrate-raw-pages", extra=("--page-compression", "off"))


def trial_postcopy(name, cfg, repeat) -> Trial:
    return trial_cmigrate(name, cfg, repeat, "postcopy", "post-copy")


def trial_keepip(name, cfg, repeat) -> Trial:
    return trial_cmigrate(name, cfg, repeat, "keepip", keep_ip=True)


def trial_keepip_postcopy(name, cfg, repeat) -> Trial:
    return trial_cmigrate(name, cfg, repeat, "keepip-postcopy", "post-copy", keep_ip=True)


def trial_naive(name, cfg, repeat) -> Trial:
    digest = _start(name, *cfg)
    cdir = f"/var/lib/cmigrate-lab/bench-{name}"
    workload, mib, dirty = cfg
    _docker("hostB", "create", "--name", name, *_run_args(workload, mib, dirty))
    dst_id = _docker("hostB", "inspect", "-f", "{{.Id}}", name).stdout.decode().strip()
    dst_dir = lab.host("hostB").data_root / "containers" / dst_id / "checkpoints"
    t0 = time.monotonic()
    _docker("hostA", "checkpoint", "create", "--checkpoint-dir", cdir, name, "cp1")
    sender = subprocess.Popen(["ssh", "-F", str(lab.SSH_CONFIG), "hostA", shlex.join(["tar", "-C", cdir, "-cf", "-",
                                                                                      "cp1"])],
                              stdout=subprocess.PIPE)
    receiver = subprocess.run(["ssh", "-F", str(lab.SSH_CONFIG), "hostB",
                               shlex.join(["sh", "-c", f"mkdir -p {shlex.quote(str(dst_dir))} && "
                                                       f"tar -C {shlex.quote(str(dst_dir))} -xf - && "
                                                       f"du -sb {shlex.quote(str(dst_dir))}"])],
                              stdin=sender.stdout, capture_output=True)
    sender.stdout.close()
    sender.wait()
    _docker("hostB", "start", "--checkpoint", "cp1", name)
    total = time.monotonic() - t0
    _ssh("hostA", "rm", "-rf", cdir)
    _docker("hostA", "rm", "-f", name)
    wire = int(receiver.stdout.split()[0]) if receiver.stdout.split() else 0
    return Trial(*cfg, "naive", repeat, _max_gap("hostB", name), None, total, wire, None, None, None,
                 _verified_after("hostB", name, digest))


def trial_raw(name, cfg, repeat) -> Trial:
    _start(name, *cfg)
    cdir = f"/var/lib/cmigrate-lab/bench-{name}"
    _docker("hostA", "checkpoint", "create", "--leave-running", "--checkpoint-dir", cdir, name, "cp1")
    pipeline = (f"tar -C {shlex.quote(cdir)} -cf - cp1 | zstd -T0 -3 -q -c | "
                f"ssh -F {shlex.quote(str(lab.SSH_CONFIG))} hostB 'wc -c'")
    t0 = time.monotonic()
    res = _ssh("hostA", "sh", "-c", pipeline)
    total = time.monotonic() - t0
    _ssh("hostA", "rm", "-rf", cdir)
    return Trial(*cfg, "raw", repeat, None, None, total, int(res.stdout.split()[0]), None, None, None, True)


def _serving_after(t0: float, name: str) -> float:
    """Seconds from ``t0`` (CLOCK_MONOTONIC, one kernel for the lab's hosts) until the container answers HTTP,
    polled every 20 ms from hostA; the poller starts once its address is known (the same for both methods)."""
    ip = _docker("hostA", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name).stdout.decode().strip()
    poll = ("import time, urllib.request\n"
            "deadline = time.monotonic() + 60\n"
            "while time.monotonic() < deadline:\n"
            "    try:\n"
            f"        urllib.request.urlopen('http://{ip}:8080/', timeout=0.5).read()\n"
            "        print(time.monotonic()); break\n"
            "    except OSError:\n"
            "        time.sleep(0.02)\n")
    out = _ssh("hostA", "python3", "-c", poll).stdout.decode().split()
    if not out:
        raise LabError(f"{name} never served")
    return float(out[0]) - t0


def trial_clone(name, cfg, repeat) -> Trial:
    """A clone of a warm checkpoint (cmigrate start --checkpoint warm --name NAME), to serving."""
    src = f"{name}-src"
    _docker("hostA", "run", "-d", "--name", src, "--tmpfs", "/tmp", "busybox", "sh", "-c", WARM)
    _wait_logs_state("hostA", src)
    cli = str(Path(sys.prefix) / "bin" / "cmigrate")
    subprocess.run([cli, "-H", "hostA", "checkpoint", "create", "--leave-running", src, "warm"], check=True,
                   capture_output=True)
    try:
        t0 = time.monotonic()
        res = subprocess.run([cli, "-H", "hostA", "start", "--checkpoint", "warm", "--name", name, src],
                             capture_output=True)
        if res.returncode:
            raise LabError(f"clone failed: {res.stderr.decode(errors='replace')[-200:]}")
        ready = _serving_after(t0, name)
    finally:
        _docker("hostA", "rm", "-f", src, check=False)
    warmed = _docker("hostA", "exec", name, "cat", "/state", check=False).stdout == b"warmed\n"
    return Trial(*cfg, "clone", repeat, None, None, ready, 0, None, None, None, warmed,
                 "" if warmed else "the clone was not warm")


def trial_cold(name, cfg, repeat) -> Trial:
    """docker run of the same server, to serving."""
    t0 = time.monotonic()
    _docker("hostA", "run", "-d", "--name", name, "--tmpfs", "/tmp", "busybox", "sh", "-c", WARM)
    ready = _serving_after(t0, name)
    return Trial(*cfg, "cold", repeat, None, None, ready, 0, None, None, None, True)


def _wait_logs_state(host: str, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _docker(host, "exec", name, "cat", "/state", check=False).stdout != b"warmed\n":
        if time.monotonic() > deadline:
            raise LabError(f"{name} never warmed up")
        time.sleep(0.2)


TRIALS = {"clone": trial_clone, "cold": trial_cold, "cmigrate": trial_cmigrate,
          "cmigrate-raw-pages": trial_uncompressed, "postcopy": trial_postcopy, "keepip": trial_keepip,
          "keepip-postcopy": trial_keepip_postcopy, "naive": trial_naive, "raw": trial_raw}


Link = tuple[str, str | None] | None   # (rate, delay) for lab.shape_link; None: the lab's link as it is


def link_name(link: Link) -> str:
    return "" if link is None else link[0] + (f",{link[1]}" if link[1] else "")


def run(sizes: list[int], dirty: list[float], repeats: int, out: Path, methods=MIGRATIONS, counter: bool = True,
        say=print, procs: list[int] = (), links: list[Link] = (None,), db_sizes: list[int] = (),
        link_sizes: list[int] | None = None) -> list[Trial]:
    """The trials, alternating methods, on each of ``links`` in turn: hostB's link shaped for them
    (``lab.shape_link``; the raw floor is measured on it too) and put back after. ``link_sizes``: the memhog sizes
    on shaped links (default ``sizes``): a gigabyte at 100 Mbit/s takes minutes per trial."""
    lab.up()
    out.mkdir(parents=True, exist_ok=True)
    trials: list[Trial] = []
    for link in links or (None,):
        if link:
            lab.shape_link("hostB", *link)
            say(f"hostB's link shaped: {link[0]}" + (f", {link[1]} each way" if link[1] else ""))
        try:
            _run(sizes if link is None or link_sizes is None else link_sizes, dirty, repeats, out, methods, counter,
                 say, procs, db_sizes, link_name(link), trials)
        finally:
            if link:
                lab.unshape_link("hostB")
    (out / "summary.md").write_text(summary(trials))
    plot(trials, out / "plot.png")
    return trials


def _run(sizes, dirty, repeats, out, methods, counter, say, procs, db_sizes, link: str, trials: list[Trial]) -> None:
    configs = ([("counter", 0, 0.0)] if counter else []) + [("db", mib, 0.0) for mib in db_sizes] + \
        [(kind, s, d) for s in sizes for d in dirty for kind in ("memhog", "memhog-text")] + \
        [(f"forest-{n}", 0, 0.0) for n in procs]
    if any(m in STARTS for m in methods):
        configs.append((WARM_WORKLOAD, 64, 0.0))
    for cfg in configs:
        for repeat in range(repeats):
            for method in methods:
                if (method in STARTS) != (cfg[0] == WARM_WORKLOAD):   # starts of the warm server, moves of the rest
                    continue
                name = f"bench-{uuid.uuid4().hex[:8]}"
                try:
                    t = TRIALS[method](name, cfg, repeat)
                except Exception as exc:  # a failed trial is a result too; the run goes on
                    t = Trial(*cfg, method, repeat, None, None, 0.0, 0, None, None, None, False, str(exc)[-200:])
                finally:
                    _cleanup(name)
                    _cleanup(f"{name}-src")
                t.link = link
                trials.append(t)
                say(f"{link or 'lab link':>11} {cfg[0]:>7} {cfg[1]:>5} MiB {cfg[2]:>5g} MB/s {method:>15} #{repeat}: "
                    f"downtime {_fmt(t.downtime_s)} total {t.total_s:.3f}s wire {t.wire_bytes / 2**20:.1f} MiB"
                    f"{'' if t.client_stall_s is None else f' client stall {t.client_stall_s:.3f}s'}"
                    f"{'' if t.ok else ' FAILED ' + t.note}")
                write_csv(trials, out / "results.csv")


def warm_memory(mib: int) -> None:
    """Touch ``mib`` MiB of RAM and free it again, right before each trial's timed part.

    The lab's two hosts share one kernel, and this machine is itself a VM whose hypervisor backs guest memory
    lazily and takes freed memory back: memory never touched (or returned) costs ~2.4 s per GiB on first touch,
    memory in use recently 0.4 s (measured here with a 1 GiB mmap); freed memory goes back to the hypervisor within
    seconds (a 1 GiB stop-copy took 3.8 s with memory warmed just before, 6.3 s with memory warmed ~10 s before).
    A restore that needs fresh memory while the source still holds its own would pay that, on real separate hosts
    not. Warming first makes every method's
    trial start from the same state. (In a child process: the CLI's peak RSS, measured by wait4, would otherwise
    inherit this process's.)"""
    subprocess.run([sys.executable, "-c", f"bytearray(b'\\1') * ({int(mib)} << 20)"], check=True)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}s"


def write_csv(trials: list[Trial], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Trial)])
        w.writeheader()
        for t in trials:
            w.writerow(asdict(t))


def _stats(values: list[float]) -> tuple[float, float, float] | None:
    values = [v for v in values if v is not None]
    return (statistics.median(values), min(values), max(values)) if values else None


def _order(key: tuple) -> tuple:
    """counter first, then memhog, then forest-N by N (forest-50 before forest-200)."""
    kind, _, n = key[0].partition("-")
    return (key[0] != "counter", kind, int(n) if n.isdigit() else 0) + key[1:]


def summary(trials: list[Trial]) -> str:
    """The tables, one set per link the trials ran on (``bench --link``), in the order they ran."""
    links = list(dict.fromkeys(t.link for t in trials))
    if links in ([], [""]):
        return "# cmigrate benchmark\n\n" + _summary(trials)
    return "# cmigrate benchmark\n" + "".join(
        f"\n## hostB's link: {link or 'the lab link as it is (veth)'}\n\n" + _summary([t for t in trials
                                                                                     if t.link == link])
        for link in links)


def _summary(trials: list[Trial]) -> str:
    keys = sorted({(t.workload, t.memory_mib, t.dirty_mbps) for t in trials}, key=_order)
    lines = ["| workload | MiB | dirty MB/s | method | runs ok | downtime median (min-max) s | total median (min-max) s "
             "| post-copy window s | TCP client's longest stall s | wire MiB | agents peak RSS MiB (src/dst) "
             "| CLI peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = ["", "cmigrate = stop-copy (what --mode auto picks here), postcopy = --mode post-copy; keepip and "
              "keepip-postcopy: the same with --keep-ip and a TCP echo client connected through the move (its "
              "longest wait for an echo is the client's stall).", "",
              "| workload | MiB | dirty | downtime cmigrate/naive | downtime postcopy/naive | downtime "
              "postcopy/cmigrate | total cmigrate/naive | total cmigrate/raw | total postcopy/raw |",
              "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda s: f"{s[0]:.3f} ({s[1]:.3f}-{s[2]:.3f})" if s else "-"  # noqa: E731
    for key in keys:
        med = {}
        for method in METHODS:
            ts = [t for t in trials if (t.workload, t.memory_mib, t.dirty_mbps) == key and t.method == method]
            if not ts:
                continue
            good = [t for t in ts if t.ok]
            d, tot = _stats([t.downtime_s for t in good]), _stats([t.total_s for t in good])
            window = _stats([t.postcopy_s for t in good])
            stall = _stats([t.client_stall_s for t in good])
            wire = _stats([t.wire_bytes / 2**20 for t in good])
            src = _stats([t.src_agent_peak_rss_kib / 1024 for t in good if t.src_agent_peak_rss_kib])
            dst = _stats([t.dst_agent_peak_rss_kib / 1024 for t in good if t.dst_agent_peak_rss_kib])
            cli = _stats([t.cli_peak_rss_kib / 1024 for t in good if t.cli_peak_rss_kib])
            med[method] = (d[0] if d else None, tot[0] if tot else None)
            over = " **over 64**" if src and dst and max(src[2], dst[2]) > AGENT_RSS_GOAL_MIB else ""
            lines.append(f"| {key[0]} | {key[1]} | {key[2]:g} | {method} | {len(good)}/{len(ts)} | {fmt(d)} | "
                         f"{fmt(tot)} | {fmt(window)} | {fmt(stall)} | {f'{wire[0]:.1f}' if wire else '-'} | "
                         + (f"{src[2]:.0f}/{dst[2]:.0f}{over} | " if src and dst else "- | ")
                         + (f"{cli[2]:.0f} |" if cli else "- |"))
        div = lambda a, b: f"{a / b:.2f}" if a is not None and b else "-"  # noqa: E731
        c, p, n, r = (med.get(m, (None, None)) for m in ("cmigrate", "postcopy", "naive", "raw"))
        ratios.append(f"| {key[0]} | {key[1]} | {key[2]:g} | {div(c[0], n[0])} | {div(p[0], n[0])} | "
                      f"{div(p[0], c[0])} | {div(c[1], n[1])} | {div(c[1], r[1])} | {div(p[1], r[1])} |")
    return "\n".join(lines) + "\n" + "\n".join(ratios) + "\n" + _starts(trials) + _phase_table(trials, keys)


def _starts(trials: list[Trial]) -> str:
    """The warm server's time to serving: from a clone of its warm checkpoint, and from a cold start."""
    ready = {m: _stats([t.total_s for t in trials if t.method == m and t.ok]) for m in STARTS}
    if not any(ready.values()):
        return ""
    line = lambda m: f"{m} {ready[m][0]:.3f} s ({ready[m][1]:.3f}-{ready[m][2]:.3f})" if ready[m] else f"{m} -"  # noqa: E731
    ratio = f", clone/cold {ready['clone'][0] / ready['cold'][0]:.2f}" if ready["clone"] and ready["cold"] else ""
    return (f"\n{WARM_WORKLOAD} (a server that warms a 64 MiB cache for 5 s before it serves): seconds to the first "
            f"HTTP answer, median (min-max): {line('clone')}, {line('cold')}{ratio}\n")


def _phase_table(trials: list[Trial], keys) -> str:
    """Where the time goes: the median seconds of each phase of cmigrate's own report, per workload and method."""
    names = ("preflight", "create", "dump", "transfer", "restore", "finish")
    rows = ["", "Where the time goes (medians of cmigrate's report, s):", "",
            "| workload | MiB | dirty | method | " + " | ".join(names) + " |", "|---|---|---|---|" + "---|" * len(names)]
    for key in keys:
        for method in METHODS:
            phases = [dict(kv.split("=") for kv in t.phases.split()) for t in trials
                      if (t.workload, t.memory_mib, t.dirty_mbps) == key and t.method == method and t.ok and t.phases]
            if phases:
                cells = [_stats([float(p[n]) for p in phases if n in p]) for n in names]
                rows.append(f"| {key[0]} | {key[1]} | {key[2]:g} | {method} | "
                            + " | ".join(f"{c[0]:.3f}" if c else "-" for c in cells) + " |")
    return "\n".join(rows) + "\n" if len(rows) > 5 else ""


def plot(trials: list[Trial], path: Path) -> None:
    """Downtime and total against memory, per method, on the first link the trials ran on."""
    trials = [t for t in trials if t.link == trials[0].link] if trials else trials
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric, title in ((axes[0], "downtime_s", "downtime (workload's view)"),
                              (axes[1], "total_s", "total migration time")):
        for method in METHODS:
            for dirty in sorted({t.dirty_mbps for t in trials if t.workload == "memhog"}):
                pts = []
                for mib in sorted({t.memory_mib for t in trials if t.workload == "memhog"}):
                    vals = [getattr(t, metric) for t in trials if t.ok and t.method == method and
                            t.workload == "memhog" and t.memory_mib == mib and t.dirty_mbps == dirty]
                    vals = [v for v in vals if v is not None]
                    if vals:
                        pts.append((mib, statistics.median(vals), min(vals), max(vals)))
                if pts:
                    xs, med, lo, hi = zip(*pts)
                    ax.errorbar(xs, med, yerr=[[m - a for m, a in zip(med, lo)], [b - m for m, b in zip(med, hi)]],
                                marker="o", capsize=3, label=f"{method}, {dirty:g} MB/s dirty")
        ax.set_xlabel("container memory (MiB)")
        ax.set_ylabel("seconds")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:   # none for a run of starts alone
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
