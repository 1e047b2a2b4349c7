"""The fault matrix: one migration hostA -> hostB of a memory workload, one fault injected at one phase, and a
verdict on what is left. Shared by the pytest matrix (tests/faults/test_matrix.py) and the randomized runner
(``python -m tests.faults.runner``).

Faults go in through CMIGRATE_FAULT (migrate/faults.py) at the migration's phase boundaries; those that act on a
host (kill an agent, cut hostB's link) are a hook command run from there. After the CLI has ended, as an operator
would: the link comes back, and where the CLI said to (or was killed), ``cmigrate recover hostA`` runs. Then:

- while the CLI runs: did the container ever run on both hosts at once (tests/faults/history.py samples both
  hosts' runc state every ~5 ms; one such sample is ``running-twice``, however the migration ended);
- where does the container run (exactly one host, or it is ``lost`` / ``running-twice``);
- does its state go on (memhog's rewrite count never goes back, no fresh start, its memory verifies);
- is anything left on either host (containers, work dirs, restore maps, CRIU or agent processes).
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from migrate import lab
from tests.faults.history import TwiceWatch
from tests.lab.conftest import RemoteDocker

POINTS = ("prepared", "transfer", "frozen", "restored", "committed")
MIB = 96            # memory of the workload
MIB_TRANSFER = 256  # ... where the fault is in the middle of the transfer: long enough to report progress there
CLI_TIMEOUT = 150
HOST_B = lab.host("hostB")


def _sh(script: str) -> str:
    return f"sh -c '{script}'"


# fault -> (CMIGRATE_FAULT action, hook command or None); the point comes from the cell
FAULTS: dict[str, tuple[str, str | None]] = {
    "cli-killed": ("kill-cli", None),
    "cli-interrupted": ("int-cli", None),
    "src-agent-killed": ("hook", _sh("kill -9 $CMIGRATE_SRC_AGENT_PID")),
    "dst-agent-killed": ("hook", _sh("kill -9 $CMIGRATE_DST_AGENT_PID")),
    "link-cut": ("hook", f"ip link set {HOST_B.veth} down"),
}
# hostB's dockerd stops while it restores (the destination restores as soon as the dump's last bytes are in), or
# once it has restored, before the commit (a request under way, the gated restore's start, outlives the daemon's
# socket; the daemon then stops its containers on its way out). SIGTERM (tests/faults/stop_dockerd.py): after a
# SIGKILL the lab's dockerd could not be started again (its new containerd came up without its grpc socket, and
# dockerd gave up after 60 s), a lab problem rather than cmigrate's.
DOCKERD = "dst-dockerd-stopped"
DOCKERD_CELLS = [(DOCKERD, "frozen"), (DOCKERD, "restored")]
# faults that need no phase: CRIU itself fails (through an action script in /etc/criu/runc.conf)
CRIU_FAULTS = ("criu-dump-fails", "criu-restore-fails")
# hostB's migration work dir on a small filesystem: too small from the start, or filled up mid-migration
DISK_FULL = [("dst-disk-full", "preflight"), ("dst-disk-full", "transfer")]
CELLS = [(f, p) for f in FAULTS for p in POINTS] + [(f, "-") for f in CRIU_FAULTS] + DISK_FULL + DOCKERD_CELLS
MID_TRANSFER = {(f, "transfer") for f in FAULTS}


@dataclass
class Outcome:
    fault: str
    point: str
    exit: int
    error: str                  # the CLI's last stderr line
    recovered: str = ""         # what 'cmigrate recover' said, if it ran
    running_on: list[str] = field(default_factory=list)
    state_ok: bool = False
    state_note: str = ""
    leftovers: list[str] = field(default_factory=list)
    history: str = ""           # the sampler's summary
    both_samples: int = 0       # samples in which the container ran on both hosts at once

    @property
    def verdict(self) -> str:
        if "CMIGRATE_FAULT: never reached" in self.error:
            return "not-injected"
        if self.both_samples:
            return "running-twice"
        if not self.running_on:
            return "lost"
        if len(self.running_on) > 1:
            return "running-twice"
        if not self.state_ok:
            return "state-lost"
        if self.leftovers:
            return "leftovers"
        return "ok"

    def row(self) -> str:
        where = "+".join(self.running_on) or "nowhere"
        extra = f"; recover: {self.recovered}" if self.recovered else ""
        left = f"; left: {', '.join(self.leftovers)}" if self.leftovers else ""
        both = f"; history: {self.history}" if self.both_samples else ""
        return (f"{self.fault:<18} {self.point:<10} exit {self.exit:>4}  runs on {where:<6} {self.verdict:<13} "
                f"{self.error[:110]}{extra}{left}{both}")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI, its output in files (a killed CLI's pipes would wait for whatever inherited them). A CLI still
    running after CLI_TIMEOUT is a hang: it is made to print where it is (faulthandler, SIGABRT), and fails."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # Ctrl-C must reach it even where this runs in the background (which ignores SIGINT for its children)
        proc = subprocess.Popen([str(Path(sys.prefix) / "bin" / "cmigrate"), *args], stdout=out, stderr=err,
                                text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            proc.wait(CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait()
            err.seek(0)
            raise AssertionError(f"cmigrate {' '.join(args)} hung ({env}):\n{err.read()[-3000:]}") from None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


def _gens(lines: list[str]) -> list[int]:
    return [int(lines[i + 3]) for i, w in enumerate(lines) if w == "verified" and i + 3 < len(lines)
            and lines[i + 3].isdigit()]


def _running(d: RemoteDocker, name: str) -> bool:
    res = d("inspect", "-f", "{{.State.Running}}", name, check=False)
    return res.status == 0 and res.out.strip() == "true"


def _exists(d: RemoteDocker, name: str) -> bool:
    return d("inspect", name, check=False).status == 0


def _host_leftovers() -> list[str]:
    left = []
    for h in lab.hosts():
        work = h.data_root / "cmigrate-migrations"
        if work.exists() and any(work.iterdir()):
            left.append(f"{h.name}: {', '.join(sorted(p.name for p in work.iterdir()))} in {work}")
    maps = Path("/run/cmigrate/restore")
    if maps.exists() and any(maps.iterdir()):
        left.append(f"restore maps {', '.join(p.name[:12] for p in maps.iterdir())}")
    for pattern in ("cmigrate-agent", "criu"):
        res = subprocess.run(["pgrep", "-f", f"(^|/){pattern}( |$)"], capture_output=True, text=True)
        if res.stdout.split():
            left.append(f"{pattern} processes {' '.join(res.stdout.split())}")
    return left


def _settled_leftovers(timeout: float = 15.0) -> list[str]:
    """Agents whose CLI is gone notice it and clean up on their own: give them a moment."""
    deadline = time.monotonic() + timeout
    while True:
        left = _host_leftovers()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


class _CriuFault:
    """CRIU fails a dump or a restore on its own, through an action script named in /etc/criu/runc.conf (which
    runc hands to every CRIU it runs), for containers of this test only (an environment marker)."""

    def __init__(self, action: str) -> None:
        self.conf = Path("/etc/criu/runc.conf")
        self.script = lab.LAB_ROOT / f"fault-{uuid.uuid4().hex[:6]}.sh"
        self.action = action

    def __enter__(self):
        if self.conf.exists():
            raise RuntimeError(f"{self.conf} exists; not touching it")
        marker = "CMIGRATE_TEST_FAIL=1"
        if self.action == "pre-dump":
            test = f'tr "\\0" "\\n" < /proc/$CRTOOLS_INIT_PID/environ | grep -qx {marker}'
        else:   # no process yet at pre-restore: the marker is in the images (the container's environment)
            test = f'grep -qa {marker} "$CRTOOLS_IMAGE_DIR"/core-*.img "$CRTOOLS_IMAGE_DIR"/*.img'
        self.script.write_text(f'#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = {self.action} ] || exit 0\n'
                               f'{test} && {{ echo "injected {self.action} failure" >&2; exit 1; }}\nexit 0\n')
        self.script.chmod(0o755)
        self.conf.parent.mkdir(exist_ok=True)
        self.conf.write_text(f"action-script {self.script}\n")
        return self

    def __exit__(self, *exc) -> None:
        self.conf.unlink(missing_ok=True)
        self.script.unlink(missing_ok=True)


class _SmallDisk:
    """A tmpfs of ``mib`` MiB on hostB's migration work dir (the hosts share this machine's files)."""

    def __init__(self, mib: int) -> None:
        self.mib = mib
        self.path = HOST_B.data_root / "cmigrate-migrations"
        self.filler = self.path / ".filler"

    def __enter__(self):
        self.path.mkdir(mode=0o700, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.mib}m,mode=0700", "cmigrate-fault-disk",
                        str(self.path)], check=True)
        return self

    def __exit__(self, *exc) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


def run_cell(fault: str, point: str) -> Outcome:
    a, b = RemoteDocker("hostA"), RemoteDocker("hostB")
    name = f"f-{uuid.uuid4().hex[:8]}"
    try:
        a("run", "-d", "--name", name, "-e", "CMIGRATE_TEST_FAIL=1" if fault in CRIU_FAULTS else "X=1",
          "busybox", "memhog", str(MIB_TRANSFER if (fault, point) in MID_TRANSFER else MIB), "10")
        before = _gens(a.wait_logs(name, lambda lines: len(_gens(lines)) >= 2))
        watch = TwiceWatch(lab.host("hostA").exec_root, a("inspect", "-f", "{{.Id}}", name).out.strip(),
                           HOST_B.exec_root)
        return _migrate_with_fault(a, b, name, fault, point, max(before), watch)
    finally:
        for d in (a, b):
            d("rm", "-f", name, check=False)
            d.host.close()


def _migrate_with_fault(a: RemoteDocker, b: RemoteDocker, name: str, fault: str, point: str,
                        gen_before: int, watch: TwiceWatch) -> Outcome:
    with watch:
        out = _migrate(a, b, name, fault, point, gen_before)
    if watch.samples < 20 or not watch.src_ran:
        raise AssertionError(f"the running-twice sampler did not work: {watch.summary()}")
    out.history, out.both_samples = watch.summary(), watch.both
    return out


def _migrate(a: RemoteDocker, b: RemoteDocker, name: str, fault: str, point: str, gen_before: int) -> Outcome:
    args = ["--io-timeout", "5", name, "hostA", "hostB"]
    if fault in CRIU_FAULTS:
        with _CriuFault("pre-dump" if fault == "criu-dump-fails" else "pre-restore"):
            res = _cli(*args)
    elif fault == DOCKERD:
        hook = [sys.executable, str(Path(__file__).with_name("stop_dockerd.py")), str(HOST_B.dockerd_pidfile),
                str(HOST_B.docker_socket)]
        env = {"CMIGRATE_FAULT": f"hook@{point}", "CMIGRATE_FAULT_HOOK": shlex.join(hook)}
        try:
            res = _cli(*args, env=env)
        finally:
            lab.ensure_dockerd("hostB")   # as the operator would, before anything else
    elif fault == "dst-disk-full":
        with _SmallDisk(mib=64 if point == "preflight" else 256) as disk:
            env = {} if point == "preflight" else {
                "CMIGRATE_FAULT": "hook@prepared", "CMIGRATE_FAULT_HOOK": f"fallocate -l 200M {disk.filler}"}
            res = _cli(*args, env=env)
            disk.filler.unlink(missing_ok=True)
            return _outcome(a, b, name, fault, point, gen_before, res)
    else:
        action, hook = FAULTS[fault]
        env = {"CMIGRATE_FAULT": f"{action}@{point}", "CMIGRATE_FAULT_HOOK": hook or ""}
        try:
            res = _cli(*args, env=env)
        finally:
            if fault == "link-cut":
                subprocess.run(["ip", "link", "set", HOST_B.veth, "up"], check=True)
    return _outcome(a, b, name, fault, point, gen_before, res)


def _outcome(a: RemoteDocker, b: RemoteDocker, name: str, fault: str, point: str, gen_before: int,
             res: subprocess.CompletedProcess) -> Outcome:
    lines = [line for line in res.stderr.splitlines() if line.startswith("cmigrate: ")]
    said = [line for line in lines if "error:" in line or "never reached" in line] or lines
    out = Outcome(fault, point, res.returncode, said[-1] if said else "")
    told = re.search(r"cmigrate recover (host[AB])", res.stderr)
    if res.returncode < 0 or told:
        rec = _recover(told.group(1) if told else "hostA")
        out.recovered = (rec.stdout.strip() or rec.stderr.strip()).splitlines()[-1] if (rec.stdout + rec.stderr
                                                                                      ).strip() else ""
    out.running_on = [d.name for d in (a, b) if _running(d, name)]
    if len(out.running_on) == 1:
        d = a if out.running_on == ["hostA"] else b
        _check_state(d, name, gen_before, out)
        other = b if d is a else a
        if _exists(other, name):
            out.leftovers.append(f"{other.name}: container {name}")
    out.leftovers += _settled_leftovers()
    return out


def _recover(host: str) -> subprocess.CompletedProcess:
    """As the operator was told: ``cmigrate recover HOST`` (again while the dead CLI's agents are still exiting)."""
    deadline = time.monotonic() + 30
    while True:
        res = _cli("recover", host)
        if "in-progress" not in res.stdout + res.stderr or time.monotonic() > deadline:
            return res
        time.sleep(0.5)


def _check_state(d: RemoteDocker, name: str, gen_before: int, out: Outcome) -> None:
    """memhog goes on: a newer full verification than before the move, no fresh start, no corrupt page."""
    try:
        lines = d.wait_logs(name, lambda lines: any(g > gen_before for g in _gens(lines)) or "CORRUPT" in lines,
                            timeout=20)
    except AssertionError:
        out.state_note = f"{d.name}: no verification after gen {gen_before}: frozen or stopped"
        return
    gens = _gens(lines)
    if "CORRUPT" in lines:
        out.state_note = "memory corrupt"
    elif lines.count("ready") > (1 if d.name == "hostA" else 0):
        out.state_note = "memhog started afresh"
    elif gens != sorted(gens) or max(gens) <= gen_before:
        out.state_note = f"rewrite count went back: {gen_before} -> {gens}"
    else:
        out.state_ok = True
