"""The direct data link: checkpoint files go from the source host to the destination host over their own SSH
connection, not through the machine running the CLI.

    source agent --stdin--> ssh DST cmigrate-agent attach SOCK --> unix socket SOCK --> destination agent

The destination agent listens on a unix socket in its migration's work dir (mode 0700: root only; no network
port is opened). The source agent starts OpenSSH with the user's own configuration, keys and known hosts on the
source host (``BatchMode``: no prompts; host keys checked as configured there), and the remote ``attach`` copies
its stdin into the socket. The stream opens with a one-time token the destination checks, then carries the same
frames as the relayed path. Everything is set up before the freeze; a source that cannot reach the destination
this way is found out then, and the CLI falls back to relaying.
"""
from __future__ import annotations

import errno
import hmac
import re
import os
import secrets
import select
import shlex
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from migrate.errors import TransportError
from transport import pagecodec

MAGIC = b"cmigrate-link "
TOKEN_BYTES = 16
GREETING_LEN = len(MAGIC) + 2 * TOKEN_BYTES + 1
SOCKET_NAME = "link.sock"
# AES-GCM first: with AES-NI it moves several times more bytes per core than chacha20 (measured here: 1 GiB in
# 1.85 s against 2.68 s); the rest is OpenSSH's own order
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"
CONNECT_TIMEOUT = 15.0
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031


# ---------------------------------------------------------------- destination side
class Listener:
    """A unix socket waiting for the source's stream, and the token that stream must open with."""

    def __init__(self, directory: Path, name: str = SOCKET_NAME) -> None:
        self.path = directory / name
        self.token = secrets.token_hex(TOKEN_BYTES)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        self.sock.listen(1)

    def accept(self, timeout: float | None) -> "SocketReader":
        """The source's connection, once it has shown the token; TransportError otherwise."""
        self.sock.settimeout(timeout)
        try:
            conn, _ = self.sock.accept()
        except socket.timeout as exc:
            raise TransportError(f"the source did not connect within {timeout:g} s") from exc
        finally:
            self.close()
        reader = SocketReader(conn, timeout)
        greeting = b""
        try:
            while len(greeting) < GREETING_LEN:
                chunk = reader.read(GREETING_LEN - len(greeting))
                if not chunk:
                    break
                greeting += chunk
        except TransportError:
            reader.close()
            raise
        expected = MAGIC + self.token.encode() + b"\n"
        if not hmac.compare_digest(greeting, expected):
            reader.close()
            raise TransportError("the data link was opened without the right token: refused")
        return reader

    def close(self) -> None:
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class SocketReader:
    """Reads from the source's connection; silence longer than ``timeout`` means the link is gone."""

    def __init__(self, conn: socket.socket, timeout: float | None) -> None:
        self.conn = conn
        self.conn.settimeout(timeout)
        self.timeout = timeout
        self.received = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.conn.recv(n if n > 0 else 1 << 20)
        except socket.timeout as exc:
            raise TransportError(f"no data from the source for {self.timeout:g} s: the link is gone") from exc
        except OSError as exc:
            raise TransportError(f"the data link broke: {exc}") from exc
        self.received += len(data)
        return data

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------- source side
PIN_ALIAS = "cmigrate-destination"
PINS = Path("/run/cmigrate/pins")


def pin_file(pin: dict, name: str) -> Path:
    """A known_hosts file of one line: the key the CLI verified the destination with, under an alias."""
    for field, pattern in (("key_type", r"[a-z0-9@.-]{3,64}"), ("key", r"[A-Za-z0-9+/=]{16,8192}")):
        if not re.fullmatch(pattern, str(pin.get(field, ""))):
            raise TransportError(f"the destination's host key to pin is malformed ({field})")
    PINS.mkdir(mode=0o700, parents=True, exist_ok=True)
    for old in PINS.iterdir():   # left by agents that were killed (a fault, a lost session): theirs only
        pid = old.name.split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            old.unlink(missing_ok=True)
    path = PINS / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{PIN_ALIAS} {pin['key_type']} {pin['key']}\n")
    return path


