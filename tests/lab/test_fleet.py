"""Fleet moves on the three-host lab: evacuate, a target cut off mid-evacuation, balance. Real dockerd, CRIU and
sshd on hostA, hostB and hostC; a sampler (tests/lab/fleet_watch.py) watches every container on every host all
the way through, for a moment in which one ran on two hosts."""
from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

from migrate import lab
from tests.lab.conftest import COUNTER, RemoteDocker, cmigrate
from tests.lab.fleet_watch import FleetWatch

HOSTS = ("hostA", "hostB", "hostC")


@pytest.fixture
def fleet_lab(the_lab):
    lab.up(n_hosts=3)   # a no-op when test.sh brought it up with hostC
    docks = {h: RemoteDocker(h) for h in HOSTS}
    yield docks
    for d in docks.values():
        d.cleanup()


def _running(d: RemoteDocker) -> list[str]:
    return d("ps", "--format", "{{.Names}}").out.split()


def _counters(docks: dict, n: int, host: str = "hostA") -> dict[str, int]:
    """``n`` counters on ``host``, each named in its environment for the sampler; name -> its count so far."""
    for d in docks.values():
        assert _running(d) == [], f"{d.name} already runs containers: {_running(d)}"
    tag = uuid.uuid4().hex[:6]
    names = [f"fleet-{tag}-{i}" for i in range(n)]
    for name in names:
        for d in docks.values():   # whichever host it ends on, it is removed after the test
            d.made.append(name)
        docks[host]("run", "-d", "--name", name, "--label", f"fleet-test={tag}", "-e", f"FLEET_NAME={name}",
                    "busybox", "sh", "-c", COUNTER)
    return {name: int(docks[host].wait_logs(name, lambda lines: len(lines) >= 2)[-1]) for name in names}


def _where(docks: dict, names) -> dict[str, list[str]]:
    return {name: [h for h, d in docks.items() if name in _running(d)] for name in names}


def _goes_on(docks: dict, host: str, name: str, before: int) -> None:
    """It counts on where it is, from where it was: no reset, no gap. A destination's log starts at its restore;
    on hostA, where it started, the log is whole (from 0)."""
    n = [int(x) for x in docks[host].wait_logs(name, lambda lines: len(lines) >= 2 and int(lines[-1]) > before)]
    first = 0 if host == "hostA" else before
    assert (n[0] == 0 if host == "hostA" else n[0] >= first) and n == list(range(n[0], n[0] + len(n))), \
        f"{name} on {host}: {n} (was at {before})"


def test_evacuate_empties_hostA_and_every_counter_goes_on(fleet_lab):
    docks = fleet_lab
    counts = _counters(docks, 5)
    plan = cmigrate("evacuate", "hostA", "--to", "hostB,hostC", "--dry-run", "--json")
    assert plan.status == 0, plan.err
    planned = {o["container"]: o["destination"] for o in json.loads(plan.out)["outcomes"]}
    assert set(planned) == set(counts) and sorted(planned.values()) == ["hostB"] * 3 + ["hostC"] * 2
    assert set(_running(docks["hostA"])) == set(counts)   # a dry run moves nothing
    with FleetWatch(set(counts)) as watch:
        res = cmigrate("evacuate", "hostA", "--to", "hostB,hostC", "--json", timeout=300)
    assert res.status == 0, res.err
    report = json.loads(res.out)
    assert report["ok"] and {o["result"] for o in report["outcomes"]} == {"moved"}
    assert _running(docks["hostA"]) == []
    went = {o["container"]: o["destination"] for o in report["outcomes"]}
    # as planned: which counter goes where follows their memory, which changes by the moment
    assert sorted(went.values()) == sorted(planned.values())
    assert _where(docks, counts) == {name: [went[name]] for name in counts}
    for name, before in counts.items():
        _goes_on(docks, went[name], name, before)
        assert watch.seen_on[name] == {"hostA", went[name]}, watch.summary()   # the sampler saw both ends
    assert not watch.twice, watch.summary()
    assert all(o["downtime"] > 0 for o in report["outcomes"])
    # again: nothing left to move, and nothing moved twice
    again = cmigrate("evacuate", "hostA", "--to", "hostB,hostC", "--json")
    assert again.status == 0 and json.loads(again.out)["outcomes"] == []


CUT_HOOK = ('sh -c \'[ "$CMIGRATE_DESTINATION" = hostC ] && mkdir {flag} 2>/dev/null && '
            f'ip link set {lab.ALL_HOSTS[2].veth} down; exit 0\'')


