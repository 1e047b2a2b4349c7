"""What a destination accepts from a source: the container's HostConfig arrives from the source host and is
applied here as root, so a compromised source could ask for a privileged container, a bind of / or a device, and
so get root on this host. Such settings are refused unless the operator allowed them for this migration
(``--allow-privileged``): the CLI, not the source, says so.
"""
from __future__ import annotations

from migrate.errors import PreflightError

# capabilities that amount to root on the host, or to reading its memory and files
HOST_ROOT_CAPS = {"ALL", "SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE", "SYS_RAWIO", "DAC_READ_SEARCH", "SYS_BOOT",
                  "BPF", "PERFMON", "SYS_TIME", "MAC_ADMIN", "MAC_OVERRIDE", "NET_ADMIN", "SYSLOG"}
# host paths whose bind gives the container the host
HOST_PATHS = ("/", "/etc", "/root", "/boot", "/proc", "/sys", "/dev", "/usr", "/bin", "/sbin", "/lib", "/var/lib",
              "/var/lib/docker", "/var/run", "/run", "/var/run/docker.sock", "/run/docker.sock", "/run/containerd")


def _cap(name: str) -> str:
    return name.upper().removeprefix("CAP_")


def dangerous_settings(host_config: dict) -> list[str]:
    """The settings of ``host_config`` that hand the container this host (empty when there are none)."""
    found = []
    if host_config.get("Privileged"):
        found.append("privileged")
    caps = sorted({_cap(c) for c in host_config.get("CapAdd") or []} & HOST_ROOT_CAPS)
    found += [f"capability {c}" for c in caps]
    found += [f"device {d.get('PathOnHost')}" for d in host_config.get("Devices") or []]
    found += [f"device rule {r}" for r in host_config.get("DeviceCgroupRules") or []]
    # (not CgroupnsMode: "host" is Docker's default on cgroup v1, and gives no more than a view of the paths)
    for mode in ("PidMode", "IpcMode", "UsernsMode"):
        if (host_config.get(mode) or "") == "host":
            found.append(f"{mode} host")
    sources = [b.split(":", 1)[0] for b in host_config.get("Binds") or []]
    sources += [m.get("Source", "") for m in host_config.get("Mounts") or [] if m.get("Type") == "bind"]
    for src in sources:
        norm = "/" + src.strip("/") if src.startswith("/") else src
        if norm in HOST_PATHS:
            found.append(f"bind of {norm}")
    for opt in host_config.get("SecurityOpt") or []:
        if opt.replace("=", ":") in ("apparmor:unconfined", "systempaths:unconfined"):
            found.append(f"security-opt {opt}")
    return found


def require_trusted(host_config: dict, name: str, source: str | None, allowed: bool) -> None:
    """Refuse ``host_config`` from ``source`` if it hands the container this host and the operator did not allow
    that; one line naming each setting."""
    found = dangerous_settings(host_config)
    if found and not allowed:
        raise PreflightError(
            f"container {name} from {source or 'the source'} asks for {', '.join(found)}: that would give it this "
            "host, and a source host is not trusted with that", container=name,
            hint="if you trust the source host with root here, migrate with --allow-privileged")
