"""Fleet moves: many containers between many hosts, a few at a time, each an ordinary migration.

    evacuate(HOST, [TARGET, ...])    every running container (or those a filter picks) off HOST
    balance([HOST, ...])             the fewest moves that even out the hosts' load
    migrate_many([(C, SRC, DST)])    the moves the caller chose

Each move is :func:`migrate.migration.migrate` with its own journal and lock: one that fails rolls back alone and
the others go on, and no container is moved twice in one run. What each move did comes back as an
:class:`Outcome` in a :class:`FleetReport`.

Placement (evacuate, and where a target fails mid-run): containers go largest first, each to the target whose
memory use after it would be lowest in whole percent of that host's memory, then to the one with the fewest
containers, then in the order the targets were given. A target needs room: its available memory must hold 1.2 x
the container's. A target that cannot be reached (at the survey, or when a move to it loses it) gets nothing more
in this run: what was bound for it is placed again on the others, as is a container whose move a target refused
or failed and that was put back on its source. A container left frozen on its source (the target was lost at a
moment where it may already run there) is never retried: ``cmigrate recover`` decides it once the target answers.

Balance: load is the memory the containers use (``by="memory"``) or their number (``by="count"``). While the
spread (most loaded host minus least, in percent of the mean) is over ``spread`` or a host is above ``max_use``
percent of its memory, the most loaded host gives the least loaded one the container that narrows the gap most;
only moves that narrow it are made, each container at most once.
"""
from __future__ import annotations

import fnmatch
import json
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from migrate.errors import AgentError, MigrationError, PreflightError, RollbackError, TransportError, UsageError
from migrate.hosts import agent as agent_on
from migrate.names import validate_container, validate_host
from transport.agent import DEFAULT_IO_TIMEOUT

Progress = Callable[[dict], None]
DEFAULT_PARALLEL = 2   # moves at a time; bench --fleet compares it with 1 (docs/bench)
MAX_PARALLEL = 16
ROOM_MARGIN = 1.2      # a target's available memory must hold this many times the container's
BY = ("memory", "count")
MIB = 2 ** 20


# ---------------------------------------------------------------------------------------------- what hosts hold
@dataclass
class Container:
    name: str
    id: str
    host: str
    memory_bytes: int
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""
    pending: bool = False   # an interrupted migration holds it (cmigrate recover)


@dataclass
class HostLoad:
    name: str
    mem_total: int
    mem_available: int
    containers: list[Container]

    @property
    def used(self) -> int:
        return sum(c.memory_bytes for c in self.containers)

    def summary(self) -> dict:
        return {"containers": len(self.containers), "memory_bytes": self.used, "mem_total": self.mem_total}


def survey(names: Iterable[str], *, ssh_config: str | None = None, agent: str | None = None,
           io_timeout: float = DEFAULT_IO_TIMEOUT) -> dict[str, HostLoad | MigrationError]:
    """Each host's memory and running containers (``host.load`` on its agent), all at once; a host that cannot
    be asked maps to the error."""
    def ask(name: str) -> HostLoad | MigrationError:
        try:
            with agent_on(name, ssh_config, agent, io_timeout) as session:
                r = session.call("host.load")
        except MigrationError as exc:
            return exc
        return HostLoad(name, r["mem_total"], r["mem_available"],
                        [Container(c["name"], c["id"], name, c["memory_bytes"], c.get("labels") or {},
                                   c.get("image", ""), c.get("pending", False)) for c in r["containers"]])
    names = list(dict.fromkeys(names))
    with ThreadPoolExecutor(max(1, len(names))) as pool:
        return dict(zip(names, pool.map(ask, names)))


def parse_filter(spec: str) -> tuple[str, str, str | None]:
    """``label=KEY``, ``label=KEY=VALUE`` or ``name=PATTERN`` (shell-style) -> (kind, key, value)."""
    kind, _, rest = spec.partition("=")
    if kind == "label" and rest:
        key, eq, value = rest.partition("=")
        return "label", key, value if eq else None
    if kind == "name" and rest:
        return "name", rest, None
    raise UsageError(f"filter {spec!r}: give label=KEY, label=KEY=VALUE or name=PATTERN")


