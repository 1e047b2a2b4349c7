"""Fleet moves' logic (migrate/fleet.py): placement, the balance plan, and the runner's handling of failures, with
a fake migrate(). The real moves are tested on the lab (tests/lab/test_fleet.py)."""
from __future__ import annotations

import threading
import time

import pytest

from migrate import fleet
from migrate.errors import PreflightError, RollbackError, TransportError, UsageError
from migrate.fleet import Container, HostLoad, Move, Placer, plan_balance

GIB, MIB = 2 ** 30, 2 ** 20


def host(name, *sizes_mib, total_gib=16, available_gib=None, prefix=None):
    prefix = prefix or name[-1].lower()
    cs = [Container(f"{prefix}{i}", f"id-{prefix}{i}", name, int(s * MIB)) for i, s in enumerate(sizes_mib)]
    return HostLoad(name, total_gib * GIB, (available_gib if available_gib is not None else total_gib) * GIB, cs)


def test_small_containers_alternate_over_empty_targets_in_the_given_order():
    placer = Placer([host("hostB"), host("hostC")])
    placed = placer.place(host("hostA", 1, 1, 1, 1, 1).containers)
    assert [t for _, t in placed] == ["hostB", "hostC", "hostB", "hostC", "hostB"]


def test_largest_first_each_to_the_target_with_the_lowest_memory_use_after_it():
    b = host("hostB", 4096)           # 25 % of 16 GiB in use already
    c = host("hostC")
    placed = dict((x.name, t) for x, t in Placer([b, c]).place(host("hostA", 2048, 1024, 3072).containers))
    # 3 GiB to C (19 %, B would be 44 %); 2 GiB to C (31 % against B's 38 %); 1 GiB: B 31 % = C 31 %, B has
    # 1 container against C's 2
    assert placed == {"a2": "hostC", "a0": "hostC", "a1": "hostB"}


def test_memory_use_decides_before_the_container_count():
    busy_but_light = host("hostB", 10, 10, 10, 10)   # 4 containers, ~0 % of its memory
    one_heavy = host("hostC", 8192)                   # 1 container, 50 %
    placed = Placer([busy_but_light, one_heavy]).place(host("hostA", 1024).containers)
    assert [t for _, t in placed] == ["hostB"]


def test_a_container_no_target_has_room_for_is_not_placed():
    placed = Placer([host("hostB", available_gib=1)]).place(host("hostA", 900, 500).containers)
    assert [(x.name, t) for x, t in placed] == [("a0", None), ("a1", "hostB")]   # 1.2 x 900 MiB > 1 GiB


def test_balance_by_count_makes_the_fewest_moves():
    moves = plan_balance([host("hostA", 1, 1, 1, 1), host("hostB"), host("hostC")], by="count")
    assert [(m.source, m.destination) for m in moves] == [("hostA", "hostB"), ("hostA", "hostC")]


def test_balance_by_memory_moves_the_container_closest_to_half_the_gap():
    moves = plan_balance([host("hostA", 1000, 600, 100, 50), host("hostB", 200)], by="memory")
    # gap 1550: 600 is nearest 775; then A 1150 vs B 800, gap 350: no container below it narrows it but 100
    # and 50 (100 is nearer 175); A 1050, B 900: gap 150, 50 left: A 1000, B 950
    assert [(m.container, m.destination) for m in moves] == [("a1", "hostB"), ("a2", "hostB"), ("a3", "hostB")]


def test_balance_stops_within_the_spread_and_leaves_a_balanced_fleet_alone():
    assert plan_balance([host("hostA", 100, 100), host("hostB", 100, 95)], spread=10) == []
    assert plan_balance([host("hostA", 1, 1), host("hostB", 1, 1)], by="count") == []


def test_balance_moves_no_container_twice_and_only_movable_ones():
    loads = [host("hostA", 10, 10, 10, 10, 10, 10), host("hostB"), host("hostC")]
    moves = plan_balance(loads, spread=0)
    assert len({m.container for m in moves}) == len(moves)
    moves = plan_balance(loads, movable=lambda c: c.name != "a0" and c.name != "a1", spread=0)
    assert {"a0", "a1"}.isdisjoint(m.container for m in moves)


