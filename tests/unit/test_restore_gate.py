"""The wrapper's part before runc (agents/restore_gate.py), run as the wrapper runs it, with a real network
namespace and a prestart hook of our own in place of Docker's libnetwork-setkey (which binds the namespace to its
sandbox key just as this one does). The acceptance tests move containers with Docker's own hook."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GATE = Path(__file__).resolve().parents[2] / "agents" / "restore_gate.py"

HOOK = """
import json, subprocess, sys
state = json.load(sys.stdin)
target, seen = sys.argv[1], sys.argv[2]
open(seen, "w").write(json.dumps(state))
# what the namespace holds when Docker's hook would move the endpoint in: a lock, if one was asked for
tables = subprocess.run(["nsenter", f"--net=/proc/{state['pid']}/ns/net", "nft", "list", "tables"],
                        capture_output=True, text=True).stdout
open(seen + ".tables", "w").write(tables)
if sys.argv[3] == "fail":
    sys.exit("no endpoint for you")
subprocess.run(["mount", "--bind", f"/proc/{state['pid']}/ns/net", target], check=True)
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces and mounts: needs root")


@pytest.fixture
def bundle(tmp_path):
    key = tmp_path / "sandbox-key"   # where the hook binds the namespace, as dockerd binds its sandbox key
    key.touch()
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    (tmp_path / "maps").mkdir()
    made = tmp_path / "bundle"
    made.mkdir()
    yield made, key, hook
    subprocess.run(["umount", str(key)], capture_output=True)


def _spec(bundle: Path, key: Path, hook: Path, outcome: str = "ok") -> dict:
    spec = {"ociVersion": "1.0.2-dev", "process": {"args": ["sh"]},
            "hooks": {"prestart": [{"path": sys.executable,
                                    "args": ["libnetwork-setkey", str(hook), str(key), str(bundle / "seen"),
                                             outcome]}]},
            "linux": {"namespaces": [{"type": "mount"}, {"type": "network"}, {"type": "pid"}]}}
    (bundle / "config.json").write_text(json.dumps(spec))
    return spec


def _run(maps: Path, cid: str, bundle: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", "-I", "-S", str(GATE), str(maps / cid), str(bundle)],
                          capture_output=True, text=True, timeout=60)


def test_network_namespace_is_made_before_the_restore_and_named_to_runc(bundle, tmp_path):
    made, key, hook = bundle
    _spec(made, key, hook)
    maps = tmp_path / "maps"
    (maps / "c1.netns").write_text("external\n")
    res = _run(maps, "c1", made)
    assert res.returncode == 0, res.stderr
    spec = json.loads((made / "config.json").read_text())
    # runc now joins the namespace the hook configured, and runs no hook inside the frozen time
    assert "hooks" not in spec
    assert {"type": "network", "path": str(key)} in spec["linux"]["namespaces"]
    assert os.stat(key).st_ino != os.stat("/proc/self/ns/net").st_ino   # a namespace of its own, still there
    assert (made / "seen.tables").read_text().strip() == ""   # no lock asked for: open when the endpoint moves in
    state = json.loads((made / "seen").read_text())
    assert state["id"] == "c1" and state["bundle"] == str(made)


def test_a_failing_hook_refuses_the_restore_and_leaves_the_bundle_alone(bundle, tmp_path):
    made, key, hook = bundle
    spec = _spec(made, key, hook, outcome="fail")
    maps = tmp_path / "maps"
    (maps / "c2.netns").write_text("external\n")
    res = _run(maps, "c2", made)
    assert res.returncode != 0
    assert "no endpoint for you" in res.stderr
    assert json.loads((made / "config.json").read_text()) == spec


def test_without_the_marker_the_bundle_is_not_touched(bundle, tmp_path):
    made, key, hook = bundle
    spec = _spec(made, key, hook)
    res = _run(tmp_path / "maps", "c3", made)
    assert res.returncode == 0, res.stderr
    assert json.loads((made / "config.json").read_text()) == spec
    assert not (made / "seen").exists()


def test_the_gate_refuses_when_no_agent_listens(bundle, tmp_path):
    made, key, hook = bundle
    _spec(made, key, hook)
    maps = tmp_path / "maps"
    (maps / "c4.gate").touch()   # a socket's path with nobody behind it: the agent is gone
    res = _run(maps, "c4", made)
    assert res.returncode != 0
    assert "restore cancelled" in res.stderr


def test_with_a_lock_the_namespace_is_locked_before_the_endpoint_moves_in(bundle, tmp_path):
    from agents import netlock
    made, key, hook = bundle
    _spec(made, key, hook)
    maps = tmp_path / "maps"
    (maps / "c5.netns").write_text("external\n")
    (maps / "c5.lock").write_text(netlock.RULES)
    res = _run(maps, "c5", made)
    assert res.returncode == 0, res.stderr
    tables = (made / "seen.tables").read_text()
    assert f"table inet {netlock.TABLE}" in tables and f"table arp {netlock.TABLE}" in tables, tables
    assert netlock.locked(str(key))   # and it stays locked for the destination agent to open

