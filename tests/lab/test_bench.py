"""The benchmark harness at its smallest size: it runs, writes its CSV with the right columns, and a plot.
(No timing assertions: numbers are for people, not for CI.)"""
from __future__ import annotations

import csv

from migrate import bench


def test_smallest_benchmark_writes_csv_summary_and_plot(the_lab, tmp_path):
    trials = bench.run([64], [0], 1, tmp_path, say=lambda s: None)
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "workload", "memory_mib", "dirty_mbps", "method", "repeat", "downtime_s", "reported_downtime_s", "total_s",
        "wire_bytes", "cli_peak_rss_kib", "src_agent_peak_rss_kib", "dst_agent_peak_rss_kib", "ok", "note",
        "postcopy_s", "phases", "client_stall_s", "link"]
    assert {r["link"] for r in rows} == {""}   # the lab's link as it is
    assert {(r["workload"], r["method"]) for r in rows} == {
        (w, m) for w in ("counter", "memhog", "memhog-text") for m in bench.MIGRATIONS}
    assert set(bench.METHODS) >= {"cmigrate", "postcopy", "keepip", "keepip-postcopy", "naive", "raw"}
    assert all(t.ok for t in trials), [t.note for t in trials if not t.ok]
    assert all(float(r["downtime_s"]) > 0 for r in rows if r["method"] != "raw")
    assert all(float(r["postcopy_s"]) > 0 for r in rows if r["method"] == "postcopy")
    # the connected client's view, where there is one: a stall, and none where no client was connected
    assert all(float(r["client_stall_s"]) > 0 for r in rows if r["method"].startswith("keepip"))
    assert all(r["client_stall_s"] == "" for r in rows if not r["method"].startswith("keepip"))
    assert all("dump=" in r["phases"] and "restore=" in r["phases"] for r in rows if r["method"] == "cmigrate")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cmigrate/naive" in (tmp_path / "summary.md").read_text()
    assert "TCP client's longest stall" in (tmp_path / "summary.md").read_text()


def test_clone_and_cold_start_of_a_warm_server_are_timed_to_serving(the_lab, tmp_path):
    trials = bench.run([], [], 1, tmp_path, methods=("clone", "cold"), counter=False, say=lambda s: None)
    assert sorted((t.workload, t.method) for t in trials) == [("warm-5s", "clone"), ("warm-5s", "cold")]
    assert all(t.ok for t in trials), [t.note for t in trials if not t.ok]
    cold = next(t for t in trials if t.method == "cold")
    assert cold.total_s >= 5.0, cold   # it warms for 5 s before it serves: less would be a poll that lied
    assert "clone/cold" in (tmp_path / "summary.md").read_text()
