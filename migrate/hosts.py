"""Hosts by name: ``local``, or an SSH host from the user's config (``-F`` for another; the lab's as fallback)."""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

from migrate.names import validate_host
from transport.agent import DEFAULT_IO_TIMEOUT, AgentSession
from transport.hosts import Host, LocalHost
from transport.ssh import SSHHost

def ssh_config_for(name: str, ssh_config: str | None = None) -> str | None:
    """``-F`` wins, then $CMIGRATE_SSH_CONFIG, then ~/.ssh/config; a lab host not named there uses the lab's."""
    if ssh_config:
        return ssh_config
    if os.environ.get("CMIGRATE_SSH_CONFIG"):
        return os.environ["CMIGRATE_SSH_CONFIG"]
    from migrate import lab
    user = Path(os.path.expanduser("~/.ssh/config"))
    if name in {h.name for h in lab.ALL_HOSTS} and lab.SSH_CONFIG.exists():
        if not user.exists() or not re.search(rf"(?im)^\s*host\s+.*\b{re.escape(name)}\b", user.read_text()):
            return str(lab.SSH_CONFIG)
    return None


def open_host(name: str, ssh_config: str | None = None) -> Host:
    validate_host(name)
    if name == "local":
        return LocalHost()
    return SSHHost(name, ssh_config_for(name, ssh_config))


@contextmanager
def agent(name: str, ssh_config: str | None = None, agent_path: str | None = None,
          timeout: float | None = DEFAULT_IO_TIMEOUT):
    """An agent session on host ``name`` (silent for ``timeout`` seconds: gone); the SSH connection closes with
    it."""
    host = open_host(name, ssh_config)
    try:
        with AgentSession(host, agent_path, timeout) as session:
            yield session
    finally:
        host.close()
