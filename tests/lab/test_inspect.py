"""cmigrate checkpoint inspect and diff on a real container's checkpoints (issue 20, items 3 and 4): what a
checkpoint holds as a user would look for it, and a secret found in its memory."""
from __future__ import annotations

import json

from tests.lab.conftest import cmigrate

# the secret is put together at run time, so that only the shell's memory holds it, not its command line
SERVER = ('s=hunter; s="${s}2-$((6 * 7))"; echo changed > /etc/motd; rm /etc/group; '
          'mkfifo /tmp/f; httpd -f -p 8080 -h /var/www & echo ready; while :; do read x < /tmp/f; done')


def test_inspect_shows_processes_sockets_layer_and_finds_a_secret(docker_a):
    name = docker_a.run_detached("busybox", "sh", "-c", SERVER)
    docker_a.wait_logs(name, lambda lines: "ready" in lines)
    assert cmigrate("-H", "hostA", "checkpoint", "create", "--leave-running", name, "c1").status == 0
    res = cmigrate("-H", "hostA", "checkpoint", "inspect", "--format", "json", "--search", "hunter2-42", name, "c1")
    assert res.status == 0, res.err
    report = json.loads(res.out)
    procs = {p["pid"]: p for p in report["processes"]}
    assert procs[1]["cmdline"][:2] == ["sh", "-c"] and procs[1]["state"] == "alive"
    httpd = [p for p in procs.values() if p["cmdline"][:1] == ["httpd"]]
    assert len(httpd) == 1 and httpd[0]["ppid"] == 1
    assert "tcp listening on [::]:8080" in {f["what"] for f in httpd[0]["files"]}
    assert "/etc/motd" in report["layer"]["changed"] and "/etc/group" in report["layer"]["deleted"]
    assert any(m["mountpoint"] == "/etc/hosts" for m in report["mounts"])
    assert set(report["namespaces"]) >= {"pid", "net", "mnt"} and report["meta"]["container"] == name
    found = report["search"]["found"]
    assert found and {m["pid"] for m in found} == {1}, found   # the shell holds it, nobody else
    text = cmigrate("-H", "hostA", "checkpoint", "inspect", "--search", "hunter2-42", name, "c1")
    assert text.status == 0 and "processes (" in text.out and "search 'hunter2-42': " in text.out


def test_diff_says_what_changed_between_two_checkpoints(docker_a):
    name = docker_a.run_detached("busybox", "sh", "-c", SERVER)
    docker_a.wait_logs(name, lambda lines: "ready" in lines)
    assert cmigrate("-H", "hostA", "checkpoint", "create", "--leave-running", name, "before").status == 0
    docker_a("exec", name, "sh", "-c", "echo new > /new.txt; echo again >> /etc/motd; killall httpd; "
             "(sleep 999 &)")
    assert cmigrate("-H", "hostA", "checkpoint", "create", "--leave-running", name, "after").status == 0
    res = cmigrate("-H", "hostA", "checkpoint", "diff", "--json", name, "before", "after")
    assert res.status == 0, res.err
    d = json.loads(res.out)
    assert [p["name"] for p in d["processes_removed"]] == ["httpd"] and d["processes_changed"] == []
    assert [p["cmdline"] for p in d["processes_added"]] == [["sleep", "999"]]
    assert d["files_added"] == ["/new.txt"] and d["files_changed"] == ["/etc/motd"] and d["files_removed"] == []