def select(containers: Iterable[Container], filters: Iterable[str] = (),
           names: Iterable[str] | None = None) -> list[Container]:
    """The containers every filter matches, and (if ``names`` is given) only those named."""
    parsed = [parse_filter(f) for f in filters]
    wanted = set(names) if names is not None else None

    def match(c: Container) -> bool:
        for kind, key, value in parsed:
            if kind == "label" and (key not in c.labels or (value is not None and c.labels[key] != value)):
                return False
            if kind == "name" and not fnmatch.fnmatchcase(c.name, key):
                return False
        return wanted is None or c.name in wanted
    return [c for c in containers if match(c)]


# ---------------------------------------------------------------------------------------------- plans
@dataclass
class Move:
    container: str
    source: str
    destination: str
    memory_bytes: int = 0


class Placer:
    """Where containers go among ``targets`` (see the module's docstring), keeping count of what it placed."""

    def __init__(self, targets: list[HostLoad]) -> None:
        self.order = {t.name: i for i, t in enumerate(targets)}
        self.total = {t.name: max(t.mem_total, 1) for t in targets}
        self.used = {t.name: t.used for t in targets}
        self.count = {t.name: len(t.containers) for t in targets}
        self.free = {t.name: t.mem_available for t in targets}
        self.gone: set[str] = set()

    def choose(self, memory_bytes: int, exclude: Iterable[str] = ()) -> str | None:
        fits = [t for t in self.order if t not in self.gone and t not in set(exclude)
                and self.free[t] >= ROOM_MARGIN * memory_bytes]
        if not fits:
            return None
        return min(fits, key=lambda t: (round(100 * (self.used[t] + memory_bytes) / self.total[t]), self.count[t],
                                        self.order[t]))

    def take(self, target: str, memory_bytes: int) -> None:
        self.used[target] += memory_bytes
        self.count[target] += 1
        self.free[target] -= memory_bytes

    def give_back(self, target: str, memory_bytes: int) -> None:
        self.used[target] -= memory_bytes
        self.count[target] -= 1
        self.free[target] += memory_bytes

    def place(self, containers: Iterable[Container]) -> list[tuple[Container, str | None]]:
        placed = []
        for c in sorted(containers, key=lambda c: (-c.memory_bytes, c.name)):
            target = self.choose(c.memory_bytes)
            if target is not None:
                self.take(target, c.memory_bytes)
            placed.append((c, target))
        return placed


def plan_balance(loads: list[HostLoad], by: str = "memory", spread: float = 10.0,
                 max_use: float | None = None, movable: Callable[[Container], bool] = lambda c: True) -> list[Move]:
    """The moves that even out ``loads`` (see the module's docstring), in the order to make them."""
    if by not in BY:
        raise UsageError(f"balance by {by!r}: choose from {', '.join(BY)}")
    weight = (lambda c: c.memory_bytes) if by == "memory" else (lambda c: 1)
    on = {h.name: list(h.containers) for h in loads}
    total = {h.name: max(h.mem_total, 1) for h in loads}
    order = {h.name: i for i, h in enumerate(loads)}
    load = lambda h: sum(weight(c) for c in on[h])   # noqa: E731
    use = lambda h: 100 * sum(c.memory_bytes for c in on[h]) / total[h]   # noqa: E731
    moved: set[str] = set()
    moves: list[Move] = []
    while len(on) > 1:
        hot = [h for h in on if max_use is not None and use(h) > max_use]
        src = max(hot or on, key=lambda h: (use(h) if hot else load(h), -order[h]))
        dst = min((h for h in on if h != src), key=lambda h: (load(h), len(on[h]), order[h]))
        gap = load(src) - load(dst)
        mean = statistics.mean(load(h) for h in on)
        even = mean == 0 or 100 * (max(map(load, on)) - min(map(load, on))) / mean <= spread
        if even and not hot:
            break
        # a move narrows the gap between the two when the container weighs less than the gap; the best one
        # weighs closest to half of it
        fits = [c for c in on[src] if c.name not in moved and movable(c) and 0 < weight(c) < gap
                and (max_use is None or 100 * (sum(x.memory_bytes for x in on[dst]) + c.memory_bytes)
                     / total[dst] <= max_use)]
        if not fits:
            break
        c = min(fits, key=lambda c: (abs(weight(c) - gap / 2), c.name))
        on[src].remove(c)
        on[dst].append(c)
        moved.add(c.name)
        moves.append(Move(c.name, src, dst, c.memory_bytes))
    return moves


