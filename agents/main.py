"""cmigrate-agent: acts on the host it runs on, driven by framed messages on stdin/stdout.

Protocol: the CLI sends ``hello`` with its version; the agent answers ``hello`` with its own, or an ``error`` and
exits when they differ. Then each ``call`` (``id``, ``op`` and ``args``) is answered by any number of ``progress``
messages and one ``result`` or ``error``, each naming the call's ``id``: an answer can never be taken for another
call's. Logs go to stderr; stdout carries frames only.
"""
from __future__ import annotations

import os
import resource
import select
import socket
import sys
import threading
import traceback
from collections.abc import Callable

from migrate import __version__
from migrate.errors import AgentError, MigrationError
from transport.agent import KEEPALIVE   # one interval for both ends' signs of life
from transport.errors import SessionLost
from transport import framing

PROTOCOL = 2   # 2: every call carries an id, and every answer names it


class FdReader:
    """Unbuffered reads from a file descriptor, with an optional timeout (``timeout`` seconds, None: wait)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.timeout: float | None = None

    def read(self, n: int = -1) -> bytes:
        if self.timeout is not None:
            ready, _, _ = select.select([self.fd], [], [], self.timeout)
            if not ready:
                raise SessionLost(f"no data from the CLI for {self.timeout:g} s: the link is gone")
        return os.read(self.fd, n if n > 0 else 1 << 20)


class Channel:
    """What an operation may use to talk back: progress events, and the raw streams for data frames."""

    def __init__(self, stdin, stdout, call_id: int | None = None, session=None, keepalive=None) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.call_id = call_id
        self.session = session   # agents/session.py: the migrations this session works on
        self.keepalive = keepalive

    def emit(self, event: dict) -> None:
        framing.send(self.stdout, {"type": "progress"} | event | {"id": self.call_id})

    def stream_read(self) -> None:
        """The data the CLI relayed for this call has all been read: from here the call's signs of life are read
        as they come, and are sent even if the call began without them (``keepalive=False``: they would have piled
        up behind the stream)."""
        if self.keepalive is not None:
            self.keepalive.begin()


Op = Callable[[dict, Channel], object]


class FrameStream:
    """stdout shared by an operation and its keepalives: one frame is one ``write``, and writes do not mix."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def write(self, data) -> int:
        with self.lock:
            return self.stream.write(data)

    def flush(self) -> None:
        with self.lock:
            self.stream.flush()


class Keepalive:
    """While a call works (dumps, verifies, restores, saves a layer: phases with nothing to send), a progress
    event every ``KEEPALIVE`` seconds tells the CLI the agent lives, so that only a silent *host* trips its I/O
    timeout, never a long phase. Stops before the call's answer is sent."""

    def __init__(self, out: FrameStream, call_id: int, enabled: bool = True) -> None:
        self.out, self.call_id, self.enabled = out, call_id, enabled
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="keepalive", daemon=True)

    def _run(self) -> None:
        while not self.done.wait(KEEPALIVE):
            try:
                framing.send(self.out, {"type": "progress", "id": self.call_id, "event": "alive"})
            except (OSError, ValueError):   # the CLI is gone: the call itself finds out
                return

    def __enter__(self) -> "Keepalive":
        if self.enabled:
            self.begin()
        return self

    def begin(self) -> None:
        if not self.thread.is_alive() and not self.done.is_set():
            self.thread.start()

    def __exit__(self, *exc) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()