def ssh_argv(target: str, remote: list[str], io_timeout: float | None, pin: dict | None = None,
             known_hosts: Path | None = None) -> list[str]:
    """OpenSSH to ``target`` as this host knows it (``$CMIGRATE_SSH_CONFIG`` or ~/.ssh/config: user, keys, jumps);
    no prompts. With ``pin`` (what the CLI verified: address, port, host key, the key in the ``known_hosts`` file
    ``pin_file`` wrote) it goes to that address and accepts only that key, whatever this host's config says."""
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(CONNECT_TIMEOUT)}",
            "-o", "Compression=no", "-o", "IPQoS=throughput", "-c", CIPHERS]
    if pin is not None and known_hosts is not None:
        argv += ["-o", f"HostName={pin['address']}", "-o", f"Port={int(pin['port'])}",
                 "-o", f"HostKeyAlias={PIN_ALIAS}", "-o", f"UserKnownHostsFile={known_hosts}",
                 "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                 "-o", "CheckHostIP=no", "-o", "UpdateHostKeys=no"]
    if io_timeout:
        interval = max(1, int(io_timeout / 3))
        argv += ["-o", f"ServerAliveInterval={interval}", "-o", "ServerAliveCountMax=3"]
    if os.environ.get("CMIGRATE_SSH_CONFIG"):
        argv += ["-F", os.environ["CMIGRATE_SSH_CONFIG"]]
    return argv + ["--", target, shlex.join(remote)]


class Link:
    """The source's end: an OpenSSH process whose stdin reaches the destination agent's socket."""

    def __init__(self, target: str, sock_path: str, token: str, agent: str, io_timeout: float | None,
                 pin: dict | None = None, framed_pages: bool = False) -> None:
        """``framed_pages``: the stream opens with the dump's pages in frames (transport/pagecodec.py), which the
        far end's ``attach --pages`` decodes."""
        self.target = target
        self.framed_pages = framed_pages
        self.known_hosts = pin_file(pin, f"{os.getpid()}-{secrets.token_hex(8)}") if pin is not None else None
        remote = [agent, "attach", sock_path] + (["--pages"] if framed_pages else [])
        self.proc = subprocess.Popen(ssh_argv(target, remote, io_timeout, pin, self.known_hosts),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.relays: list[CriuStream] = []
        for pipe in (self.proc.stdin, self.proc.stdout):
            _grow_pipe(pipe.fileno())
        try:
            self._await_attached()
            self.proc.stdin.write(MAGIC + token.encode() + b"\n")
            self.proc.stdin.flush()
        except BaseException:
            self.close()   # every pipe: a failed connect leaks none
            raise

    def _await_attached(self) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT + 5
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not ready:
                raise self._failure(f"no answer from {self.target} within {CONNECT_TIMEOUT + 5:g} s")
            chunk = os.read(self.proc.stdout.fileno(), 64)
            if not chunk:
                raise self._failure(f"ssh to {self.target} failed")
            line += chunk
        if line.strip() != b"attached":
            raise self._failure(f"unexpected answer from {self.target}: {line.strip()[:80]!r}")

    def _failure(self, what: str) -> TransportError:
        self.kill()
        try:
            err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):   # read already, and closed
            err = []
        self._close_pipes()
        reason = err[-1] if err else f"exit status {self.proc.returncode}"
        return TransportError(f"{what}: {reason}", argv=self.proc.args)

    @property
    def stdin(self):
        return self.proc.stdin

    def finish(self) -> None:
        """All data written: close the stream and wait for ssh to deliver it."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            status = self.proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            status = None
        if status != 0:
            raise self._failure(f"the data link to {self.target} failed")
        self._close_pipes()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin,):
            try:
                stream.close()
            except OSError:
                pass

    def _close_pipes(self) -> None:
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        self.kill()
        for relay in self.relays:
            relay.close()
        self._close_pipes()
        if self.known_hosts is not None:
            self.known_hosts.unlink(missing_ok=True)


def _grow_pipe(fd: int) -> None:
    try:
        import fcntl
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:   # a smaller pipe only costs speed
        pass


def _splice_all(src: int, dst: int, on_bytes=None) -> int:
    """Move bytes from ``src`` to ``dst`` in the kernel (one of them a pipe) until ``src`` ends.

    Never a blocking splice: one that waits for data holds the pipe's lock meanwhile, and the process at the
    pipe's other end (ssh) would hang on it, unkillable (seen here: ssh in state D, the dump deadlocked)."""
    total = 0
    flags = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE
    while True:
        select.select([src], [], [])
        try:
            n = os.splice(src, dst, PIPE_SIZE, flags=flags)
        except BlockingIOError:   # nothing to read after all, or no room on the other side yet
            select.select([], [dst], [], 0.05)
            continue
        if n == 0:
            return total
        total += n
        if on_bytes:
            on_bytes(n)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset: a peer blocked writing into a full buffer wakes up with an error (a FIN, or a
    shutdown, would leave it waiting for room that never comes)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)   # wakes our own threads waiting on it, so that the close is the last
    except OSError:
        pass
    sock.close()


