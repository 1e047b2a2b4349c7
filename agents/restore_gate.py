"""The cmigrate-runc wrapper's part before runc, for a restore Docker began before its images arrived.

Run by the wrapper as ``python3 -I -S restore_gate.py MAP BUNDLE`` (the system's Python, standard library only:
it runs inside containerd's shim, not in cmigrate's environment). Exit 0 lets runc restore; anything else refuses
the restore, and the message goes to Docker's error.

1. With a ``MAP.netns`` marker (the source dumped the container's network namespace as external, ``--external
   net[..]:extRootNetNS``), the network namespace is made *now*, while the source is still being dumped, instead
   of inside the frozen time: a placeholder process enters a new namespace, the bundle's prestart hooks (Docker's
   ``libnetwork-setkey``: dockerd moves the endpoint in and configures it, ~0.1 s here) run against it, and the
   bundle's config.json then names the namespace (dockerd's bind mount of it) and has no prestart hooks left:
   runc hands it to CRIU as the external namespace (``--inherit-fd fd[..]:extRootNetNS``) and runs no hook.
   With a ``MAP.lock`` (nft rules: ``--keep-ip``), the new namespace is locked with them *before* the hooks move
   the endpoint in, so that it never answers for the address the frozen source still holds; the destination agent
   unlocks it once the restored container runs (agents/netlock.py).
2. The gate: wait at the destination agent's socket ``MAP.gate`` until it says "go" (images verified); end of
   file, or no agent, refuses.
"""
import ctypes
import json
import os
import socket
import subprocess
import sys

CLONE_NEWNET = 0x40000000


def fail(msg: str) -> None:
    sys.stderr.write(f"cmigrate-runc: {msg}\n")
    sys.stderr.flush()
    os._exit(1)


def placeholder() -> tuple[int, int]:
    """A child in a new network namespace, alive until the returned fd is closed. Returns (pid, fd)."""
    hold_r, hold_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(hold_w)
        os.close(ready_r)
        ok = ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) == 0
        os.write(ready_w, b"1" if ok else b"0")
        os.read(hold_r, 1)
        os._exit(0)
    os.close(hold_r)
    os.close(ready_w)
    ok = os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    if not ok:
        fail("cannot create a network namespace for the restore")
    return pid, hold_w


def nsfs_mount(ino: int) -> str | None:
    """Where the network namespace ``ino`` is bind-mounted (dockerd's sandbox key), if anywhere."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[3] == f"net:[{ino}]":
                return fields[4].replace("\\040", " ")
    return None


def lock(pid: int, rules_file: str) -> None:
    with open(rules_file) as f:
        res = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", "nft", "-f", "-"], stdin=f,
                             capture_output=True, timeout=30)
    if res.returncode != 0:
        fail(f"cannot lock the restore's network namespace: {res.stderr.decode(errors='replace').strip()[-300:]}")


def prepare_netns(cid: str, bundle: str, rules_file: str | None = None) -> None:
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        spec = json.load(f)
    netns = [ns for ns in spec.get("linux", {}).get("namespaces", []) if ns.get("type") == "network"]
    if not netns or netns[0].get("path"):
        fail("the container has no network namespace of its own, but the source dumped one as external")
    hooks = (spec.get("hooks") or {}).get("prestart") or []
    pid, hold = placeholder()
    try:
        if rules_file is not None:
            lock(pid, rules_file)
        state = json.dumps({"ociVersion": spec.get("ociVersion", "1.0.2"), "id": cid, "status": "created",
                            "pid": pid, "bundle": bundle, "annotations": spec.get("annotations") or {}})
        for hook in hooks:
            try:
                res = subprocess.run(hook["args"] if hook.get("args") else [hook["path"]],
                                     executable=hook["path"], input=state.encode(), capture_output=True,
                                     env=None if hook.get("env") is None else dict(
                                         e.split("=", 1) for e in hook["env"] if "=" in e),
                                     timeout=hook.get("timeout") or 60)
            except (OSError, subprocess.TimeoutExpired) as exc:
                fail(f"prestart hook {hook['path']} failed: {exc}")
            if res.returncode != 0:
                fail(f"prestart hook {hook['path']} failed: {res.stderr.decode(errors='replace').strip()[-300:]}")
        ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        where = nsfs_mount(ino)
        if where is None:
            fail("the prestart hooks left the restore's network namespace unmounted")
        netns[0]["path"] = where
        spec.setdefault("hooks", {}).pop("prestart", None)
        if not spec["hooks"]:
            del spec["hooks"]
        tmp = path + ".cmigrate"
        with open(tmp, "w") as f:
            json.dump(spec, f)
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    finally:
        os.close(hold)
        os.waitpid(pid, 0)


def gate(sock_path: str) -> None:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sock_path)
        word = s.makefile("rb").readline()
    except OSError:
        word = b""
    if word != b"go\n":
        fail("restore cancelled: its checkpoint did not arrive complete")


def main() -> None:
    mapping, bundle = sys.argv[1], sys.argv[2]
    if os.path.exists(mapping + ".netns"):
        prepare_netns(os.path.basename(mapping), bundle,
                      mapping + ".lock" if os.path.exists(mapping + ".lock") else None)
    if os.path.exists(mapping + ".gate"):
        gate(mapping + ".gate")
    sys.stdout.flush()
    os._exit(0)   # at once: the container is frozen until runc restores it


if __name__ == "__main__":
    main()
