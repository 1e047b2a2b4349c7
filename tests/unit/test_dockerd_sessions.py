"""What the source agent reads of a container's exec sessions and health probes before it freezes it: the sessions
that would be lost (health probes are not), and when the next probe is due."""
from __future__ import annotations

import time

import docker.errors
import pytest

from agents import dockerd
from agents.dockerd import Docker, _last_probe_end


class API:
    def __init__(self, execs: dict) -> None:
        self.execs = execs

    def exec_inspect(self, eid: str) -> dict:
        if eid not in self.execs:
            raise docker.errors.NotFound("gone")
        return self.execs[eid]


def with_execs(info: dict, execs: dict) -> Docker:
    dk = Docker.__new__(Docker)
    dk.api = API(execs)
    dk.inspect = lambda cid: info | {"ExecIDs": list(execs) + ["ended"]}
    return dk


def exec_of(argv: list[str], running: bool = True) -> dict:
    return {"Running": running, "ProcessConfig": {"entrypoint": argv[0], "arguments": argv[1:]}}


@pytest.mark.parametrize("test", [["CMD-SHELL", "test -d /"], ["CMD", "test", "-d", "/"], None])
def test_running_exec_sessions_are_named_health_probes_and_ended_ones_are_not(test):
    info = {"Id": "c1", "Config": {"Healthcheck": {"Test": test} if test else None}}
    probe = (["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]) if test else ["true"]
    dk = with_execs(info, {"a": exec_of(["sleep", "300"]), "b": exec_of(probe), "c": exec_of(["top"], False)})
    assert dk.exec_sessions(info) == ["sleep 300"] + ([] if test else ["true"])


def test_a_probe_in_the_images_shell_is_a_probe():
    info = {"Id": "c1", "Config": {"Shell": ["/bin/bash", "-c"], "Healthcheck": {"Test": ["CMD-SHELL", "ok"]}}}
    assert with_execs(info, {"b": exec_of(["/bin/bash", "-c", "ok"])}).exec_sessions(info) == []


def test_probe_end_times_are_read_with_their_fraction_and_zone():
    def info(end):
        return {"State": {"Health": {"Log": [{"End": "2026-12-03T08:00:00Z"}, {"End": end}]}}}
    assert _last_probe_end(info("2026-12-03T08:01:02.123456789Z")) == pytest.approx(1796284862.123456789)
    assert _last_probe_end(info("2026-12-03T09:01:02.5+01:00")) == pytest.approx(1796284862.5)
    assert _last_probe_end({"State": {}}) is None
    assert _last_probe_end(info("garbage")) is None


class Probing(Docker):
    """A container probed every ``interval`` s; the last probe ended ``ago`` s before the first look, and a new one
    ends ``next_in`` s after it."""

    def __init__(self, interval: float, ago: float, next_in: float) -> None:
        self.t0, self.ago, self.next_in = time.time(), ago, next_in
        self.hc = {"Test": ["CMD-SHELL", "ok"], "Interval": int(interval * 1e9), "Timeout": int(2e9)}

    def inspect(self, cid: str) -> dict:
        now = time.time()
        end = self.t0 + self.next_in if now >= self.t0 + self.next_in else self.t0 - self.ago
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(end)) + f".{int(end % 1 * 1e6):06d}Z"
        return {"State": {"Health": {"Log": [{"End": stamp}]}}}

    def info_(self) -> dict:
        return {"Id": "c1", "Config": {"Healthcheck": self.hc}}


def test_the_freeze_waits_for_a_probe_due_within_the_room():
    dk = Probing(interval=2.0, ago=1.2, next_in=0.3)   # next probe due in 0.8 s: closer than the 1.5 s room
    waited = dk.between_health_probes(dk.info_())
    assert 0.25 <= waited < 1.0


def test_the_freeze_goes_at_once_with_room_enough_or_no_room_ever():
    assert Probing(interval=5.0, ago=1.0, next_in=4.0).between_health_probes(Probing(5, 1, 4).info_()) < 0.1
    short = Probing(interval=1.0, ago=0.5, next_in=0.5)   # an interval under the room: waiting would not help
    assert short.between_health_probes(short.info_()) < 0.1
    assert Docker.between_health_probes(short, {"Id": "c1", "Config": {}}) == 0.0
    assert dockerd.HEALTH_ROOM == 1.5
