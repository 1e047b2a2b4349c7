"""Validation of the names and values users give: hosts, containers, checkpoints, timeouts. Checked before
anything is touched. Whole strings only (``fullmatch``: ``re.match`` with ``$`` also accepts a trailing newline)."""
from __future__ import annotations

import re

from migrate.errors import UsageError

HOST_NAME = re.compile(r"[A-Za-z0-9_.@:\[\]-]{1,255}")
CONTAINER_NAME = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]*")
CHECKPOINT_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")   # Docker's rule


def validate_host(name: str) -> str:
    if not isinstance(name, str) or not HOST_NAME.fullmatch(name) or name.startswith("-"):
        raise UsageError(f"invalid host name {name!r}")
    return name


def validate_container(name: str) -> str:
    if not isinstance(name, str) or not CONTAINER_NAME.fullmatch(name) or len(name) > 255:
        raise UsageError(f"invalid container name {name!r}: Docker names match [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    return name.lstrip("/")


def validate_checkpoint(name: str) -> str:
    if not isinstance(name, str) or not CHECKPOINT_NAME.fullmatch(name) or len(name) > 255:
        raise UsageError(f"invalid checkpoint name {name!r}: it must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ "
                         "(two characters or more, no '/')")
    return name


# Docker's reference grammar, simplified: lower-case path components with an optional registry and a tag
IMAGE_REF = re.compile(r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
                       r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def validate_image_ref(ref: str) -> str:
    """An image name with its tag (``repo/name:tag``), as an OCI image of a checkpoint is named."""
    if not isinstance(ref, str) or len(ref) > 255 or not IMAGE_REF.fullmatch(ref):
        raise UsageError(f"invalid image reference {ref!r}: give NAME:TAG, e.g. checkpoints/cr:c1 (lower case)")
    return ref


def validate_timeout(seconds: float | None) -> float | None:
    """An I/O timeout: a positive number of seconds (None: no limit, for the library's own use)."""
    if seconds is not None and not (isinstance(seconds, (int, float)) and seconds > 0 and seconds < float("inf")):
        raise UsageError(f"invalid I/O timeout {seconds!r}: give a positive number of seconds")
    return seconds
