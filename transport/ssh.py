"""SSH sessions with paramiko: hosts resolved through an OpenSSH config, keys verified against known_hosts.

The user's ``~/.ssh/config`` (or the file given with ``-F``) decides HostName, User, Port, IdentityFile,
UserKnownHostsFile and ProxyJump, as for ``ssh`` itself. A host key that is not in known_hosts is refused with its
fingerprint and the command to accept it; accepting is always the user's explicit act.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shlex
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from transport.errors import HostKeyError, TransportError
from transport.hosts import Result, check_result

DEFAULT_CONFIG = "~/.ssh/config"
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")
CONNECT_TIMEOUT = 15.0


@dataclass
class HostSpec:
    """Where and how to reach one host, as the SSH config resolves it."""

    alias: str
    hostname: str
    port: int = 22
    user: str | None = None
    identity_files: list[str] = field(default_factory=list)
    known_hosts_files: list[str] = field(default_factory=list)
    proxy_jump: str | None = None
    config_path: str | None = None


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a key, as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_config(config_path: str | None) -> paramiko.SSHConfig:
    path = Path(os.path.expanduser(config_path or DEFAULT_CONFIG))
    if not path.exists():
        if config_path:
            raise TransportError(f"SSH config {path} does not exist")
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except (OSError, paramiko.ConfigParseError) as exc:
        raise TransportError(f"cannot read SSH config {path}: {exc}") from exc


def resolve(alias: str, config_path: str | None = None) -> HostSpec:
    """Resolve ``alias`` like ``ssh -G`` would (the parts cmigrate uses)."""
    found = load_config(config_path).lookup(alias)
    known = found.get("userknownhostsfile")
    known_files = known.split() if known else list(DEFAULT_KNOWN_HOSTS)
    jump = found.get("proxyjump")
    return HostSpec(
        alias=alias,
        hostname=found.get("hostname", alias),
        port=_port(found.get("port", "22"), f"Port of {alias} in the SSH config"),
        user=found.get("user"),
        identity_files=[os.path.expanduser(p) for p in found.get("identityfile", [])],
        known_hosts_files=[os.path.expanduser(p) for p in known_files],
        proxy_jump=None if jump in (None, "none") else jump,
        config_path=config_path,
    )


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse a host whose key is not in known_hosts, saying how to accept it."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec

    def missing_host_key(self, client, hostname, key) -> None:
        spec = self.spec
        port = f"-p {spec.port} " if spec.port != 22 else ""
        files = spec.known_hosts_files[0] if spec.known_hosts_files else "~/.ssh/known_hosts"
        raise HostKeyError(
            f"host key of {hostname} is not known: {key.get_name()} {fingerprint(key)}",
            host=spec.alias,
            hint=f"if that fingerprint is right, accept it with: ssh-keyscan {port}{spec.hostname} >> {files}")


def _port(text: str, what: str) -> int:
    try:
        port = int(text)
    except (TypeError, ValueError):
        port = 0
    if not 1 <= port <= 65535:
        raise TransportError(f"{what} is {text!r}, not a port number (1-65535)")
    return port


def _parse_jump(jump: str) -> tuple[str, str | None, int | None]:
    """One ProxyJump hop, as OpenSSH reads it: ``[user@]host[:port]`` or ``ssh://[user@]host[:port]``."""
    original = jump
    if jump.startswith("ssh://"):
        jump = jump[len("ssh://"):].rstrip("/")
    user = None
    if "@" in jump:
        user, jump = jump.rsplit("@", 1)
    port = None
    if jump.startswith("[") and "]:" in jump:
        jump, p = jump[1:].split("]:", 1)
        port = _port(p, f"the port of ProxyJump {original}")
    elif jump.startswith("[") and jump.endswith("]"):
        jump = jump[1:-1]
    elif jump.count(":") == 1:
        jump, p = jump.split(":")
        port = _port(p, f"the port of ProxyJump {original}")
    if not jump or (user is not None and not user):
        raise TransportError(f"ProxyJump {original!r} names no host")
    return jump, user, port