# runc hands CRIU only an address:port for the page server; CRIU is given its end of a socketpair instead
# (``ps-socket FD`` in its per-run config, the descriptor inherited through runc), so no listener exists that
# another local process could reach: a loopback port is open to every user and to containers on the host network.
# runc still needs an address: one where nobody listens and only root could (port 9, below 1024).
UNUSED_PAGE_SERVER = "127.0.0.1:9"
CRIU_FD_FLOOR = 64   # above the descriptors runc gives CRIU itself (3: its RPC socket, then status fds)


class CriuSocket:
    """A socketpair whose one end CRIU inherits (``fd``, for ``ps-socket``) and whose other end (``sock``) this
    agent joins to the link."""

    def __init__(self) -> None:
        import fcntl
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pagecodec.deepen(theirs)   # CRIU's writes: room to run ahead of whatever joins them to the link
        self.sock = mine
        self.fd = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD, CRIU_FD_FLOOR)
        theirs.close()

    @property
    def criu_config(self) -> str:
        return f"ps-socket {self.fd}\n"

    def given(self) -> None:
        """CRIU's process has its copy: drop ours, so that its end of stream reaches ``sock``."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class CriuStream:
    """CRIU's end of a socketpair (``CriuSocket``) joined both ways to a direct data link: what CRIU writes goes
    into the link, what the far end answers comes back to CRIU. Pages leave this host as CRIU reads them from the
    container, never touching its disk, and no other process can reach them (no listener).

    Two uses, one difference (``far_end_closes``):

    - the dump's page server (stop-copy, pre-copy): the far end is ``criu page-server``, and the exchange ends when
      CRIU closes its connection. A link that breaks or ends first resets CRIU's socket, so that CRIU, waiting for
      an answer or for room to write, fails now rather than never (``finish`` then says so).
    - post-copy's lazy pages (``far_end_closes``): the far end is the lazy-pages daemon, asking for pages for as
      long as it takes, and it ends the exchange by closing its side; CRIU must see that as its end of stream.

    ``sent`` counts the bytes that went out; ``take()`` those since it was last called; ``on_bytes`` hears of each
    chunk as it goes."""

    def __init__(self, conn: Link, criu: CriuSocket | None = None, on_bytes=None,
                 far_end_closes: bool = False) -> None:
        self.link, self.on_bytes, self.far_end_closes = conn, on_bytes, far_end_closes
        # in frames (transport/pagecodec.py) where the link's far end decodes them
        self.compress = conn.framed_pages
        self.criu = criu or CriuSocket()
        self.sock: socket.socket = self.criu.sock
        self.sock.setblocking(True)
        self.error: BaseException | None = None
        self.sent = 0
        self.wire: int | None = None   # bytes on the link, where compressed (else ``sent``)
        self._new = 0
        conn.relays.append(self)
        self.out = threading.Thread(target=self._out, daemon=True)
        self.back = threading.Thread(target=self._back, daemon=True)
        self.out.start()
        self.back.start()

    def _count(self, n: int) -> None:
        self.sent += n
        self._new += n
        if self.on_bytes:
            self.on_bytes(n)

    def take(self) -> int:
        n, self._new = self._new, 0
        return n

    def _out(self) -> None:
        try:
            if self.compress:   # lazy pages: every answer is awaited, none waits for a chunk to fill
                encoder = pagecodec.PageEncoder(self.sock, self.link.proc.stdin.fileno(), self._count,
                                                coalesce=0.0 if self.far_end_closes else pagecodec.COALESCE)
                try:
                    encoder.run()
                finally:
                    self.wire = encoder.wire
            else:
                _splice_all(self.sock.fileno(), self.link.proc.stdin.fileno(), self._count)
        except Exception as exc:   # OSError: the link broke (or a compressor failed)
            if not self.far_end_closes:   # the link broke: CRIU's next write must fail rather than wait forever
                self.error = exc
                _reset(self.sock)

    def _back(self) -> None:
        try:
            _splice_all(self.link.proc.stdout.fileno(), self.sock.fileno())
            if self.far_end_closes:
                self.sock.shutdown(socket.SHUT_WR)   # the destination is done: CRIU waits for this end of stream
                return
        except OSError:
            if self.far_end_closes:
                return
        # the link is gone: CRIU, waiting for the page server's answer or for room to write, must fail now
        self.error = self.error or ConnectionError("the data link closed")
        _reset(self.sock)

    def finish(self, ok: bool) -> None:
        """After the dump: all pages must have gone into the link (CRIU closed its connection)."""
        self.criu.given()
        if not ok:
            return
        self.out.join(timeout=60)
        if self.out.is_alive() or self.error is not None:
            raise TransportError(f"the pages did not all reach the link: {self.error or 'relay stuck'}")

    def close(self) -> None:
        """Wake both threads (a shutdown), let them end (the link's own close ends the answers' side), then
        close: a descriptor closed under a thread still using its number could be another file's by then."""
        self.criu.given()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for thread in (self.out, self.back):
            if thread is not threading.current_thread():
                thread.join(timeout=1.0)
        self.sock.close()


