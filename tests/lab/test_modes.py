"""Migration modes on the lab: stop-copy (auto's pick here), post-copy (lazy pages over the direct link), and
pre-copy: refused for want of soft-dirty tracking on this project's CI kernel, run for real where the kernel has
it (the soft-dirty VM, vagrant/precopy-vm)."""
from __future__ import annotations

import json

import pytest

import migrate
from migrate import lab
from migrate.errors import UsageError
from tests.lab.conftest import COUNTER, cmigrate
from tests.lab.test_migrate import (absent, assert_memory_intact, both, no_work_left,  # noqa: F401 (fixture)
                                    run_memhog, running)


def dirty_tracking() -> bool:
    """Whether this kernel (the lab's hosts share it) has soft-dirty tracking: CRIU's own check says."""
    from migrate.hostinfo import criu_info
    from transport.hosts import LocalHost
    return criu_info(LocalHost()).dirty_tracking


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


def test_post_copy_background_pages_cross_a_slow_link_compressed_and_intact(both):
    """Post-copy's pages come in answers to the destination's requests: on a 200 Mbit/s link text-like memory
    crosses in well under half its size, and verifies itself; with compression off it takes its full size."""
    a, b = both
    lab.shape_link("hostB", "200mbit")
    try:
        name = a.run_detached("busybox", "memhog", "64", "0", "5", "text")
        a.wait_logs(name, lambda lines: "verified" in lines)
        report = migrate.migrate(name, "hostA", "hostB", mode="post-copy")
        assert report.mode == "post-copy" and report.postcopy_seconds is not None
        assert report.wire_bytes < report.raw_bytes / 2.5, (report.wire_bytes, report.raw_bytes)
        assert running(b, name) and absent(a, name)
        assert_memory_intact(b, name)
        back = migrate.migrate(name, "hostB", "hostA", mode="post-copy", page_compression="off")
        assert back.wire_bytes > 64 * 2**20
        assert running(a, name) and absent(b, name)
        assert_memory_intact(a, name)
    finally:
        lab.unshape_link("hostB")


def test_post_copy_counter_continues(both):
    a, b = both
    name = a.run_detached("busybox", "sh", "-c", COUNTER)
    a.wait_logs(name, lambda lines: len(lines) >= 3)
    report = migrate.migrate(name, "hostA", "hostB", mode="post-copy")
    assert report.mode == "post-copy" and report.postcopy_seconds is not None
    n = [int(x) for x in b.wait_logs(name, lambda lines: len(lines) >= 2)]
    assert n[0] >= 3 and n == list(range(n[0], n[0] + len(n))), n
    assert absent(a, name)


def test_auto_picks_pre_copy_where_it_can_else_stop_copy_and_says_what_each_host_supports(both):
    a, b = both
    name = a.run_detached("busybox", "sh", "-c", COUNTER)
    a.wait_logs(name, lambda lines: len(lines) >= 1)
    report = migrate.migrate(name, "hostA", "hostB")
    dirty = dirty_tracking()
    assert report.mode == ("pre-copy" if dirty else "stop-copy") and report.postcopy_seconds is None
    modes = ["stop-copy", "pre-copy", "post-copy"] if dirty else ["stop-copy", "post-copy"]
    assert report.modes == {"hostA": modes, "hostB": modes}


@pytest.mark.skipif(dirty_tracking(), reason="this kernel tracks dirty memory: pre-copy runs (test below)")
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


@pytest.mark.skipif(not dirty_tracking(), reason="pre-copy needs CONFIG_MEM_SOFT_DIRTY: refused here (test above)")
@pytest.mark.parametrize("data_path", ["direct", "relay"])
def test_pre_copy_sends_memory_in_iterations_then_freezes_for_the_rest(both, data_path):
    a, b = both
    mib = 128 if data_path == "direct" else 64   # relayed: through paramiko on this machine, slower
    name = run_memhog(a, mib)   # dirtying 10 MB/s
    # (the soft-dirty VM emulates its CPU: a migration takes minutes there)
    res = cmigrate("--json", "--mode", "pre-copy", "--data-path", data_path, "--precopy-min-pages", "4096",
                   name, "hostA", "hostB", timeout=1200)
    assert res.status == 0, res.err
    report = json.loads(res.out)
    assert report["mode"] == "pre-copy" and report["data_path"] == data_path
    its = report["precopy"]
    assert its[0]["pages"] >= mib * 256, "the first pre-dump carries all the memory"
    assert all(i["bytes"] > 0 and i["seconds"] > 0 for i in its)
    assert report["precopy_stop"] and len(its) <= 8
    assert report["wire_bytes"] >= sum(i["wire_bytes"] for i in its)
    assert running(b, name) and absent(a, name) and no_work_left()
    assert_memory_intact(b, name)   # pages from every pre-dump and the final dump, all intact