def test_a_target_cut_off_mid_evacuation_loses_nothing_and_runs_nothing_twice(fleet_lab, tmp_path):
    """hostC's link goes down as the first move to it is about to freeze its container. That container stays on
    hostA (rolled back, or frozen for cmigrate recover, which puts it right once hostC answers); the others bound
    for hostC go to hostB; none is lost, none ever runs twice."""
    docks = fleet_lab
    counts = _counters(docks, 6)   # 3 bound for hostC
    veth = lab.ALL_HOSTS[2].veth
    env = {"CMIGRATE_FAULT": "hook@prepared", "CMIGRATE_FAULT_HOOK": CUT_HOOK.format(flag=tmp_path / "cut")}
    recovered = None
    with FleetWatch(set(counts)) as watch:
        try:
            res = cmigrate("evacuate", "hostA", "--to", "hostB,hostC", "--io-timeout", "3", "--json", env=env,
                           timeout=300)
        finally:
            subprocess.run(["ip", "link", "set", veth, "up"], check=True)
            # this test's own connection to hostC lived through the cut: TCP may wait out its backoff (tens of
            # seconds) before it carries again; a new one answers at once
            docks["hostC"].host.close()
        assert (tmp_path / "cut").exists(), "the cut never happened"
        report = json.loads(res.out)
        results = {o["container"]: o for o in report["outcomes"]}
        assert set(results) == set(counts)
        assert res.status == 1 and not report["ok"], res.err
        cut = [o for o in report["outcomes"] if o["destination"] == "hostC" and o["result"] != "moved"]
        # only the moves under way to hostC when it was lost (2 at a time) may fail; the rest went elsewhere
        assert 1 <= len(cut) <= 2 and len(cut) + len(
            [o for o in report["outcomes"] if o["result"] == "moved"]) == len(counts), report["summary"]
        # what was bound for hostC went to hostB instead; the one cut stayed on hostA
        assert all(o["destination"] == "hostB" for o in report["outcomes"] if o["result"] == "moved")
        assert all(o["result"] in ("stayed", "frozen") for o in cut)
        if any(o["result"] == "frozen" for o in cut):
            assert "cmigrate recover hostA" in json.dumps(report)
            recovered = cmigrate("recover", "hostA")
            assert recovered.status == 0, recovered.err
        time.sleep(1)   # the sampler goes on past the recover
    assert not watch.twice, watch.summary()
    where = _where(docks, counts)
    assert all(len(hosts) == 1 for hosts in where.values()), where
    for name, before in counts.items():
        _goes_on(docks, where[name][0], name, before)
        o = results[name]
        assert where[name] == [o["destination"] if o["result"] == "moved" else "hostA"] or recovered, (o, where)
    # nothing of them stays behind elsewhere (hostC's agent drops its copy once it notices the CLI gone)
    deadline = time.monotonic() + 30
    while True:
        extra = {h: [n for n in counts if h not in where[n] and docks[h]("inspect", n, check=False).status == 0]
                 for h in HOSTS}
        if not any(extra.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not any(extra.values()), extra
    # re-running moves what is left
    again = cmigrate("evacuate", "hostA", "--to", "hostB,hostC", "--json", timeout=300)
    assert again.status == 0, again.err
    assert _running(docks["hostA"]) == []


def test_balance_evens_out_a_skewed_lab_with_the_fewest_moves(fleet_lab):
    docks = fleet_lab
    counts = _counters(docks, 4)
    plan = cmigrate("balance", "hostA", "hostB", "hostC", "--by", "count", "--dry-run", "--json")
    assert plan.status == 0, plan.err
    planned = json.loads(plan.out)
    assert [(o["source"], o["destination"]) for o in planned["outcomes"]] in (
        [("hostA", "hostB"), ("hostA", "hostC")], [("hostA", "hostC"), ("hostA", "hostB")])
    assert {h: v["containers"] for h, v in planned["after"].items()} == {"hostA": 2, "hostB": 1, "hostC": 1}
    assert len(_running(docks["hostA"])) == 4   # a dry run moves nothing
    with FleetWatch(set(counts)) as watch:
        res = cmigrate("balance", "hostA", "hostB", "hostC", "--by", "count", "--json", timeout=300)
    assert res.status == 0, res.err
    report = json.loads(res.out)
    assert len(report["outcomes"]) == 2 and report["ok"]
    assert {h: len(_running(d)) for h, d in docks.items()} == {"hostA": 2, "hostB": 1, "hostC": 1}
    where = _where(docks, counts)
    for name, before in counts.items():
        assert len(where[name]) == 1
        _goes_on(docks, where[name][0], name, before)
    assert not watch.twice, watch.summary()
    # balanced now: a second run moves nothing
    again = cmigrate("balance", "hostA", "hostB", "hostC", "--by", "count", "--json")
    assert again.status == 0 and json.loads(again.out)["outcomes"] == []


def test_the_sampler_sees_a_container_on_two_hosts(fleet_lab):
    """The fleet tests' sampler is not blind: one name running on hostA and hostC at once is counted."""
    docks = fleet_lab
    name = f"fleet-twice-{uuid.uuid4().hex[:6]}"
    for h in ("hostA", "hostC"):
        docks[h].made.append(name)
        docks[h]("run", "-d", "--name", name, "-e", f"FLEET_NAME={name}", "busybox", "sleep", "60")
    with FleetWatch({name}) as watch:
        time.sleep(0.3)
    assert watch.twice.get(name, 0) > 0 and watch.seen_on[name] == {"hostA", "hostC"}, watch.summary()
