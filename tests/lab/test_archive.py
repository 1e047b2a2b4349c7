"""Checkpoints that travel and a whole host at once (issue 20, items 1, 3 and 5): a checkpoint exported on hostA to a
file, copied, imported on hostB, restores there with the counter going on; inspect reads the file; a damaged file or
a missing image is refused before anything is made; checkpoint create --all and start --all carry every container
of a host across a restart of its dockerd and containerd."""
from __future__ import annotations

import json
import os
import shutil
import stat

from migrate import lab
from tests.lab.conftest import cmigrate, consecutive

# counts in its writable layer and in its volume, and holds a secret put together at run time
COUNTER = ('s=hunter; s="${s}2-$((6 * 7))"; echo kept > /layer.txt; i=0; '
           'while true; do echo $i; echo $i > /data/last; i=$(expr $i + 1); sleep 0.5; done')


def _volume_gone(d, volume: str) -> bool:
    return d("volume", "inspect", volume, check=False).status != 0


def _counter(d, volume: str, *extra: str, image: str = "busybox") -> str:
    name = d.run_detached("-v", f"{volume}:/data", *extra, image, "sh", "-c", COUNTER)
    d.wait_logs(name, lambda lines: len(lines) >= 3)
    return name


def test_an_exported_checkpoint_restores_on_the_other_host(docker_a, docker_b, tmp_path):
    a, b = docker_a, docker_b
    volume = f"v-{os.urandom(4).hex()}"
    try:
        name = _counter(a, volume)
        a("exec", name, "sh", "-c", "echo planted > /data/planted; chmod 640 /data/planted")
        assert cmigrate("-H", "hostA", "checkpoint", "create", name, "cp1").status == 0
        frozen = a.logs(name)
        exported = tmp_path / "cp1.ckpt"
        res = cmigrate("-H", "hostA", "checkpoint", "export", name, "cp1", "-o", str(exported))
        assert res.status == 0, res.err
        assert f"to {exported}" in res.out and stat.S_IMODE(exported.stat().st_mode) == 0o600
        copied = tmp_path / "elsewhere" / "cp1.ckpt"
        copied.parent.mkdir()
        shutil.copy(exported, copied)
        b.made.append(name)
        res = cmigrate("-H", "hostB", "checkpoint", "import", str(copied))
        assert res.status == 0, res.err
        assert b.state(name) == "created" and "start it with cmigrate start --checkpoint cp1" in res.out
        assert "cp1" in cmigrate("-H", "hostB", "checkpoint", "ls", name).out.split()
        res = cmigrate("-H", "hostB", "start", "--checkpoint", "cp1", name)
        assert res.status == 0, res.err
        after = b.wait_logs(name, lambda lines: len(lines) >= len(frozen) + 2)
        assert consecutive(frozen + after), (frozen, after)   # on from where hostA stopped, not from 0
        assert b("exec", name, "cat", "/layer.txt").out == "kept\n"
        assert b("exec", name, "cat", "/data/planted").out == "planted\n"   # the volume's data came too
        assert b("exec", name, "stat", "-c", "%a", "/data/planted").out.strip() == "640"
        assert a.state(name) == "exited", "the exporting host's container was touched"
    finally:
        for d in (a, b):
            d("rm", "-f", name, check=False)
            d("volume", "rm", "-f", volume, check=False)


def test_inspect_reads_an_exported_file_and_finds_a_secret(docker_a, tmp_path):
    volume = f"v-{os.urandom(4).hex()}"
    try:
        name = _counter(docker_a, volume)
        assert cmigrate("-H", "hostA", "checkpoint", "create", "--leave-running", name, "c1").status == 0
        exported = tmp_path / "c1.ckpt"
        assert cmigrate("-H", "hostA", "checkpoint", "export", name, "c1", "-o", str(exported)).status == 0
        res = cmigrate("checkpoint", "inspect", "--format", "json", "--search", "hunter2-42", "--file", str(exported))
        assert res.status == 0, res.err
        report = json.loads(res.out)
        assert report["container"] == name and report["exported"]["host"] == "hostA"
        procs = {p["pid"]: p for p in report["processes"]}
        assert procs[1]["cmdline"][:2] == ["sh", "-c"]
        assert any(f["what"].startswith("/data/") or f["what"] == "/dev/null" for f in procs[1]["files"]), procs[1]
        assert "/layer.txt" in report["layer"]["changed"]
        assert {m["pid"] for m in report["search"]["found"]} == {1}
    finally:
        docker_a("rm", "-f", name, check=False)
        docker_a("volume", "rm", "-f", volume, check=False)


