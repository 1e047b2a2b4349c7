"""Pre-copy's stop rule and what the report says of its iterations (the iterations themselves need a kernel with
soft-dirty tracking: tests/lab/test_modes.py runs them where the lab's kernels have it)."""
from __future__ import annotations

import pytest

from migrate.errors import UsageError
from migrate.migration import PrecopyRule, Report


def run(rule: PrecopyRule, pages: list[int]) -> tuple[int, str]:
    """Iterations the rule lets happen for these pages-per-iteration counts, and why it stopped."""
    previous = None
    for n, p in enumerate(pages, 1):
        why = rule.stop(n, p, previous)
        if why:
            return n, why
        previous = p
    raise AssertionError("the rule never stopped")


def test_stops_when_an_iteration_writes_few_pages():
    assert run(PrecopyRule(min_pages=1000), [262144, 40000, 900]) == (3, "pre-dump 3 wrote 900 pages, fewer than 1000")


def test_stops_when_iterations_stop_shrinking():
    n, why = run(PrecopyRule(min_pages=100, shrink=0.8), [262144, 30000, 26000])
    assert n == 3 and "more than 0.8 x the 30000 before it" in why


def test_stops_at_the_most_iterations_allowed():
    assert run(PrecopyRule(max_iterations=3, min_pages=1), [1000, 500, 250, 125]) == (3, "3 pre-dumps, the most allowed")


def test_one_iteration_is_allowed():
    assert run(PrecopyRule(max_iterations=1, min_pages=1), [5000])[0] == 1


@pytest.mark.parametrize("kwargs", [{"max_iterations": 0}, {"max_iterations": 100}, {"min_pages": -1},
                                    {"shrink": 0}, {"shrink": 1.5}])
def test_bad_limits_are_refused(kwargs):
    with pytest.raises(UsageError):
        PrecopyRule(**kwargs)


def test_report_lists_each_iteration_and_the_reason_to_stop():
    r = Report("c", "hostA", "hostB", "id", mode="pre-copy")
    r.precopy = [{"iteration": 1, "pages": 65536, "bytes": 256 << 20, "wire_bytes": 80 << 20, "seconds": 1.5,
                  "frozen_ms": 120.0},
                 {"iteration": 2, "pages": 500, "bytes": 2 << 20, "wire_bytes": 1 << 20, "seconds": 0.2,
                  "frozen_ms": 30.0}]
    r.precopy_stop = "pre-dump 2 wrote 500 pages, fewer than 1024"
    text = r.human()
    assert "pre-dump 1      65536 pages    256.0 MiB     80.0 MiB on the wire" in text
    assert "pre-dump 2        500 pages" in text and "(container paused 30 ms)" in text
    assert "stopped: pre-dump 2 wrote 500 pages, fewer than 1024" in text
    assert r.to_dict()["precopy"][1]["pages"] == 500