def operations() -> dict[str, Op]:
    from agents import archive, checkpoint, destination, fleet, source
    return {
        "ping": lambda args, ch: {"pong": True},
        # peak resident memory of this agent so far, for reports and benchmarks
        "stats": lambda args, ch: {"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss},
        **checkpoint.OPERATIONS,
        **archive.OPERATIONS,
        **source.OPERATIONS,
        **destination.OPERATIONS,
        **fleet.OPERATIONS,
    }


def error_message(exc: BaseException, call_id: int | None = None) -> dict:
    if isinstance(exc, MigrationError):
        return {"type": "error"} | exc.to_dict() | {"id": call_id}
    return {"type": "error", "code": AgentError.code, "error": "AgentError",
            "message": f"agent failed: {type(exc).__name__}: {exc}",
            "detail": traceback.format_exc(limit=5), "id": call_id}


class _Loading(threading.Thread):
    """The operations' modules (Docker's SDK and requests among them: ~0.1 s of imports), loaded while the hello
    goes out: the CLI's first call, not the hello, waits for them, and meanwhile the CLI goes on with its other
    host."""

    def __init__(self) -> None:
        super().__init__(name="imports", daemon=True)
        self.session = self.ops = self.error = None
        self.start()

    def run(self) -> None:
        try:
            from agents.session import Session
            self.ops = operations()
            self.session = Session()
        except BaseException as exc:   # raised in the serving thread, where it is reported
            self.error = exc

    def result(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.session, self.ops


def serve(stdin, stdout, host_name: str) -> int:
    loading = _Loading()
    try:
        return _serve(stdin, stdout, host_name, loading)
    finally:
        loading.join()
        if loading.session is not None:
            loading.session.end()


def _serve(stdin, stdout, host_name: str, loading: _Loading) -> int:
    try:
        hello = framing.recv(stdin)
    except (EOFError, framing.ProtocolError) as exc:
        print(f"cmigrate-agent: no hello: {exc}", file=sys.stderr)
        return 2
    if hello.get("type") != "hello" or hello.get("version") != __version__ or hello.get("protocol") != PROTOCOL:
        framing.send(stdout, error_message(AgentError(
            f"agent version {__version__} (protocol {PROTOCOL}) does not match cmigrate {hello.get('version')} "
            f"(protocol {hello.get('protocol')})", host=host_name,
            hint="install the same cmigrate version on every host (./install.sh)")))
        return 2
    framing.send(stdout, {"type": "hello", "version": __version__, "protocol": PROTOCOL, "host": host_name,
                          "pid": os.getpid()})
    session, ops = loading.result()
    while True:
        try:
            msg = framing.recv(stdin)
        except (EOFError, OSError):
            return 0
        except SessionLost as exc:   # a migration's lease ran out (agents/destination.py create)
            print(f"cmigrate-agent: {exc.message}", file=sys.stderr)
            return 3
        except framing.ProtocolError as exc:
            framing.send(stdout, error_message(exc))
            return 2
        if msg["type"] == "bye":
            return 0
        if msg["type"] == "keepalive":   # the CLI lives, between two calls (its lease goes on)
            continue
        call_id = msg.get("id")
        if msg["type"] != "call" or msg.get("op") not in ops or not isinstance(call_id, int):
            framing.send(stdout, error_message(AgentError(f"unknown request {msg.get('type')}/{msg.get('op')}",
                                                          host=host_name), call_id if isinstance(call_id, int)
                                               else None))
            continue
        try:
            with Keepalive(stdout, call_id, enabled=msg.get("keepalive", True) is not False) as keepalive:
                value = ops[msg["op"]](msg.get("args") or {}, Channel(stdin, stdout, call_id, session, keepalive))
            framing.send(stdout, {"type": "result", "id": call_id, "value": value})
        except Exception as exc:  # every failure goes back to the CLI as a typed error
            if isinstance(exc, MigrationError) and exc.host is None:
                exc.host = host_name
            framing.send(stdout, error_message(exc, call_id))
            if isinstance(exc, SessionLost):
                return 3


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("--version", "-V"):
        print(f"cmigrate-agent {__version__} protocol {PROTOCOL}")
        return 0
    if argv[:1] == ["attach"] and len(argv) in (2, 3) and argv[2:] in ([], ["--pages"]):   # agents/link.py
        from agents.link import attach
        from agents.paths import work_root   # not the journal's: it would import Docker's SDK, ~0.1 s
        return attach(argv[1], work_root(), pages=argv[2:] == ["--pages"])
    # Docker's SDK imports paramiko for its ssh:// transport, which an agent never uses (Docker is local; the data
    # link is OpenSSH): ~65 ms of every agent's start. None in sys.modules makes that import fail, and the SDK then
    # leaves its SSH adapter out, as it does where paramiko is not installed.
    sys.modules.setdefault("paramiko", None)
    host_name = os.environ.get("CMIGRATE_HOST") or socket.gethostname()
    stdout = FrameStream(os.fdopen(os.dup(sys.stdout.fileno()), "wb"))
    sys.stdout = sys.stderr   # nothing but frames may reach the real stdout
    return serve(FdReader(sys.stdin.fileno()), stdout, host_name)


if __name__ == "__main__":
    sys.exit(main())