class SSHHost:
    """A host reached over SSH. Commands are argv lists; every word is quoted for the remote shell."""

    def __init__(self, alias: str, config_path: str | None = None, *, spec: HostSpec | None = None,
                 timeout: float = CONNECT_TIMEOUT) -> None:
        self.name = alias
        self.spec = spec or resolve(alias, config_path)
        self.timeout = timeout
        self._client: paramiko.SSHClient | None = None
        self._jump: SSHHost | None = None

    # ------------------------------------------------------------------ session
    def pin(self) -> dict:
        """Where this host was reached and the key it proved itself with, for another host's OpenSSH to reach the
        same host and nothing else (the direct data link): address, port, key type and base64 key."""
        key = self.connect().get_transport().get_remote_server_key()
        return {"address": self.spec.hostname, "port": self.spec.port, "key_type": key.get_name(),
                "key": key.get_base64()}

    def connect(self) -> paramiko.SSHClient:
        if self._client is not None and self._client.get_transport() and self._client.get_transport().is_active():
            return self._client
        spec = self.spec
        client = paramiko.SSHClient()
        for path in spec.known_hosts_files:
            if os.path.exists(path):
                try:
                    client.load_system_host_keys(path)
                except (OSError, paramiko.SSHException) as exc:
                    raise TransportError(f"cannot read known_hosts file {path}: {exc}", host=self.name) from exc
        client.set_missing_host_key_policy(_RefuseUnknown(spec))
        sock = self._open_jump() if spec.proxy_jump else None
        try:
            client.connect(spec.hostname, port=spec.port, username=spec.user or "root",
                           key_filename=spec.identity_files or None, look_for_keys=not spec.identity_files,
                           allow_agent=bool(os.environ.get("SSH_AUTH_SOCK")), timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout, sock=sock)
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"host key of {spec.hostname} does not match known_hosts: got {exc.key.get_name()} "
                f"{fingerprint(exc.key)}, expected {fingerprint(exc.expected_key)}", host=self.name,
                hint="someone may be intercepting the connection; if the host was reinstalled, "
                     f"remove its old key with: ssh-keygen -R {spec.hostname}") from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise TransportError(f"SSH authentication as {spec.user or 'root'} failed: {exc}", host=self.name,
                                 hint="check User and IdentityFile in the SSH config") from exc
        except socket.gaierror as exc:
            client.close()
            raise TransportError(f"unknown host {spec.hostname!r}: {exc.strerror}", host=self.name,
                                 hint="is it in your SSH config? use -F FILE for another config") from exc
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            raise TransportError(f"cannot connect to {spec.hostname}:{spec.port}: {exc}", host=self.name) from exc
        transport = client.get_transport()
        transport.set_keepalive(5)
        self._client = client
        return client

    def _open_jump(self):
        jump_alias, user, port = _parse_jump(self.spec.proxy_jump.split(",")[-1])
        chain = self.spec.proxy_jump.rsplit(",", 1)
        jspec = resolve(jump_alias, self.spec.config_path)
        if user:
            jspec.user = user
        if port:
            jspec.port = port
        if len(chain) == 2:
            jspec.proxy_jump = chain[0]
        self._jump = SSHHost(jump_alias, spec=jspec, timeout=self.timeout)
        try:
            return self._jump.connect().get_transport().open_channel(
                "direct-tcpip", (self.spec.hostname, self.spec.port), ("127.0.0.1", 0))
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"ProxyJump {jump_alias} cannot reach {self.spec.hostname}:{self.spec.port}: {exc}",
                                 host=self.name) from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    def __enter__(self) -> "SSHHost":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SSHHost({self.name!r})"

    # ------------------------------------------------------------------ commands
    def _channel(self, argv: Sequence[str]) -> paramiko.Channel:
        command = shlex.join(str(a) for a in argv)
        try:
            chan = self.connect().get_transport().open_session(timeout=self.timeout)
            chan.exec_command(command)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.close()
            raise TransportError(f"cannot run {argv[0]}: {exc}", host=self.name, argv=list(argv)) from exc
        return chan

    def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = None,
            check: bool = True) -> Result:
        argv = [str(a) for a in argv]
        chan = self._channel(argv)
        chan.settimeout(timeout)
        err = bytearray()

        def read_stderr() -> None:
            try:
                while chunk := chan.recv_stderr(65536):
                    err.extend(chunk)
            except (OSError, socket.timeout):
                pass

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        out = bytearray()
        try:
            if input:
                chan.sendall(input)
            chan.shutdown_write()
            while chunk := chan.recv(65536):
                out.extend(chunk)
            status = chan.recv_exit_status()
        except socket.timeout as exc:
            chan.close()
            raise TransportError(f"{argv[0]} did not finish within {timeout:g} s", host=self.name,
                                 argv=argv) from exc
        except (OSError, paramiko.SSHException, EOFError) as exc:
            chan.close()
            raise TransportError(f"connection lost while running {argv[0]}: {exc}", host=self.name,
                                 argv=argv) from exc
        reader.join(timeout=5)
        chan.close()
        if status == -1:
            raise TransportError(f"connection lost while running {argv[0]}", host=self.name, argv=argv)
        if status == 127 and check:
            raise TransportError(f"{argv[0]} is not installed", host=self.name, argv=argv, status=status,
                                 detail=err.decode(errors="replace"))
        result = Result(argv, status, bytes(out), bytes(err))
        return check_result(self.name, result) if check else result

    def popen(self, argv: Sequence[str]) -> "SSHProcess":
        return SSHProcess(self._channel([str(a) for a in argv]))


class _ChannelReader:
    """read(n) over a channel's stdout or stderr: up to n bytes, b"" at end of stream (no paramiko BufferedFile,
    whose __del__ flushes into dead channels)."""

    def __init__(self, recv) -> None:
        self._recv = recv
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            chunks = [self._buf]
            self._buf = b""
            while chunk := self._recv(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        out = bytearray(self._buf[:n])
        self._buf = self._buf[n:]
        while len(out) < n:
            chunk = self._recv(max(n - len(out), 65536))
            if not chunk:
                break
            take = n - len(out)
            out += chunk[:take]
            self._buf = chunk[take:]
        return bytes(out)

    def read1(self, n: int = 65536) -> bytes:
        if self._buf:
            out, self._buf = self._buf[:n], self._buf[n:]
            return out
        return self._recv(n)

    def close(self) -> None:
        pass


class _ChannelWriter:
    def __init__(self, chan: paramiko.Channel) -> None:
        self._chan = chan

    def write(self, data) -> int:
        self._chan.sendall(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._chan.shutdown_write()


class SSHProcess:
    """A remote command with file-like stdin/stdout/stderr, like subprocess.Popen's."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan
        self.stdin = _ChannelWriter(chan)
        self.stdout = _ChannelReader(chan.recv)
        self.stderr = _ChannelReader(chan.recv_stderr)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is not None and not self.chan.status_event.wait(timeout):
            raise TimeoutError("remote command still running")
        return self.chan.recv_exit_status()

    def kill(self) -> None:
        self.chan.close()

    def close(self) -> None:
        self.chan.close()
