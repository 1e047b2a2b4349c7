"""Fault injection at the migration's phase boundaries, for the fault-matrix tests and for rehearsing failures
(in the spirit of CRIU's own CRIU_FAULT).

    CMIGRATE_FAULT=ACTION@POINT[,ACTION@POINT ...]

POINT is one of ``POINTS``: ``prepared`` (DST container created, nothing frozen yet), ``transfer`` (the
checkpoint's first bytes are on their way: the middle of the transfer), ``frozen`` (SRC dumped), ``restored``
(DST runs it; before the commit point), ``committed`` (after it, before SRC lets go).

ACTION is ``kill-cli`` (this process SIGKILLs itself, as an operator's ``kill -9``), ``int-cli`` (it gets SIGINT,
as Ctrl-C), or ``hook``: the command in ``CMIGRATE_FAULT_HOOK`` (split like a shell would, never run by one) runs
and is waited for, with ``CMIGRATE_FAULT_POINT``, ``CMIGRATE_MIGRATION_ID``, ``CMIGRATE_CONTAINER``,
``CMIGRATE_SOURCE``, ``CMIGRATE_DESTINATION``, ``CMIGRATE_SRC_AGENT_PID`` and ``CMIGRATE_DST_AGENT_PID`` in its
environment: it can kill an agent, cut a link, stop a daemon, fill a disk.
Each injection fires once per migration.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess

from migrate.errors import UsageError

POINTS = ("prepared", "transfer", "frozen", "restored", "committed")
ACTIONS = ("kill-cli", "int-cli", "hook")


def parse(spec: str) -> dict[str, str]:
    """``"kill-cli@frozen,hook@transfer"`` -> ``{"frozen": "kill-cli", "transfer": "hook"}``."""
    plan = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        action, _, point = item.partition("@")
        if action not in ACTIONS or point not in POINTS:
            raise UsageError(f"CMIGRATE_FAULT: {item!r} is not ACTION@POINT with ACTION one of "
                             f"{', '.join(ACTIONS)} and POINT one of {', '.join(POINTS)}")
        plan[point] = action
    return plan


class Injector:
    """The faults planned for one migration (none unless CMIGRATE_FAULT is set)."""

    def __init__(self, environ=os.environ) -> None:
        self.plan = parse(environ.get("CMIGRATE_FAULT", ""))
        self.hook = shlex.split(environ.get("CMIGRATE_FAULT_HOOK", ""))
        if "hook" in self.plan.values() and not self.hook:
            raise UsageError("CMIGRATE_FAULT asks for a hook, and CMIGRATE_FAULT_HOOK is empty")
        self.context: dict[str, str] = {}

    def __call__(self, point: str) -> None:
        action = self.plan.pop(point, None)
        if action == "kill-cli":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "int-cli":
            os.kill(os.getpid(), signal.SIGINT)   # Python raises KeyboardInterrupt at its next instruction
        elif action == "hook":
            env = {**os.environ, "CMIGRATE_FAULT_POINT": point, **self.context}
            subprocess.run(self.hook, env=env, check=False, timeout=120)
