"""The lab itself: hosts reachable with host keys enforced, dockerd and CRIU working on each."""
from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from migrate import lab
from migrate.errors import HostKeyError
from transport.ssh import SSHHost

from tests.lab.conftest import COUNTER, consecutive


def openssh(config, host, *argv):
    return subprocess.run(["ssh", "-F", str(config), host, *argv], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("name", ["hostA", "hostB"])
def test_host_answers_over_ssh_with_host_key_checking(the_lab, name):
    res = openssh(lab.SSH_CONFIG, name, "echo", "$CMIGRATE_HOST", "$DOCKER_HOST")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [name, lab.host(name).docker_url]
    with SSHHost(name, str(lab.SSH_CONFIG)) as h:
        assert h.run(["sh", "-c", "echo $CMIGRATE_HOST"]).out.strip() == name


def _config_with_known_hosts(tmp_path, known_hosts_text):
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_text)
    config = tmp_path / "ssh_config"
    config.write_text(lab.SSH_CONFIG.read_text().replace(str(lab.KNOWN_HOSTS), str(known)))
    return config


def test_wrong_host_key_is_refused(the_lab, tmp_path):
    # hostA's address recorded with hostB's key: what a man in the middle would look like.
    lines = lab.KNOWN_HOSTS.read_text().splitlines()
    key_b = next(ln for ln in lines if ln.startswith("hostB,")).split(None, 1)[1]
    config = _config_with_known_hosts(tmp_path, f"hostA,{lab.host('hostA').address} {key_b}\n")
    res = openssh(config, "hostA", "true")
    assert res.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in res.stderr
    with pytest.raises(HostKeyError, match="does not match known_hosts") as err:
        SSHHost("hostA", str(config)).run(["true"])
    assert err.value.host == "hostA"


def test_unknown_host_key_is_refused_with_its_fingerprint(the_lab, tmp_path):
    config = _config_with_known_hosts(tmp_path, "")
    res = openssh(config, "hostB", "true")
    assert res.returncode == 255
    assert "Host key verification failed" in res.stderr
    with pytest.raises(HostKeyError) as err:
        SSHHost("hostB", str(config)).run(["true"])
    fp = subprocess.run(["ssh-keygen", "-l", "-f", str(lab.host("hostB").state / "ssh_host_ed25519_key.pub")],
                        capture_output=True, text=True, check=True).stdout.split()[1]
    assert fp in err.value.message
    assert "ssh-keyscan" in err.value.hint


def test_each_dockerd_runs_a_container_from_the_test_image(docker_a, docker_b):
    for d in (docker_a, docker_b):
        out = d("run", "--rm", "busybox", "sh", "-c", "echo hello from $(hostname -s) && ls /bin/busybox").out
        assert "hello from" in out and "/bin/busybox" in out
        assert d("info", "--format", "{{.ExperimentalBuild}}").out.strip() == "true"


def test_seed_counter_stops_while_checkpointed_and_resumes(docker_a):
    # The seed document's example, verbatim but for the container name.
    name = docker_a.run_detached("--security-opt=seccomp:unconfined", "busybox", "/bin/sh", "-c", COUNTER)
    docker_a.wait_logs(name, lambda lines: len(lines) >= 3)
    docker_a("checkpoint", "create", name, "checkpoint1")
    assert docker_a("inspect", "-f", "{{.State.Running}}", name).out.strip() == "false"
    frozen = docker_a.logs(name)
    time.sleep(2.5)
    assert docker_a.logs(name) == frozen, "the counter went on while checkpointed"
    docker_a("start", "--checkpoint", "checkpoint1", name)
    after = docker_a.wait_logs(name, lambda lines: len(lines) >= len(frozen) + 2)
    assert consecutive(after), f"counter reset or skipped: {after}"


def test_tcp_listener_checkpoints_restores_and_still_answers(docker_a):
    h = lab.host("hostA")
    name = docker_a.run_detached("-p", "8080:80", "busybox", "httpd", "-f", "-p", "80", "-h", "/var/www")
    url = f"http://{h.address}:8080/"

    def get() -> str:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return resp.read().decode()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    assert "cmigrate" in get()
    docker_a("checkpoint", "create", name, "listening")
    docker_a("start", "--checkpoint", "listening", name)
    assert "cmigrate" in get()
    # The restored process is the same httpd: CRIU restored its listening socket, it was not restarted.
    assert docker_a("inspect", "-f", "{{.State.Running}}", name).out.strip() == "true"


def test_proxy_jump_reaches_a_host_through_another(the_lab, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(lab.SSH_CONFIG.read_text() + f"""
Host viaA
    HostName {lab.host('hostB').address}
    User root
    IdentityFile {lab.CLIENT_KEY}
    UserKnownHostsFile {lab.KNOWN_HOSTS}
    ProxyJump hostA
""")
    with SSHHost("viaA", str(config)) as h:
        assert h.run(["sh", "-c", "echo $CMIGRATE_HOST"]).out.strip() == "hostB"


def _connect_rtt(address: str) -> float:
    """The shortest of ten TCP handshakes from the lab's client to ``address`` (a connect returns after one round
    trip), in seconds."""
    times = []
    for _ in range(10):
        sock = lab.client_socket()
        try:
            t0 = time.perf_counter()
            sock.connect((address, 22))
            times.append(time.perf_counter() - t0)
        finally:
            sock.close()
    return min(times)


def test_a_shaped_link_delays_that_host_alone_and_unshaping_restores_it(the_lab):
    """bench --link 100mbit,1ms: netem where the kernel has it, else the lab's delay line (this kernel has no
    netem): 1 ms each way on hostB's link, a round trip of at least 2 ms, hostA's link untouched."""
    b, a = lab.host("hostB"), lab.host("hostA")
    assert _connect_rtt(b.address) < 0.001
    lab.shape_link("hostB", "100mbit", "1ms")
    try:
        assert _connect_rtt(b.address) >= 0.002
        assert _connect_rtt(a.address) < 0.001
        assert openssh(lab.SSH_CONFIG, "hostA", "ssh", "-F", str(lab.SSH_CONFIG), "hostB", "true").returncode == 0
    finally:
        lab.unshape_link("hostB")
    assert _connect_rtt(b.address) < 0.001
    assert f"master {lab.BRIDGE}" in subprocess.run(["ip", "-o", "link", "show", b.veth], capture_output=True,
                                                    text=True).stdout
    assert not Path(f"/run/netns/cmlab-dl-{b.name}").exists()
