"""Migration modes on the lab: stop-copy (auto's pick here), post-copy (lazy pages over the direct link), and
pre-copy refused for want of soft-dirty tracking in this kernel."""
from __future__ import annotations

import json

import pytest

import migrate
from migrate.errors import UsageError
from tests.lab.conftest import COUNTER, cmigrate
from tests.lab.test_migrate import (absent, assert_memory_intact, both, no_work_left,  # noqa: F401 (fixture)
                                    run_memhog, running)


def test_post_copy_runs_on_the_destination_first_and_fetches_all_memory_after(both):
    a, b = both
    name = run_memhog(a, 256)
    res = cmigrate("--json", "--mode", "post-copy", name, "hostA", "hostB")
    assert res.status == 0, res.err
    assert "warning: post-copy: hostB runs the container before its memory has arrived" in res.err
    report = json.loads(res.out)
    assert report["mode"] == "post-copy" and report["data_path"] == "direct"
    assert report["postcopy_seconds"] > 0 and report["wire_bytes"] > 256 * 2**20
    assert "post-copy" in report["modes"]["hostB"]
    assert running(b, name) and absent(a, name) and no_work_left()
    assert_memory_intact(b, name)   # every page arrived intact


def test_post_copy_counter_continues(both):
    a, b = both
    name = a.run_detached("busybox", "sh", "-c", COUNTER)
    a.wait_logs(name, lambda lines: len(lines) >= 3)
    report = migrate.migrate(name, "hostA", "hostB", mode="post-copy")
    assert report.mode == "post-copy" and report.postcopy_seconds is not None
    n = [int(x) for x in b.wait_logs(name, lambda lines: len(lines) >= 2)]
    assert n[0] >= 3 and n == list(range(n[0], n[0] + len(n))), n
    assert absent(a, name)


def test_auto_picks_stop_copy_here_and_says_what_each_host_supports(both):
    a, b = both
    name = a.run_detached("busybox", "sh", "-c", COUNTER)
    a.wait_logs(name, lambda lines: len(lines) >= 1)
    report = migrate.migrate(name, "hostA", "hostB")
    assert report.mode == "stop-copy" and report.postcopy_seconds is None
    assert report.modes == {"hostA": ["stop-copy", "post-copy"], "hostB": ["stop-copy", "post-copy"]}


def test_pre_copy_is_refused_naming_the_missing_kernel_feature(both):
    a, b = both
    name = a.run_detached("busybox", "sh", "-c", COUNTER)
    a.wait_logs(name, lambda lines: len(lines) >= 1)
    res = cmigrate("--mode", "pre-copy", name, "hostA", "hostB")
    assert res.status == 1
    assert res.err.startswith("cmigrate: error: hostA: pre-copy needs soft-dirty memory tracking"), res.err
    assert "CONFIG_MEM_SOFT_DIRTY" in res.err
    assert running(a, name) and absent(b, name) and no_work_left()


def test_post_copy_needs_the_direct_link(both):
    a, b = both
    name = a.run_detached("busybox", "sh", "-c", COUNTER)
    a.wait_logs(name, lambda lines: len(lines) >= 1)
    with pytest.raises(UsageError, match="post-copy needs the direct data link"):
        migrate.migrate(name, "hostA", "hostB", mode="post-copy", data_path="relay")
    assert running(a, name) and absent(b, name)


def test_unknown_mode_is_a_usage_error():
    with pytest.raises(UsageError, match="choose from auto, stop-copy, pre-copy, post-copy"):
        migrate.migrate("c", "hostA", "hostB", mode="warp")
    res = cmigrate("--mode", "warp", "c", "hostA", "hostB")
    assert res.status == 2 and "invalid choice: 'warp'" in res.err