def test_balance_relieves_a_host_over_max_use():
    moves = plan_balance([host("hostA", 5000, total_gib=10), host("hostB", 8000, 900, total_gib=10)],
                         spread=1000, max_use=85)
    assert [(m.container, m.source, m.destination) for m in moves] == [("b1", "hostB", "hostA")]


def test_filters():
    cs = [Container("web-1", "1", "h", 0, {"tier": "web"}), Container("db-1", "2", "h", 0, {"tier": "db", "x": ""})]
    assert [c.name for c in fleet.select(cs, ["label=tier=web"])] == ["web-1"]
    assert [c.name for c in fleet.select(cs, ["label=x"])] == ["db-1"]
    assert [c.name for c in fleet.select(cs, ["name=*-1", "label=tier=db"])] == ["db-1"]
    assert [c.name for c in fleet.select(cs, [], names=["web-1"])] == ["web-1"]
    for bad in ("tier=web", "label=", "name="):
        with pytest.raises(UsageError):
            fleet.parse_filter(bad)


class FakeMigrate:
    """migrate() that takes ``seconds``, fails as ``failures`` says (container -> exception, or destination ->
    exception for every move there), and counts how many run at once."""

    def __init__(self, seconds=0.05, failures=None, dead=()):
        self.seconds, self.failures, self.dead = seconds, failures or {}, set(dead)
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.calls: list[tuple[str, str]] = []

    def __call__(self, container, source, destination, progress=None, **options):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.calls.append((container, destination))
        try:
            progress({"event": "phase", "phase": "preflight"})
            time.sleep(self.seconds)
            if destination in self.dead:
                raise TransportError(f"cannot connect to {destination}", host=destination)
            for key in (container, (container, destination)):
                if key in self.failures:
                    raise self.failures[key]
            return type("R", (), {"mode": "stop-copy", "downtime": 0.1, "to_dict": lambda self: {}})()
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def fake(monkeypatch):
    def install(**kw):
        f = FakeMigrate(**kw)
        monkeypatch.setattr("migrate.migration.migrate", f)
        return f
    return install


def _run(moves, parallel=2, placer=None):
    events = []
    lock = threading.Lock()

    def progress(e):
        with lock:
            events.append(e)
    runner = fleet._Runner(moves, parallel, progress, {}, placer)
    runner.run()
    return runner.outcomes, events


def test_moves_run_at_most_parallel_at_a_time_and_events_name_their_container(fake):
    f = fake(seconds=0.1)
    outcomes, events = _run([Move(f"c{i}", "hostA", "hostB") for i in range(6)], parallel=3)
    assert f.most == 3
    assert all(o.result == "moved" for o in outcomes.values()) and len(outcomes) == 6
    phases = [e for e in events if e["event"] == "phase"]
    assert sorted(e["container"] for e in phases) == [f"c{i}" for i in range(6)]


def test_one_failure_does_not_stop_the_others_and_source_errors_are_not_retried(fake):
    f = fake(failures={"c1": PreflightError("holds 2 TCP connections", host="hostA")})
    b, c = host("hostB"), host("hostC")
    placer = Placer([b, c])
    outcomes, _ = _run([Move("c0", "hostA", "hostB"), Move("c1", "hostA", "hostC"), Move("c2", "hostA", "hostB")],
                       placer=placer)
    assert {n: o.result for n, o in outcomes.items()} == {"c0": "moved", "c1": "stayed", "c2": "moved"}
    assert "TCP" in outcomes["c1"].error and [x for x, _ in f.calls].count("c1") == 1


def test_a_lost_target_gets_nothing_more_and_its_containers_go_elsewhere_once(fake):
    f = fake(dead={"hostC"})
    placer = Placer([host("hostB"), host("hostC")])
    moves = [Move(c.name, "hostA", t) for c, t in placer.place(host("hostA", 1, 1, 1, 1, 1, 1).containers)]
    assert sum(m.destination == "hostC" for m in moves) == 3
    outcomes, events = _run(moves, parallel=2, placer=placer)
    assert {o.result for o in outcomes.values()} == {"moved"}
    assert {o.destination for o in outcomes.values()} == {"hostB"}
    # each container moved once; hostC was tried by at most the moves under way when it was lost
    assert sorted(c for c, d in f.calls if d == "hostB") == sorted(o.container for o in outcomes.values())
    assert sum(d == "hostC" for _, d in f.calls) <= 2
    assert [e["host"] for e in events if e["event"] == "target-lost"][:1] == ["hostC"]
    retried = [o for o in outcomes.values() if o.tried]
    assert retried and all(t["destination"] == "hostC" for o in retried for t in o.tried)