# ---------------------------------------------------------------------------------------------- outcomes
RESULTS = ("moved", "stayed", "frozen", "no-room", "planned", "not-started")


@dataclass
class Outcome:
    """What became of one container: ``moved`` (runs on ``destination``), ``stayed`` (runs on ``source``: refused,
    or rolled back), ``frozen`` (kept frozen on ``source`` for ``cmigrate recover``: see ``error``), ``no-room``
    (no target could hold it), ``planned`` (a dry run's), ``not-started`` (interrupted before its turn)."""

    container: str
    source: str
    destination: str | None
    result: str
    memory_bytes: int = 0
    mode: str | None = None
    downtime: float | None = None
    seconds: float = 0.0
    error: str | None = None
    tried: list[dict] = field(default_factory=list)   # earlier targets: {"destination", "error"}
    report: dict | None = None   # the migration's own report (Report.to_dict) when it moved

    @property
    def where(self) -> str:
        """The host the container is on now."""
        return self.destination if self.result == "moved" else self.source


@dataclass
class FleetReport:
    action: str                  # evacuate, balance, moves
    outcomes: list[Outcome]
    seconds: float = 0.0
    parallel: int = 1
    dry_run: bool = False
    interrupted: bool = False
    before: dict[str, dict] = field(default_factory=dict)   # per host: containers, memory_bytes, mem_total
    warnings: list[str] = field(default_factory=list)
    source: str | None = None    # evacuate: the host emptied

    @property
    def ok(self) -> bool:
        """Every container went where it was meant to (a dry run: every one has a place)."""
        return not self.interrupted and all(o.result == ("planned" if self.dry_run else "moved")
                                            for o in self.outcomes)

    @property
    def moved(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == "moved"]

    @property
    def after(self) -> dict[str, dict]:
        """Each host's containers and their memory after the moves (a dry run: after the plan)."""
        after = {h: dict(v) for h, v in self.before.items()}
        for o in self.outcomes:
            if o.result in ("moved", "planned") and o.source in after and o.destination in after:
                for host, sign in ((o.source, -1), (o.destination, 1)):
                    after[host]["containers"] += sign
                    after[host]["memory_bytes"] += sign * o.memory_bytes
        return after

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok, "after": self.after, "summary": self.summary()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        n, moved = len(self.outcomes), self.moved
        if self.dry_run:
            placed = [o for o in self.outcomes if o.result == "planned"]
            line = f"plan: {len(placed)} of {n} move{'s' if n != 1 else ''}" + _by_target(placed)
            stuck = n - len(placed)
            return line + (f"; {stuck} without a place" if stuck else "") + " (dry run: nothing moved)"
        what = {"evacuate": f"evacuated {self.source}", "balance": "balanced", "moves": "moved"}[self.action]
        line = f"{what}: {len(moved)} of {n} moved{_by_target(moved)} in {self.seconds:.1f} s, " \
               f"{self.parallel} at a time"
        downs = [o.downtime for o in moved if o.downtime is not None]
        if downs:
            line += f"; downtime median {statistics.median(downs):.3f} s, max {max(downs):.3f} s"
        left = [o for o in self.outcomes if o.result != "moved"]
        if left:
            kinds = {}
            for o in left:
                kinds[o.result] = kinds.get(o.result, 0) + 1
            line += "; not moved: " + ", ".join(f"{k} {v}" for k, v in kinds.items())
        return line + (" (interrupted)" if self.interrupted else "")

    def human(self) -> str:
        rows = [("CONTAINER", "FROM", "TO", "MODE", "DOWNTIME", "RESULT")]
        for o in self.outcomes:
            to = o.destination or "-"
            rows.append((o.container, o.source, to if o.result in ("moved", "planned") else f"({to})" if
                         o.destination else "-", o.mode or "-",
                         f"{o.downtime:.3f} s" if o.downtime is not None else "-", o.result))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        for o in self.outcomes:
            for t in o.tried:
                lines.append(f"  {o.container}: {t['destination']} failed: {t['error']}")
            if o.error:
                lines.append(f"  {o.container}: {o.result}: {o.error}")
        if self.before:
            lines += [f"{'host':<10} {'before':>22}   {'after' + (' (plan)' if self.dry_run else ''):>22}"]
            after = self.after
            cell = lambda v: f"{v['containers']} ({v['memory_bytes'] / MIB:.1f} MiB)"  # noqa: E731
            lines += [f"{h:<10} {cell(v):>22}   {cell(after[h]):>22}" for h, v in self.before.items()]
        return "\n".join(lines + [self.summary()] + [f"warning: {w}" for w in self.warnings])


