"""The fleet benchmark (``cmigrate bench --fleet``): evacuate hostA to hostB and hostC, ``--parallel 1`` against
the default, alternating, on the three-host lab.

Workloads: N of the seed's counters (default 20), and 4 memhogs of 256 MiB (random pages, verified all the time).
Per run: the evacuation's total time, each container's downtime (median and max, from cmigrate's reports) and
whether every one went on where it landed: a counter from where it was with no reset, a memhog with no corrupt
page. Writes ``fleet.csv`` and ``fleet.md``.
"""
from __future__ import annotations

import csv
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from migrate import fleet, lab
from migrate.bench import COUNTER, _docker, warm_memory
from migrate.errors import LabError

TARGETS = ("hostB", "hostC")


@dataclass
class FleetTrial:
    workload: str
    containers: int
    parallel: int
    repeat: int
    total_s: float
    downtime_median_s: float | None
    downtime_max_s: float | None
    moved: int
    went_on: int    # containers that went on where they landed, state intact
    per_target: str
    note: str = ""


def _start(workload: str, n: int, tag: str, mib: int) -> dict[str, int]:
    names = [f"bench-{tag}-{i}" for i in range(n)]
    for name in names:
        args = ["sh", "-c", COUNTER] if workload == "counter" else ["memhog", str(mib), "0", "5", "random"]
        _docker("hostA", "run", "-d", "--name", name, "--label", f"bench-fleet={tag}", "busybox", *args)
    before = {}
    deadline = time.monotonic() + 180
    for name in names:
        while True:
            lines = _docker("hostA", "logs", name).stdout.decode().split()
            if (workload == "counter" and len(lines) >= 2) or (workload != "counter" and "verified" in lines):
                before[name] = int(lines[-1]) if workload == "counter" else 0
                break
            if time.monotonic() > deadline:
                raise LabError(f"{name} did not get ready")
            time.sleep(0.2)
    return before


def _went_on(workload: str, host: str, name: str, before: int) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = _docker(host, "logs", name, check=False).stdout.decode().split()
        if workload == "counter":
            n = [int(x) for x in lines if x.isdigit()]
            if len(n) >= 2:
                return n[0] >= before and n == list(range(n[0], n[0] + len(n)))
        elif "verified" in lines:
            return "CORRUPT" not in lines and "ready" not in lines   # verified there, and not started afresh
        time.sleep(0.3)
    return False


def trial(workload: str, n: int, parallel: int, repeat: int, mib: int = 256) -> FleetTrial:
    tag = uuid.uuid4().hex[:6]
    try:
        before = _start(workload, n, tag, mib)
        if workload != "counter":
            warm_memory(3 * n * mib + 512)
        t0 = time.monotonic()
        report = fleet.evacuate("hostA", list(TARGETS), filters=[f"label=bench-fleet={tag}"], parallel=parallel)
        total = time.monotonic() - t0
        downs = [o.downtime for o in report.moved if o.downtime is not None]
        ok = sum(_went_on(workload, o.destination, o.container, before[o.container]) for o in report.moved)
        counts = {t: sum(o.destination == t for o in report.moved) for t in TARGETS}
        note = "; ".join(f"{o.container}: {o.result}: {o.error}" for o in report.outcomes if o.result != "moved")
        return FleetTrial(workload, n, parallel, repeat, total, statistics.median(downs) if downs else None,
                          max(downs) if downs else None, len(report.moved), ok,
                          " ".join(f"{t}={c}" for t, c in counts.items()), note[:300])
    finally:
        for h in ("hostA", *TARGETS):
            names = _docker(h, "ps", "-aq", "--filter", f"label=bench-fleet={tag}").stdout.decode().split()
            if names:
                _docker(h, "rm", "-f", *names, check=False)


def run(repeats: int, out: Path, counters: int = 20, hogs: int = 4, hog_mib: int = 256,
        parallels: tuple[int, ...] = (1, fleet.DEFAULT_PARALLEL), say=print) -> list[FleetTrial]:
    lab.up(n_hosts=3)
    out.mkdir(parents=True, exist_ok=True)
    trials = []
    for workload, n in (("counter", counters), (f"memhog-{hog_mib}", hogs)):
        if n <= 0:
            continue
        for repeat in range(repeats):
            for p in parallels:   # alternating
                try:
                    t = trial("counter" if workload == "counter" else "memhog", n, p, repeat, hog_mib)
                    t.workload = workload
                except Exception as exc:   # a failed run is a result too
                    t = FleetTrial(workload, n, p, repeat, 0.0, None, None, 0, 0, "", str(exc)[-300:])
                trials.append(t)
                say(f"{workload:>11} x{n:<3} --parallel {p}: total {t.total_s:.2f} s, downtime median "
                    f"{_f(t.downtime_median_s)} max {_f(t.downtime_max_s)}, moved {t.moved}/{n}, went on "
                    f"{t.went_on}/{n} ({t.per_target}){' ' + t.note if t.note else ''}")
                write(trials, out)
    return trials


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} s"


def write(trials: list[FleetTrial], out: Path) -> None:
    with open(out / "fleet.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(FleetTrial)])
        w.writeheader()
        for t in trials:
            w.writerow(asdict(t))
    lines = ["# cmigrate fleet benchmark: evacuate hostA -> hostB,hostC", "",
             "| workload | containers | --parallel | runs | total median (min-max) s | downtime median s "
             "(median of runs) | downtime max s (worst run) | moved | went on |", "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted({(t.workload, t.containers, t.parallel) for t in trials}):
        ts = [t for t in trials if (t.workload, t.containers, t.parallel) == key]
        tot = [t.total_s for t in ts if t.moved]
        med = [t.downtime_median_s for t in ts if t.downtime_median_s is not None]
        mx = [t.downtime_max_s for t in ts if t.downtime_max_s is not None]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {len(ts)} | "
                     + (f"{statistics.median(tot):.2f} ({min(tot):.2f}-{max(tot):.2f})" if tot else "-") + " | "
                     + (f"{statistics.median(med):.3f}" if med else "-") + " | "
                     + (f"{max(mx):.3f}" if mx else "-") + " | "
                     + f"{sum(t.moved for t in ts)}/{key[1] * len(ts)} | {sum(t.went_on for t in ts)}/{key[1] * len(ts)} |")
    (out / "fleet.md").write_text("\n".join(lines) + "\n")
