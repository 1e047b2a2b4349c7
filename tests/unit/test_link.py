"""The direct data link's destination end: a unix socket that takes only the stream opening with its token."""
from __future__ import annotations

import os
import socket
import stat
import threading

import pytest

from agents import link
from migrate.errors import TransportError


def _connect_and_send(path, data: bytes) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    s.sendall(data)
    s.close()


def test_the_right_token_opens_the_stream(tmp_path):
    listener = link.Listener(tmp_path)
    assert stat.S_IMODE(os.stat(listener.path).st_mode) & 0o077 == 0, "the socket must be for root only"
    greeting = link.MAGIC + listener.token.encode() + b"\n"
    threading.Thread(target=_connect_and_send, args=(listener.path, greeting + b"payload")).start()
    reader = listener.accept(timeout=5)
    data = b""
    while chunk := reader.read(100):
        data += chunk
    reader.close()
    assert data == b"payload"
    assert not listener.path.exists(), "the socket is gone once the source is connected"


def test_a_wrong_token_is_refused(tmp_path):
    listener = link.Listener(tmp_path)
    bad = link.MAGIC + b"0" * (2 * link.TOKEN_BYTES) + b"\n"
    threading.Thread(target=_connect_and_send, args=(listener.path, bad + b"payload")).start()
    with pytest.raises(TransportError, match="without the right token"):
        listener.accept(timeout=5)


def test_nobody_connecting_times_out(tmp_path):
    listener = link.Listener(tmp_path)
    with pytest.raises(TransportError, match="did not connect within"):
        listener.accept(timeout=0.2)
    assert not listener.path.exists()


def test_splice_moves_everything_from_a_socket_into_a_pipe():
    a, b = socket.socketpair()
    r, w = os.pipe()
    payload = os.urandom(3 << 20)
    out = bytearray()

    def drain():
        while chunk := os.read(r, 1 << 16):
            out.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    sender = threading.Thread(target=lambda: (a.sendall(payload), a.close()))
    sender.start()
    moved = link._splice_all(b.fileno(), w)
    os.close(w)
    sender.join()
    reader.join()
    os.close(r)
    b.close()
    assert moved == len(payload) and bytes(out) == payload


def test_ssh_argv_quotes_the_remote_command_and_never_prompts(monkeypatch):
    monkeypatch.setenv("CMIGRATE_SSH_CONFIG", "/etc/lab config")
    argv = link.ssh_argv("hostB", ["cmigrate-agent", "attach", "/x y/link.sock"], 30)
    assert argv[0] == "ssh" and "BatchMode=yes" in argv
    assert argv[argv.index("-F") + 1] == "/etc/lab config"
    assert argv[-2:] == ["hostB", "cmigrate-agent attach '/x y/link.sock'"]


def test_a_failed_connect_leaks_no_pipe(tmp_path, monkeypatch):
    # ssh that fails at once, without touching any network: its ProxyCommand exits
    config = tmp_path / "ssh_config"
    config.write_text("Host nowhere\n    ProxyCommand false\n")
    monkeypatch.setenv("CMIGRATE_SSH_CONFIG", str(config))
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(TransportError):
            link.Link("nowhere", "/nonexistent.sock", "0" * 32, "cmigrate-agent", io_timeout=5)
    assert set(os.listdir("/proc/self/fd")) - before == set()


def test_attach_reaches_only_a_migrations_link_socket(tmp_path):
    root = tmp_path / "work"
    mig = root / "0123abcd-dst"
    mig.mkdir(parents=True)
    good = link.Listener(mig)
    assert link.attachable(str(good.path), root) is None
    pages = link.Listener(mig, "pages.sock")
    assert link.attachable(str(pages.path), root) is None
    docker_sock = tmp_path / "docker.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(docker_sock))
    assert link.attachable(str(docker_sock), root) == "not a migration's link socket"
    assert link.attachable("/var/run/docker.sock", root) == "not a migration's link socket"
    assert link.attachable(str(mig / ".." / "0123abcd-dst" / "link.sock"), root) is not None
    other = tmp_path / "elsewhere" / "0123abcd-dst"
    other.mkdir(parents=True)
    elsewhere = link.Listener(other)
    assert link.attachable(str(elsewhere.path), root) == "not in this host's migration work root"
    elsewhere.close()
    sneaky = root / "ffff-dst"
    sneaky.symlink_to(tmp_path)   # .../ffff-dst/docker.sock is not named like ours, but a link.sock behind it
    (tmp_path / "link.sock").symlink_to(docker_sock)
    assert link.attachable(str(sneaky / "link.sock"), root) is not None
    assert link.attach("/var/run/docker.sock", root) == 1
    for x in (good, pages, s):
        x.close()


