"""The fault matrix on the lab (marker ``faults``): each fault at each phase of a migration hostA -> hostB, then
what an operator would do (bring the link back; ``cmigrate recover`` where the CLI said so or was killed).
Every cell must end with the container running on exactly one host, its memory and progress intact, nothing left
behind, and a CLI that either finished the migration or said in one line why not, with a non-zero status."""
from __future__ import annotations

import pytest

from tests.faults import runner
from tests.faults.matrix import CELLS, run_cell

pytestmark = [pytest.mark.lab, pytest.mark.faults]


@pytest.mark.parametrize("fault,point", CELLS, ids=[f"{f}@{p}" for f, p in CELLS])
def test_fault(the_lab, fault, point):
    out = run_cell(fault, point)
    assert out.verdict == "ok", out.row() + (f" ({out.state_note})" if out.state_note else "")
    if out.exit > 0:
        assert out.error.startswith("cmigrate: error: "), out.row()
    elif out.exit == 0:
        assert out.running_on == ["hostB"], out.row()   # a CLI that says nothing went wrong moved it
    else:
        assert fault == "cli-killed" and out.recovered, out.row()


def test_randomized_runner_small(the_lab, capsys):
    """The seeded runner, a few trials: same counts as the matrix demands (CI's small N; README: large N)."""
    counts = runner.main(["--trials", "3", "--seed", "2026"])
    assert counts == {"ok": 3, "lost": 0, "running-twice": 0, "state-lost": 0, "leftovers": 0,
                      "not-injected": 0}, capsys.readouterr().out