def test_a_damaged_file_is_refused_and_nothing_is_made(docker_a, docker_b, tmp_path):
    volume = f"v-{os.urandom(4).hex()}"
    try:
        name = _counter(docker_a, volume)
        # 2 MiB that zstd cannot shrink, in the volume (after the checkpoint's files): many blocks of the file
        docker_a("exec", name, "sh", "-c", "head -c 2097152 /dev/urandom > /data/blob")
        assert cmigrate("-H", "hostA", "checkpoint", "create", name, "cp1").status == 0
        exported = tmp_path / "cp1.ckpt"
        assert cmigrate("-H", "hostA", "checkpoint", "export", name, "cp1", "-o", str(exported)).status == 0
        good = exported.read_bytes()
        docker_b.made.append(name)
        # damaged past its manifest: hostB finds out as it arrives; at its beginning: this machine, at once
        for offset, where, said in ((len(good) * 3 // 4, "hostB: ", ("failed verification", "damaged")),
                                    (100, "", ("damaged at its beginning",))):
            data = bytearray(good)
            data[offset] ^= 0xFF
            exported.write_bytes(bytes(data))
            res = cmigrate("-H", "hostB", "checkpoint", "import", str(exported))
            assert res.status == 1 and len(res.err.strip().splitlines()) == 1, res.err
            assert res.err.startswith(f"cmigrate: error: {where}") and any(s in res.err for s in said), res.err
            assert docker_b("inspect", name, check=False).status != 0, "a container was made from a damaged file"
            assert _volume_gone(docker_b, volume)
        again = cmigrate("-H", "hostA", "checkpoint", "export", name, "cp1", "-o", str(exported))
        assert again.status == 1 and "already exists" in again.err
    finally:
        for d in (docker_a, docker_b):
            d("rm", "-f", name, check=False)
            d("volume", "rm", "-f", volume, check=False)


def test_an_image_the_host_lacks_comes_only_with_the_file(docker_a, docker_b, tmp_path):
    a, b = docker_a, docker_b
    image = f"cmigrate-test/baked:{os.urandom(3).hex()}"
    volume = f"v-{os.urandom(4).hex()}"
    base = a.run_detached("busybox", "sh", "-c", "echo baked > /baked")
    a("wait", base)
    a("commit", base, image)
    try:
        name = _counter(a, volume, image=image)
        assert cmigrate("-H", "hostA", "checkpoint", "create", name, "cp1").status == 0
        bare, full = tmp_path / "bare.ckpt", tmp_path / "full.ckpt"
        assert cmigrate("-H", "hostA", "checkpoint", "export", name, "cp1", "-o", str(bare)).status == 0
        res = cmigrate("-H", "hostA", "checkpoint", "export", "--with-image", name, "cp1", "-o", str(full))
        assert res.status == 0 and "with its image" in res.out, res.err
        b.made.append(name)
        res = cmigrate("-H", "hostB", "checkpoint", "import", str(bare))
        assert res.status == 1 and f"image {image} is not on this host" in res.err and "--with-image" in res.err
        assert b("inspect", name, check=False).status != 0
        res = cmigrate("-H", "hostB", "checkpoint", "import", "--start", str(full))
        assert res.status == 0 and "image loaded" in res.out and ": running" in res.out, res.err
        assert b("exec", name, "cat", "/baked").out == "baked\n"
        assert int(b.wait_logs(name, lambda lines: len(lines) >= 1)[0]) > 0
    finally:
        for d in (a, b):
            d("rm", "-f", name, check=False)
            d("volume", "rm", "-f", volume, check=False)
            d("rmi", "-f", image, check=False)


def test_a_whole_host_goes_on_after_its_daemons_restart(docker_a):
    a = docker_a
    names = [a.run_detached("busybox", "sh", "-c", COUNTER.replace("/data/last", "/tmp/last")),
             a.run_detached("--restart", "always", "busybox", "sh", "-c", COUNTER.replace("/data/last", "/tmp/last")),
             a.run_detached("busybox", "sh", "-c", COUNTER.replace("/data/last", "/tmp/last"))]
    for n in names:
        a.wait_logs(n, lambda lines: len(lines) >= 3)
    res = cmigrate("-H", "hostA", "--json", "checkpoint", "create", "--all", "boot")
    assert res.status == 0, res.err
    done = {o["container"]: o for o in json.loads(res.out)}
    assert all(done[n]["ok"] for n in names), done
    frozen = {n: a.logs(n) for n in names}
    assert all(a.state(n) == "exited" for n in names)
    # one whose images went bad: reported, and the others restore all the same
    broken = lab.host("hostA").data_root / "containers" / a("inspect", "-f", "{{.Id}}", names[2]).out.strip() \
        / "checkpoints" / "boot" / "pstree.img"
    broken.write_bytes(b"not an image")
    lab.restart_dockerd("hostA")   # the reboot, as far as the lab can show it: dockerd and its containerd
    assert a.state(names[1]) == "exited", "the restarted daemon started the always-container afresh"
    res = cmigrate("-H", "hostA", "start", "--checkpoint", "boot", "--all")
    assert res.status == 1, res.err
    lines = dict(line.split(": ", 1) for line in res.out.strip().splitlines() if ": " in line)
    assert lines[names[0]] == "running" and lines[names[1]] == "running", res.out
    assert lines[names[2]].startswith("failed: ") and "1 of 3 failed" in res.out, res.out
    for n in names[:2]:   # the same containers: their logs go on from before the checkpoint
        after = a.wait_logs(n, lambda lines: len(lines) >= len(frozen[n]) + 2)
        assert after[:len(frozen[n])] == frozen[n] and consecutive(after), (n, frozen[n], after)
    assert a("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", names[1]).out.strip() == "always"
    assert a.state(names[2]) == "exited"


def test_an_oci_image_of_a_checkpoint_loads_into_docker_and_imports(docker_a, docker_b, tmp_path):
    a, b = docker_a, docker_b
    volume = f"v-{os.urandom(4).hex()}"
    ref = f"checkpoints/oci-{os.urandom(3).hex()}:cp1"
    try:
        name = _counter(a, volume)
        assert cmigrate("-H", "hostA", "checkpoint", "create", name, "cp1").status == 0
        frozen = a.logs(name)
        image = tmp_path / "cp1.oci.tar"
        res = cmigrate("-H", "hostA", "checkpoint", "export", "--oci", "--tag", ref, name, "cp1", "-o", str(image))
        assert res.status == 0 and f"as OCI image {ref}" in res.out, res.err
        loaded = b("load", input=image.read_bytes())
        assert ref in loaded.out, loaded.out
        labels = json.loads(b("image", "inspect", "-f", "{{json .Config.Labels}}", ref).out)
        assert labels["org.criu.checkpoint.container.name"] == name
        assert labels["org.criu.checkpoint.engine.name"] == "cmigrate"
        assert labels["org.criu.checkpoint.rootfsImageName"] == "busybox"
        assert labels["org.criu.checkpoint.criu.version"].startswith("4.")
        b.made.append(name)
        res = cmigrate("-H", "hostB", "checkpoint", "import", "--start", str(image))
        assert res.status == 0 and ": running" in res.out, res.err
        after = b.wait_logs(name, lambda lines: len(lines) >= 2)
        assert consecutive(frozen + after), (frozen, after)
    finally:
        for d in (a, b):
            d("rm", "-f", name, check=False)
            d("volume", "rm", "-f", volume, check=False)
        b("rmi", "-f", ref, check=False)