def test_the_direct_link_goes_to_the_address_and_key_the_cli_verified(tmp_path, monkeypatch):
    monkeypatch.setattr(link, "PINS", tmp_path / "pins")
    pin = {"address": "198.18.0.12", "port": 2222, "key_type": "ssh-ed25519", "key": "AAAAC3NzaC1lZDI1NTE5AAAAI" + "A" * 43}
    known = link.pin_file(pin, "m1")
    assert known.read_text() == f"{link.PIN_ALIAS} ssh-ed25519 {pin['key']}\n"
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    argv = link.ssh_argv("hostB", ["cmigrate-agent", "attach", "/x"], 30, pin, known)
    opts = [argv[i + 1] for i, w in enumerate(argv) if w == "-o"]
    for expected in ("HostName=198.18.0.12", "Port=2222", f"HostKeyAlias={link.PIN_ALIAS}",
                     f"UserKnownHostsFile={known}", "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=yes"):
        assert expected in opts
    assert argv[-2] == "hostB"
    with pytest.raises(TransportError, match="malformed"):
        link.pin_file(pin | {"key": "AAAA\nhostX ssh-rsa BBBB"}, "m2")
    stale = tmp_path / "pins" / "999999999-0123"   # an agent that died without removing its own
    stale.write_text("x")
    mine = link.pin_file(pin, f"{os.getpid()}-m3")
    assert not stale.exists() and mine.exists() and known.exists()


def _attach_pages(tmp_path, stream: bytes) -> tuple[bytes, int, str]:
    """``cmigrate-agent attach SOCK --pages`` as sshd runs it (its stdin a pipe), fed ``stream`` after the
    greeting: what the destination agent reads, attach's exit status and its stderr."""
    import subprocess
    import sys
    root = tmp_path / "work"
    (root / "0123abcd-dst").mkdir(parents=True)
    os.chmod(root, 0o700)
    listener = link.Listener(root / "0123abcd-dst")
    proc = subprocess.Popen([sys.executable, "-m", "agents.main", "attach", str(listener.path), "--pages"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "CMIGRATE_WORK_ROOT": str(root)})
    assert proc.stdout.readline() == b"attached\n"
    greeting = link.MAGIC + listener.token.encode() + b"\n"
    writer = threading.Thread(target=lambda: (proc.stdin.write(greeting + stream), proc.stdin.close()))
    writer.start()
    reader = listener.accept(timeout=10)
    got = b""
    try:
        while chunk := reader.read(1 << 16):
            got += chunk
    except TransportError:   # a reset: the page server fails at once
        got += b"<reset>"
    reader.close()
    writer.join()
    err = proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    return got, proc.wait(timeout=10), err


def test_attach_decodes_the_framed_pages_then_passes_the_rest(tmp_path):
    """The agent gets what an unframed stream carries: CRIU's protocol, then the files' frames untouched."""
    import zstandard
    from transport import pagecodec
    text = b"customer=42;order=7;" * 10000
    packed = zstandard.ZstdCompressor(level=1).compress(text)
    stream = (pagecodec.HEADER.pack(pagecodec.RAW, 5) + b"hello" + pagecodec.HEADER.pack(pagecodec.ZSTD, len(packed))
              + packed + pagecodec.HEADER.pack(pagecodec.END, 0) + b"FILE FRAMES")
    got, status, err = _attach_pages(tmp_path, stream)
    assert status == 0, err
    assert got == b"hello" + text + b"FILE FRAMES"


def test_attach_resets_the_agent_s_socket_on_corrupt_pages(tmp_path):
    from transport import pagecodec
    got, status, err = _attach_pages(tmp_path, pagecodec.HEADER.pack(pagecodec.ZSTD, 10) + b"not zstd!!" + b"x" * 100)
    assert status == 1 and "the memory pages arrived corrupt" in err, err
    assert got.endswith(b"<reset>") or got == b"", got