def test_a_lost_target_is_not_given_a_container_another_target_refused(fake):
    f = fake(dead={"hostC"}, failures={("c1", "hostD"): PreflightError("name c1 in use", host="hostD")})
    placer = Placer([host("hostB", 1, 1, 1), host("hostC"), host("hostD")])
    placer.take("hostC", 0)
    placer.take("hostD", 0)
    outcomes, _ = _run([Move("c0", "hostA", "hostC"), Move("c1", "hostA", "hostD")], parallel=1, placer=placer)
    assert [d for _, d in f.calls].count("hostC") == 1
    assert outcomes["c1"].result == "moved" and outcomes["c1"].destination == "hostB"
    assert outcomes["c1"].tried == [{"destination": "hostD", "error": "name c1 in use (on hostD)"}] or \
        [t["destination"] for t in outcomes["c1"].tried] == ["hostD"]


def test_a_container_left_frozen_is_never_retried(fake):
    f = fake(failures={"c0": RollbackError("stays frozen on hostA", host="hostC")})
    placer = Placer([host("hostB"), host("hostC")])
    outcomes, _ = _run([Move("c0", "hostA", "hostC")], placer=placer)
    assert outcomes["c0"].result == "frozen" and f.calls == [("c0", "hostC")]


def test_no_room_elsewhere_leaves_it_on_its_source(fake):
    fake(dead={"hostC"})
    placer = Placer([host("hostB", available_gib=0), host("hostC")])
    outcomes, _ = _run([Move("c0", "hostA", "hostC", MIB)], placer=placer)
    assert outcomes["c0"].result == "stayed" and outcomes["c0"].where == "hostA"


def test_migrate_many_refuses_a_container_given_twice_and_a_bad_parallel():
    with pytest.raises(UsageError, match="twice"):
        fleet.migrate_many([("c", "hostA", "hostB"), ("c", "hostA", "hostC")])
    with pytest.raises(UsageError, match="parallel"):
        fleet.migrate_many([("c", "hostA", "hostB")], parallel=0)


def test_evacuate_refuses_its_own_host_as_a_target():
    with pytest.raises(UsageError, match="cannot be a target"):
        fleet.evacuate("hostA", ["hostB", "hostA"])


def test_report_ok_only_when_every_container_moved():
    moved = fleet.Outcome("c0", "hostA", "hostB", "moved", downtime=0.2)
    stayed = fleet.Outcome("c1", "hostA", "hostC", "stayed", error="x")
    assert fleet.FleetReport("evacuate", [moved], source="hostA").ok
    rep = fleet.FleetReport("evacuate", [moved, stayed], source="hostA", seconds=1.0)
    assert not rep.ok
    assert "1 of 2 moved (hostB 1)" in rep.summary() and "not moved: stayed 1" in rep.summary()
    assert "(hostC)" in rep.human()   # where it was bound, not where it is


def test_ctrl_c_starts_no_new_move_and_lets_the_one_under_way_finish(monkeypatch):
    import _thread
    calls = []

    def migrate(container, source, destination, progress=None, **options):
        calls.append(container)
        if len(calls) == 1:
            time.sleep(0.3)            # the runner's main thread waits in its join loop
            _thread.interrupt_main()   # as Ctrl-C: KeyboardInterrupt there
            time.sleep(0.3)            # this move goes on to its end
        return type("R", (), {"mode": "stop-copy", "downtime": 0.1, "to_dict": lambda self: {}})()
    monkeypatch.setattr("migrate.migration.migrate", migrate)
    runner = fleet._Runner([Move(f"c{i}", "hostA", "hostB") for i in range(4)], 1, lambda e: None, {})
    assert runner.run() is True
    assert calls == ["c0"]
    assert {n: o.result for n, o in runner.outcomes.items()} == {
        "c0": "moved", "c1": "not-started", "c2": "not-started", "c3": "not-started"}