# ---------------------------------------------------------------- on the destination, under sshd
LINK_SOCKETS = (SOCKET_NAME, "pages.sock")
MIGRATION_DIR = re.compile(r"[0-9a-f]{1,64}-dst")


def attachable(sock_path: str, work_root: Path) -> str | None:
    """Why ``sock_path`` is not a destination agent's link socket (None if it is): only ``<work root>/<id>-dst/
    link.sock`` or ``pages.sock``, a socket of root's, reached without a symlink. Anything else (Docker's own
    socket, say) is refused: whoever may log in to run ``attach`` must not reach other sockets through it."""
    path = Path(sock_path)
    if not path.is_absolute() or os.path.normpath(sock_path) != sock_path or path.name not in LINK_SOCKETS \
            or not MIGRATION_DIR.fullmatch(path.parent.name):
        return "not a migration's link socket"
    root = os.path.realpath(work_root)
    if os.path.realpath(path.parent.parent) != root or \
            os.path.realpath(path) != os.path.join(root, path.parent.name, path.name):
        return "not in this host's migration work root"
    try:
        st = os.lstat(path)
    except OSError as exc:
        return exc.strerror
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != 0:
        return "not a socket of root's"
    return None


def attach(sock_path: str, work_root: Path, pages: bool = False) -> int:
    """``cmigrate-agent attach SOCK [--pages]``: join stdin/stdout (the SSH session) to the destination agent's
    socket. ``pages``: after the greeting the stream opens with the dump's pages in frames, decoded here into
    CRIU's page-server protocol (transport/pagecodec.py), so that the agent gets what an unframed stream carries."""
    refused = attachable(sock_path, work_root)
    if refused is not None:
        print(f"cmigrate-agent attach: refused {sock_path}: {refused}", file=sys.stderr)
        return 1
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(sock_path)
    except OSError as exc:
        print(f"cmigrate-agent attach: cannot reach {sock_path}: {exc}", file=sys.stderr)
        return 1
    os.write(1, b"attached\n")
    threading.Thread(target=_answers, args=(sock,), daemon=True).start()
    try:
        if pages:
            greeting = pagecodec.PageDecoder(0, sock)._exactly(GREETING_LEN)   # the agent checks it
            sock.sendall(greeting)
            try:
                pagecodec.PageDecoder(0, sock).run()
            except pagecodec.CorruptStream as exc:
                print(f"cmigrate-agent attach: the memory pages arrived corrupt: {exc}", file=sys.stderr)
                _reset(sock)   # the page server must fail now, not wait for the rest
                return 1
        try:
            _splice_all(0, sock.fileno())   # zero-copy where sshd gave us a pipe
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            while data := os.read(0, PIPE_SIZE):
                sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        print(f"cmigrate-agent attach: the destination agent stopped reading: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    return 0


def _answers(sock: socket.socket) -> None:
    """What the destination says back (CRIU's page-server answers, lazy page requests) goes to the source; when
    the destination closes its end, so does this one (CRIU on the source waits for that end of stream)."""
    try:
        while data := sock.recv(65536):
            os.write(1, data)
    except OSError:
        pass
    os.close(1)   # sshd sends the end of stream once both of these are closed
    os.close(2)
