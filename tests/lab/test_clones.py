"""cmigrate start --checkpoint NAME --name NEW: new containers started from one warm checkpoint (issue 20, item 2),
each with its own name and address, going on from the checkpoint's instant, the original left running."""
from __future__ import annotations

from tests.lab.conftest import cmigrate
from tests.lab.test_migrate import running

WARM = ("echo warmed > /state; httpd -f -p 8080 -h /var/www & "
        "i=0; while true; do echo $i; i=$((i+1)); sleep 0.5; done")


def _address(d, name: str) -> str:
    return d("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name).out.strip()


def test_clones_start_from_one_checkpoint_each_with_its_own_name_and_address(docker_a):
    a = docker_a
    name = a.run_detached("busybox", "sh", "-c", WARM)
    a.wait_logs(name, lambda lines: len(lines) >= 4)
    assert cmigrate("-H", "hostA", "checkpoint", "create", "--leave-running", name, "warm").status == 0
    at = int(a.logs(name)[-1])
    clones = [f"{name}-c{i}" for i in (1, 2, 3)]
    for c in clones:
        a.made.append(c)
        res = cmigrate("-H", "hostA", "start", "--checkpoint", "warm", "--name", c, name)
        assert res.status == 0, res.err
        assert res.out.strip() == c
    assert running(a, name), "the original stopped"
    addresses = {_address(a, n) for n in [name, *clones]}
    assert len(addresses) == 4 and "" not in addresses, addresses
    assert all(running(a, c) for c in clones), "the clones do not run side by side"
    for c in clones:
        first = int(a.wait_logs(c, lambda lines: len(lines) >= 2)[0])
        assert at - 2 <= first <= at + 2, (at, first)   # from the checkpoint's instant, not from 0
        assert a("exec", c, "cat", "/state").out == "warmed\n"
        assert a("exec", c, "wget", "-qO-", "http://127.0.0.1:8080/").out == "hello from cmigrate's lab\n"
    res = cmigrate("-H", "hostA", "start", "--checkpoint", "warm", "--name", clones[0], name)
    assert res.status != 0 and f"a container named {clones[0]} already exists" in res.err
