"""The CLI dies mid-migration (SIGKILL at each phase boundary, through CMIGRATE_FAULT): the container is never
lost nor run twice, and ``cmigrate recover`` finishes or rolls back the migration from the journals."""
from __future__ import annotations

import json
import time

import pytest

from tests.lab.conftest import COUNTER, cmigrate
from tests.lab.test_migrate import absent, both, no_work_left, running  # noqa: F401 (fixture)


def _recover(*args: str):
    """``cmigrate recover``, again while the dead CLI's agents are still on their way out."""
    deadline = time.monotonic() + 30
    while True:
        res = cmigrate("--json", "recover", *args)
        if "in-progress" not in res.out or time.monotonic() > deadline:
            return res
        time.sleep(0.5)


def _counting(d, name: str, after: int) -> list[int]:
    lines = d.wait_logs(name, lambda lines: len([x for x in lines if x.isdigit() and int(x) > after]) >= 2,
                        timeout=30)
    return [int(x) for x in lines if x.isdigit()]


@pytest.mark.parametrize("point", ["frozen", "restored"])
def test_cli_killed_before_the_commit_point_rolls_back(both, point):
    a, b = both
    name = a.run_detached("busybox", "sh", "-c", COUNTER)
    before = [int(x) for x in a.wait_logs(name, lambda lines: len(lines) >= 3)]
    res = cmigrate(name, "hostA", "hostB", env={"CMIGRATE_FAULT": f"kill-cli@{point}"})
    assert res.status == -9, (res.status, res.err)
    # the next migration of that container is refused until the interrupted one is sorted out
    again = cmigrate(name, "hostA", "hostB")
    assert again.status == 1 and "an interrupted migration of" in again.err and "cmigrate recover" in again.err
    res = _recover("hostA", name)
    assert res.status == 0, res.out + res.err
    [outcome] = json.loads(res.out)
    assert outcome["result"] == "rolled-back" and outcome["destination"] == "hostB"
    assert running(a, name) and absent(b, name) and no_work_left()
    n = _counting(a, name, before[-1])
    assert n[0] == 0 and n == list(range(len(n))), "the counter must go on from where it was, never reset"


def test_cli_killed_after_the_commit_point_completes(both):
    a, b = both
    name = a.run_detached("busybox", "sh", "-c", COUNTER)
    before = [int(x) for x in a.wait_logs(name, lambda lines: len(lines) >= 3)]
    res = cmigrate(name, "hostA", "hostB", env={"CMIGRATE_FAULT": "kill-cli@committed"})
    assert res.status == -9, (res.status, res.err)
    assert running(b, name), "past the commit point the destination keeps the container"
    res = _recover("hostA")
    assert res.status == 0, res.out + res.err
    [outcome] = json.loads(res.out)
    assert outcome["result"] == "completed"
    assert running(b, name) and absent(a, name) and no_work_left()
    n = [int(x) for x in b.wait_logs(name, lambda lines: len(lines) >= 2)]
    assert n[0] >= before[-1] and n == list(range(n[0], n[0] + len(n))), n


def test_recover_with_nothing_to_do(both):
    res = cmigrate("recover", "hostA")
    assert res.status == 0 and res.out.strip() == "nothing to recover on hostA"
