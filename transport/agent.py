"""Start a cmigrate-agent on a host and talk to it: version handshake, then calls answered by typed messages.

Every call carries an id and every answer names it. A call whose answer did not arrive (an interrupt, a timeout, a
lost link, an answer naming another call) leaves the session broken: later calls on it are refused, so that a late
answer to the interrupted call can never be taken for the answer to a new one. Use a fresh session then."""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

from transport.errors import AgentError, MigrationError, TransportError, from_wire
from transport.version import __version__
from transport import framing
from transport.hosts import Host, LocalHost, tail
from transport.streams import CHUNK

DEFAULT_AGENT = "cmigrate-agent"
FINISH_TIMEOUT = 600.0
DEFAULT_IO_TIMEOUT = 120.0   # a host that sends nothing for this long is gone (cmigrate --io-timeout)
START_TIMEOUT = 5.0   # seconds an agent may take to answer its hello, whatever the I/O timeout
TAIL_GRACE = 5.0   # seconds more, after a relayed stream, for the destination to read the tail still in flight
KEEPALIVE = 0.25   # seconds between signs of life: the CLI's between calls, an agent's during a call
PROTOCOL = 2   # agents/main.py speaks the same
Progress = Callable[[dict], None]


class AgentSession:
    """One agent process on ``host``. Use as a context manager; ``call`` runs one operation there. ``timeout``:
    give up on a silent agent after that many seconds, from the version handshake on, which may take
    START_TIMEOUT at least (None: never)."""

    def __init__(self, host: Host, agent: str | None = None, timeout: float | None = DEFAULT_IO_TIMEOUT) -> None:
        self.host = host
        agent = agent or os.environ.get("CMIGRATE_AGENT")
        if agent is None and isinstance(host, LocalHost):
            argv = [sys.executable, "-m", "agents.main"]
        else:
            argv = [agent or DEFAULT_AGENT]
        self.proc = host.popen(argv)
        self._stderr = bytearray()
        self._reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._reader.start()
        self.remote: dict = {}
        self._next_id = 0
        self._pending: int | None = None   # the id of the call in flight
        self.broken: str | None = None     # why this session may carry no more calls
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        try:
            # a starting agent (Python and its imports, on a host busy with the container) is not a silent one
            self.set_timeout(max(timeout, START_TIMEOUT) if timeout is not None else None)
            self._handshake()
            self.set_timeout(timeout)
        except BaseException:
            self.close()
            raise
        if timeout is not None:
            threading.Thread(target=self._keepalive, name="keepalive", daemon=True).start()

    def _keepalive(self) -> None:
        """An agent between calls counts the CLI's silence against its lease (--io-timeout): while this session
        has no call in flight, say it lives. Never inside a call, whose stream this would break."""
        while not self._closed.wait(KEEPALIVE):
            with self._send_lock:
                if self._pending is not None or self.broken:
                    continue
                try:
                    framing.send(self.proc.stdin, {"type": "keepalive"})
                except Exception:  # the link is gone: the next call finds out and says so
                    return

    def _drain_stderr(self) -> None:
        try:
            while chunk := self.proc.stderr.read1(65536) if hasattr(self.proc.stderr, "read1") \
                    else self.proc.stderr.read(4096):
                self._stderr.extend(chunk)
                del self._stderr[:-65536]
        except (OSError, ValueError):
            pass

    def _lost(self, exc: BaseException | str) -> TransportError:
        status = None
        try:
            status = self.proc.wait(timeout=2)
        except Exception:  # still running, or the channel is gone: no status to report
            pass
        self._reader.join(timeout=1)
        err = tail(bytes(self._stderr), 5)
        if status == 127:
            return TransportError("cmigrate-agent is not installed", host=self.host.name, status=status,
                                  hint="run ./install.sh on that host", detail=err)
        if not self.remote and isinstance(exc, TimeoutError):
            return TransportError(f"the agent did not answer within {self.timeout() or 0:g} s of its start "
                                  f"(--io-timeout, and at least {START_TIMEOUT:g} s)", host=self.host.name,
                                  detail=err)
        if not self.remote:
            return AgentError(f"the agent exited before it answered (exit status {status}): {err or exc}",
                              host=self.host.name, status=status, detail=err,
                              hint="install the same cmigrate version on every host (./install.sh)")
        reason = str(exc) or ("no answer within the I/O timeout (--io-timeout)" if isinstance(exc, TimeoutError)
                              else type(exc).__name__)
        return TransportError(f"lost the connection to the agent: {reason}", host=self.host.name, status=status,
                              detail=err)

    def _recv(self) -> dict:
        kind, payload = self._read_frame()
        if kind != framing.JSON:
            raise framing.ProtocolError("expected a control message, got a data frame", host=self.host.name)
        return framing.decode(payload)

    def _read_frame(self) -> tuple[bytes, bytes]:
        try:
            return framing.read_frame(self.proc.stdout)
        except framing.ProtocolError as exc:
            exc.host = self.host.name
            raise
        except (EOFError, OSError) as exc:
            raise self._lost(exc) from exc

    def _send(self, message: dict) -> None:
        try:
            framing.send(self.proc.stdin, message)
        except (OSError, ValueError) as exc:
            raise self._lost(exc) from exc

    def _handshake(self) -> None:
        self._send({"type": "hello", "version": __version__, "protocol": PROTOCOL})
        answer = self._recv()
        if answer["type"] == "error":
            raise from_wire(answer, self.host.name)
        if answer["type"] != "hello" or answer.get("version") != __version__:
            raise AgentError(f"agent answered version {answer.get('version')}, cmigrate is {__version__}",
                             host=self.host.name, hint="install the same cmigrate version on every host")
        self.remote = answer

    def call(self, op: str, progress: Progress | None = None, **args):
        self.start(op, **args)
        return self.wait(progress)

    def start(self, op: str, *, keepalive: bool = True, **args) -> None:
        """Send a call without waiting for its answer (``wait`` collects it). ``keepalive=False``: the agent sends
        no signs of life during it (a call this end will not read until it ends, whose output would pile up)."""
        if self.broken:
            raise TransportError(f"the session to the agent cannot be used again: {self.broken}",
                                 host=self.host.name)
        with self._send_lock:
            if self._pending is not None:   # its answer will come first: the session is out of step for good
                self.broken = f"call {op} while call {self._pending} still waited for its answer"
                raise TransportError(f"the session to the agent cannot be used again: {self.broken}",
                                     host=self.host.name)
            self._next_id += 1
            self._pending = self._next_id
            try:
                self._send({"type": "call", "id": self._pending, "op": op, "args": args, "keepalive": keepalive})
            except BaseException as exc:
                self._break(exc)
                raise

    def wait(self, progress: Progress | None = None, data: Callable[[bytes], object] | None = None):
        """The answer to the call in flight; ``data`` takes the data frames it sends before it (without it, one is
        a protocol error)."""
        try:
            while True:
                kind, payload = self._read_frame()
                if kind == framing.DATA:
                    if data is None:
                        raise framing.ProtocolError("expected a control message, got a data frame",
                                                    host=self.host.name)
                    data(payload)
                    continue
                msg = framing.decode(payload)
                self._check_id(msg)
                if msg["type"] == "progress":
                    if progress and msg.get("event") != "alive":   # keepalives only feed the timeout
                        progress(msg)
                elif msg["type"] == "result":
                    self._pending = None
                    return msg.get("value")
                elif msg["type"] == "error":
                    self._pending = None
                    raise from_wire(msg, self.host.name)
                else:
                    raise framing.ProtocolError(f"unexpected message {msg['type']!r}", host=self.host.name)
        except BaseException as exc:
            if self._pending is not None:   # the answer never came: whatever comes later is stale
                self._break(exc)
            raise

    def download(self, op: str, sink: Callable[[bytes], object], progress: Progress | None = None, **args):
        """Run ``op``, which streams data frames before its answer: each goes to ``sink`` as it comes (a file's
        ``write``), so memory stays flat whatever their size. Returns the answer."""
        self.start(op, **args)
        return self.wait(progress, data=sink)

    def upload(self, op: str, source: IO[bytes], on_bytes: Callable[[int], None] | None = None, **args):
        """Run ``op`` with the bytes of ``source`` streamed to it as data frames, then an ``end`` message
        (``streams.FrameReader`` reads them there). An agent that fails part-way reads on to the end before it
        answers, so this never blocks on a peer that stopped reading. Returns the answer."""
        self.start(op, keepalive=False, **args)   # nothing is read from it until the stream has gone
        try:
            while chunk := source.read(CHUNK):
                framing.write_frame(self.proc.stdin, framing.DATA, chunk)
                if on_bytes:
                    on_bytes(len(chunk))
            framing.send(self.proc.stdin, {"type": "end"})
        except (OSError, ValueError, EOFError) as exc:
            self._break(exc)
            raise self._lost(exc) from exc
        except BaseException as exc:
            self._break(exc)
            raise
        limit = self.timeout()
        if limit:   # it may now work a while with nothing to say (verify, docker load, restore)
            self.set_timeout(max(limit, FINISH_TIMEOUT))
        try:
            return self.wait()
        finally:
            self.set_timeout(limit)

    def _check_id(self, msg: dict) -> None:
        if msg.get("id") != self._pending:
            raise framing.ProtocolError(f"the agent answered call {msg.get('id')} while call {self._pending} was "
                                        "waiting", host=self.host.name)

    def _break(self, exc: BaseException) -> None:
        self.broken = self.broken or f"call {self._pending} got no answer ({type(exc).__name__}: {exc})"

    def set_timeout(self, seconds: float | None) -> None:
        """Give up on a silent peer after ``seconds`` (over SSH; a local agent cannot lose its link)."""
        chan = getattr(self.proc, "chan", None)
        if chan is not None:
            chan.settimeout(seconds)

    def relay(self, op: str, dest: "AgentSession", dest_op: str, dest_args: dict,
              on_bytes: Callable[[int], None] | None = None, **args):
        """Run ``op`` here and ``dest_op`` on ``dest``, forwarding this agent's data frames to ``dest`` as they
        come, untouched. The stream ends with an ``end`` message carrying this side's result (its manifest), or
        ``abort``. Returns (this side's result, dest's result)."""
        dest.start(dest_op, keepalive=False, **dest_args)   # not read until the stream has gone
        self.start(op, **args)
        watchdog = _Watchdog(self, dest)
        try:
            return self._relay(dest, watchdog, on_bytes)
        except BaseException as exc:
            for session in (self, dest):
                if session._pending is not None:
                    session._break(exc)
            raise
        finally:
            watchdog.stop()

    def _relay(self, dest: "AgentSession", watchdog: "_Watchdog", on_bytes):
        result = error = None
        while True:
            try:
                kind, payload = framing.read_frame(self.proc.stdout)
            except framing.ProtocolError:
                raise
            except (EOFError, OSError) as exc:
                error = self._lost(exc)
                break
            if kind == framing.DATA:
                if error is None:   # once dest is gone, keep reading so this agent can finish and answer
                    try:
                        framing.write_frame(dest.proc.stdin, framing.DATA, payload)
                        watchdog.alive()
                        if on_bytes:
                            on_bytes(len(payload))
                    except Exception as exc:  # paramiko raises EOFError/SSHException on a severed link
                        error = dest._lost(exc or "link severed")
                continue
            msg = framing.decode(payload)
            self._check_id(msg)
            if msg["type"] == "progress":
                continue
            if msg["type"] == "result":
                result = msg.get("value")
                self._pending = None
            elif msg["type"] == "error":
                error = error or from_wire(msg, self.host.name)
                self._pending = None
            else:
                error = framing.ProtocolError(f"unexpected message {msg['type']!r}", host=self.host.name)
            break
        if error is None:
            try:
                framing.send(dest.proc.stdin, {"type": "end", "manifest": (result or {}).get("manifest", {})})
            except Exception as exc:  # as above
                error = dest._lost(exc)
        else:
            try:
                framing.send(dest.proc.stdin, {"type": "abort"})
            except Exception:  # the destination is gone already; the abort is a courtesy
                pass
        watchdog.stop()
        # the destination reads the stream's tail still in flight (at most the channel's window), then sends its
        # signs of life again while it verifies or loads (agents/main.py Channel.stream_read): a host that stays
        # silent longer is gone (a cut link kept the CLI waiting for FINISH_TIMEOUT, ten minutes)
        limit = dest.timeout()
        if limit:
            dest.set_timeout(limit + TAIL_GRACE)
        try:
            dest_result = dest.wait()
        except MigrationError as exc:
            raise (error or exc) from exc
        finally:
            dest.set_timeout(limit)
        if error is not None:
            raise error
        return result, dest_result

    def timeout(self) -> float | None:
        chan = getattr(self.proc, "chan", None)
        return chan.gettimeout() if chan is not None else None

    def sever(self) -> None:
        """Drop the connection under this session: a write stuck on a dead link fails at once."""
        self.host.close()

    def say_bye(self) -> None:
        """Tell the agent to end, without waiting for it to (``close`` waits): several sessions end at once."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            if self._send_lock.acquire(timeout=5):   # a keepalive stuck on a dead link must not hold us
                try:
                    framing.send(self.proc.stdin, {"type": "bye"})
                finally:
                    self._send_lock.release()
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.say_bye()
        try:
            self.proc.wait(timeout=10)
        except Exception:  # a stuck agent is killed rather than waited on forever
            self.proc.kill()
        if hasattr(self.proc, "close"):
            self.proc.close()
            return
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def __enter__(self) -> "AgentSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Watchdog:
    """During a relay, a peer that takes nothing for longer than the sessions' timeout has lost its link.

    paramiko blocks in a socket write for as long as TCP retransmits (minutes); a channel timeout does not cover
    that. The watchdog severs the destination's connection, and the stuck write fails.
    """

    def __init__(self, source: AgentSession, dest: AgentSession) -> None:
        self.limit = dest.timeout() or source.timeout()
        self.dest = dest
        self.last = time.monotonic()
        self.done = threading.Event()
        if self.limit:
            threading.Thread(target=self._watch, daemon=True).start()

    def alive(self) -> None:
        self.last = time.monotonic()

    def _watch(self) -> None:
        while not self.done.wait(min(1.0, self.limit / 4)):
            if time.monotonic() - self.last > self.limit:
                self.dest.sever()
                return

    def stop(self) -> None:
        self.done.set()