def _by_target(outcomes: list[Outcome]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.destination] = counts.get(o.destination, 0) + 1
    return f" ({', '.join(f'{h} {n}' for h, n in sorted(counts.items()))})" if counts else ""


# ---------------------------------------------------------------------------------------------- running moves
class _Runner:
    """Runs moves ``parallel`` at a time. A move that fails at its destination, with the container back on its
    source, is given to ``placer`` again (if there is one) for another target; a destination lost that way gets
    no more moves. Ctrl-C: no new move starts; those under way end as they would (each rolls back or commits)."""

    def __init__(self, moves: list[Move], parallel: int, progress: Progress, options: dict,
                 placer: Placer | None = None, migrate_fn=None) -> None:
        from migrate.migration import migrate
        self.queue = deque(moves)
        self.parallel, self.emit, self.options, self.placer = parallel, progress, options, placer
        self.migrate = migrate_fn or migrate
        self.lock = threading.Lock()
        self.stopping = False
        self.outcomes: dict[str, Outcome] = {}
        self.tried: dict[str, list[dict]] = {}

    def run(self) -> bool:
        """True when it was interrupted. Waits on an event, not on Thread.join: a KeyboardInterrupt inside join
        can leave the thread looking finished while it still runs (CPython before 3.12), and the CLI would then
        exit in the middle of a migration."""
        n = min(self.parallel, len(self.queue))
        self.active = n
        self.finished = threading.Event()
        if n == 0:
            self.finished.set()
        # not daemons: should this thread die anyway, the process waits for the moves under way to end
        for i in range(n):
            threading.Thread(target=self._work, name=f"move-{i}").start()
        interrupted = False
        while True:
            try:
                if self.finished.wait(0.2):
                    break
            except KeyboardInterrupt:
                interrupted = True
                with self.lock:
                    self.stopping = True
                    left = len(self.queue)
                self.emit({"event": "fleet-interrupted", "not_started": left,
                           "message": "interrupted: no new move starts; the moves under way finish"})
        for m in self.queue:
            self.outcomes[m.container] = Outcome(m.container, m.source, m.destination, "not-started",
                                                 m.memory_bytes, tried=self.tried.get(m.container, []))
        return interrupted

    def _work(self) -> None:
        try:
            while True:
                with self.lock:
                    if self.stopping or not self.queue:
                        return
                    move = self.queue.popleft()
                self._one(move)
        finally:
            with self.lock:
                self.active -= 1
                if self.active == 0:
                    self.finished.set()

    def _one(self, m: Move) -> None:
        tried = self.tried.setdefault(m.container, [])
        self.emit({"event": "move", "container": m.container, "source": m.source, "destination": m.destination,
                   "attempt": len(tried) + 1})
        t0 = time.monotonic()
        on_event = lambda e: self.emit({**e, "container": e.get("container", m.container),   # noqa: E731
                                        "move_destination": m.destination})
        try:
            rep = self.migrate(m.container, m.source, m.destination, progress=on_event, **self.options)
        except RollbackError as exc:
            self._done(Outcome(m.container, m.source, m.destination, "frozen", m.memory_bytes,
                               seconds=time.monotonic() - t0, error=exc.line(), tried=tried))
        except MigrationError as exc:
            if self._another(m, exc):
                tried.append({"destination": m.destination, "error": exc.line()})
                return
            self._done(Outcome(m.container, m.source, m.destination, "stayed", m.memory_bytes,
                               seconds=time.monotonic() - t0, error=exc.line(), tried=tried))
        except Exception as exc:   # migrate() rolled back before it let this through
            self._done(Outcome(m.container, m.source, m.destination, "stayed", m.memory_bytes,
                               seconds=time.monotonic() - t0, error=f"{type(exc).__name__}: {exc}", tried=tried))
        else:
            self._done(Outcome(m.container, m.source, m.destination, "moved", m.memory_bytes, rep.mode,
                               rep.downtime, time.monotonic() - t0, tried=tried, report=rep.to_dict()))

    def _another(self, m: Move, exc: MigrationError) -> bool:
        """A failure at the destination, the container back on its source: True if it goes to another target
        (queued). A destination lost (its host or agent unreachable) gets no more moves: those queued for it are
        placed again too."""
        if self.placer is None or exc.host != m.destination or isinstance(exc, UsageError):
            return False
        with self.lock:
            self.placer.give_back(m.destination, m.memory_bytes)
            again = []
            if isinstance(exc, (TransportError, AgentError)):
                self.placer.gone.add(m.destination)
                self.emit({"event": "target-lost", "host": m.destination, "error": exc.line()})
                again = [q for q in self.queue if q.destination == m.destination]
                for q in again:
                    self.queue.remove(q)
                    self.placer.give_back(q.destination, q.memory_bytes)
            retried = False
            for q in [m, *again]:
                exclude = [t["destination"] for t in self.tried.get(q.container, [])] + [m.destination]
                target = self.placer.choose(q.memory_bytes, exclude=exclude)
                if target is not None:
                    self.placer.take(target, q.memory_bytes)
                    self.queue.append(Move(q.container, q.source, target, q.memory_bytes))
                    retried = retried or q is m
                elif q is not m:
                    self.outcomes[q.container] = Outcome(q.container, q.source, q.destination, "no-room",
                                                         q.memory_bytes, error=f"{q.destination} was lost, and no "
                                                         "other target has room", tried=self.tried.get(q.container, []))
            return retried

    def _done(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes[outcome.container] = outcome
        self.emit({"event": "move-done", "container": outcome.container, "source": outcome.source,
                   "destination": outcome.destination, "result": outcome.result, "downtime": outcome.downtime,
                   "error": outcome.error})


def _check_parallel(parallel: int) -> None:
    if not 1 <= parallel <= MAX_PARALLEL:
        raise UsageError(f"--parallel {parallel}: choose 1..{MAX_PARALLEL}")


def _run(action: str, moves: list[Move], parallel: int, progress: Progress | None, options: dict,
         placer: Placer | None = None, **report) -> FleetReport:
    t0 = time.monotonic()
    runner = _Runner(moves, parallel, progress or (lambda e: None), options, placer)
    interrupted = runner.run()
    outcomes = sorted(runner.outcomes.values(), key=lambda o: (o.source, o.container))
    return FleetReport(action, outcomes, time.monotonic() - t0, parallel, interrupted=interrupted, **report)


def _options(options: dict) -> dict:
    if "progress" in options:
        raise UsageError("progress is the fleet's own argument (its events name each container)")
    return options


def migrate_many(pairs: Iterable[tuple[str, str, str]], *, parallel: int = DEFAULT_PARALLEL,
                 progress: Progress | None = None, **options) -> FleetReport:
    """Migrate each (container, source, destination), ``parallel`` at a time; ``options`` go to every
    :func:`migrate.migration.migrate`. Progress events carry the ``container`` they are about; ``move`` and
    ``move-done`` frame each one. A failed move leaves the others going."""
    _check_parallel(parallel)
    moves, seen = [], set()
    for container, source, destination in pairs:
        validate_container(container)
        validate_host(source)
        validate_host(destination)
        if (container, source) in seen:
            raise UsageError(f"{container} on {source} is given twice: a container moves once per run")
        seen.add((container, source))
        moves.append(Move(container, source, destination))
    return _run("moves", moves, parallel, progress, _options(options))


def _loads(names: list[str], ssh_config, agent, io_timeout, needed: Iterable[str]) -> tuple[dict, list[str]]:
    found = survey(names, ssh_config=ssh_config, agent=agent, io_timeout=io_timeout)
    warnings = []
    for name, got in found.items():
        if isinstance(got, MigrationError):
            if name in needed:
                raise got
            warnings.append(f"{name} left out: {got.line()}")
    return {n: g for n, g in found.items() if isinstance(g, HostLoad)}, warnings


def evacuate(host: str, targets: Iterable[str], *, filters: Iterable[str] = (), containers: Iterable[str] | None = None,
             parallel: int = DEFAULT_PARALLEL, dry_run: bool = False, progress: Progress | None = None,
             ssh_config: str | None = None, agent: str | None = None, io_timeout: float = DEFAULT_IO_TIMEOUT,
             **options) -> FleetReport:
    """Move every running container off ``host`` (those ``filters`` and ``containers`` pick) to ``targets``,
    placed as the module's docstring says; ``options`` go to each :func:`migrate.migration.migrate`. Re-running
    it moves what is left."""
    validate_host(host)
    targets = list(dict.fromkeys(targets))
    if not targets:
        raise UsageError("evacuate needs at least one target host (--to)")
    for t in targets:
        validate_host(t)
    if host in targets:
        raise UsageError(f"{host} is the host being evacuated: it cannot be a target too")
    _check_parallel(parallel)
    filters = list(filters)
    for f in filters:
        parse_filter(f)
    names = None if containers is None else [validate_container(c) for c in containers]
    loads, warnings = _loads([host, *targets], ssh_config, agent, io_timeout, needed=[host])
    live = [loads[t] for t in targets if t in loads]
    if not live:
        raise PreflightError(f"no target host answers ({'; '.join(warnings)})", host=targets[0])
    chosen = select(loads[host].containers, filters, names)
    if names is not None:
        missing = sorted(set(names) - {c.name for c in chosen})
        if missing:
            raise UsageError(f"no running container {', '.join(missing)} on {host}")
    before = {n: h.summary() for n, h in loads.items()}
    outcomes, moves = [], []
    placer = Placer(live)
    for c, target in placer.place([c for c in chosen if not c.pending]):
        if target is None:
            outcomes.append(Outcome(c.name, host, None, "no-room", c.memory_bytes,
                                    error=f"no target has {ROOM_MARGIN:g} x its {c.memory_bytes / MIB:.0f} MiB free"))
        else:
            moves.append(Move(c.name, host, target, c.memory_bytes))
    outcomes += [Outcome(c.name, host, None, "stayed", c.memory_bytes, error="an interrupted migration of it is "
                         f"pending on {host}: cmigrate recover {host} {c.name}") for c in chosen if c.pending]
    common = dict(before=before, warnings=warnings, source=host)
    if dry_run:
        planned = sorted((Outcome(m.container, host, m.destination, "planned", m.memory_bytes) for m in moves),
                         key=lambda o: o.container)
        return FleetReport("evacuate", planned + outcomes, parallel=parallel, dry_run=True, **common)
    report = _run("evacuate", moves, parallel, progress, _options(dict(options, ssh_config=ssh_config, agent=agent,
                                                                       io_timeout=io_timeout)), placer, **common)
    report.outcomes += outcomes
    return report


def balance(hosts: Iterable[str], *, by: str = "memory", spread: float = 10.0, max_use: float | None = None,
            filters: Iterable[str] = (), parallel: int = DEFAULT_PARALLEL, dry_run: bool = False,
            progress: Progress | None = None, ssh_config: str | None = None, agent: str | None = None,
            io_timeout: float = DEFAULT_IO_TIMEOUT, **options) -> FleetReport:
    """Even out ``hosts`` (see the module's docstring) with the fewest moves; only containers ``filters`` pick
    move. Every host must answer: a plan made without one would be wrong."""
    names = list(dict.fromkeys(hosts))
    if len(names) < 2:
        raise UsageError("balance needs at least two hosts")
    for n in names:
        validate_host(n)
    if not 0 <= spread <= 1000:
        raise UsageError(f"--spread {spread:g}: a percentage of the mean load, 0..1000")
    if max_use is not None and not 0 < max_use <= 100:
        raise UsageError(f"--max-use {max_use:g}: a percentage of a host's memory, in (0, 100]")
    _check_parallel(parallel)
    filters = list(filters)
    for f in filters:
        parse_filter(f)
    loads, _ = _loads(names, ssh_config, agent, io_timeout, needed=names)
    movable = {(c.host, c.name) for h in loads.values() for c in select(h.containers, filters) if not c.pending}
    moves = plan_balance([loads[n] for n in names], by, spread, max_use, lambda c: (c.host, c.name) in movable)
    before = {n: h.summary() for n, h in loads.items()}
    if dry_run:
        return FleetReport("balance", [Outcome(m.container, m.source, m.destination, "planned", m.memory_bytes)
                                       for m in moves], parallel=parallel, dry_run=True, before=before)
    return _run("balance", moves, parallel, progress, _options(dict(options, ssh_config=ssh_config, agent=agent,
                                                                    io_timeout=io_timeout)), before=before)
