"""Validation of the names users give: hosts, containers, checkpoints. Checked before anything is touched."""
from __future__ import annotations

import re

from migrate.errors import UsageError

HOST_NAME = re.compile(r"^[A-Za-z0-9_.@:\[\]-]{1,255}$")
CONTAINER_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
CHECKPOINT_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")   # Docker's rule


def validate_host(name: str) -> str:
    if not isinstance(name, str) or not HOST_NAME.match(name) or name.startswith("-"):
        raise UsageError(f"invalid host name {name!r}")
    return name


def validate_container(name: str) -> str:
    if not isinstance(name, str) or not CONTAINER_NAME.match(name) or len(name) > 255:
        raise UsageError(f"invalid container name {name!r}: Docker names match [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    return name.lstrip("/")


def validate_checkpoint(name: str) -> str:
    if not isinstance(name, str) or not CHECKPOINT_NAME.match(name) or len(name) > 255:
        raise UsageError(f"invalid checkpoint name {name!r}: it must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ "
                         "(two characters or more, no '/')")
    return name
