"""What a checkpoint holds, read from CRIU's images with pycriu (``cmigrate checkpoint inspect``).

A checkpoint directory holds CRIU's images: ``pstree.img`` (the process tree), per process ``core-PID.img``
(name, state, credentials), ``ids-PID.img`` (its namespaces, its table of descriptors), ``mm-PID.img`` (its
memory areas and where its command line lies), ``pagemap-PID.img`` with ``pages-N.img`` (the memory's contents),
``fdinfo-N.img`` with ``files.img`` (its descriptors and what they are), ``mountpoints-N.img`` (mounts) and
``stats-dump`` (CRIU's own figures). cmigrate adds ``cmigrate/meta.json`` and ``cmigrate/rootfs.tar`` (the writable
layer). Everything here reads; nothing is restored or changed. Checkpoints hold secrets: the agent reads them as
root, only in directories of root's (the CLI asks it on the host where the checkpoint is).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
import struct
import tarfile
from pathlib import Path

# core.tc.task_state (criu/include/pstree.h)
STATES = {1: "alive", 2: "dead", 3: "stopped", 6: "zombie"}
# pagemap entry flags (criu/include/pagemap.h)
PE_PARENT, PE_PRESENT = 1 << 0, 1 << 2
PAGE = 4096
SEARCH_LIMIT = 20   # matches reported per search
CMDLINE_LIMIT = 4096


def _load(path: Path) -> list[dict]:
    import pycriu   # from CRIU's own tree (install.sh), not PyPI
    try:
        with open(path, "rb") as f:
            return pycriu.images.load(f)["entries"]
    except FileNotFoundError:
        return []


def _address(words: list[int], family: int) -> str:
    raw = struct.pack(f"<{len(words)}I", *words)
    if family == socket.AF_INET6:
        return f"[{ipaddress.IPv6Address(raw[:16])}]"
    return socket.inet_ntop(socket.AF_INET, raw[:4])


class Checkpoint:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.tree = _load(directory / "pstree.img")
        self.files = {e["id"]: e for e in _load(directory / "files.img")}

    # ------------------------------------------------------------------ processes
    def processes(self) -> list[dict]:
        procs = []
        for node in self.tree:
            pid = node["pid"]
            core = (_load(self.dir / f"core-{pid}.img") or [{}])[0]
            tc = core.get("tc") or {}
            ids = (_load(self.dir / f"ids-{pid}.img") or [{}])[0]
            state = STATES.get(tc.get("task_state"), str(tc.get("task_state")))
            mm = (_load(self.dir / f"mm-{pid}.img") or [{}])[0] if state != "zombie" else {}
            procs.append({
                "pid": pid, "ppid": node.get("ppid", 0), "threads": len(node.get("threads") or [pid]),
                "name": tc.get("comm", ""), "state": state,
                "uid": ((core.get("thread_core") or {}).get("creds") or {}).get("uid"),
                "cmdline": self._cmdline(pid, mm) if mm else [],
                "memory_bytes": sum(v["end"] - v["start"] for v in mm.get("vmas") or []),
                "dumped_bytes": sum(e.get("nr_pages", 0) * PAGE for e in self._pagemap(pid)[1:]
                                    if e.get("flags", 0) & PE_PRESENT),
                "files": self._descriptors(ids.get("files_id")) if state != "zombie" else [],
            })
        return procs

    def _descriptors(self, files_id) -> list[dict]:
        if files_id is None:
            return []
        out = []
        for fd in _load(self.dir / f"fdinfo-{files_id}.img"):
            entry = self.files.get(fd["id"], {})
            out.append({"fd": fd["fd"], "type": fd["type"], "what": self._describe(entry)})
        return sorted(out, key=lambda d: d["fd"])

    @staticmethod
    def _describe(entry: dict) -> str:
        kind = entry.get("type")
        if kind == "REG":
            return entry["reg"].get("name", "")
        if kind == "INETSK":
            sk = entry["isk"]
            proto = {6: "tcp", 17: "udp"}.get(sk.get("proto"), f"proto {sk.get('proto')}")
            local = f"{_address(sk.get('src_addr') or [0], sk.get('family'))}:{sk.get('src_port')}"
            if sk.get("state") == 10:   # TCP_LISTEN
                return f"{proto} listening on {local}"
            peer = f"{_address(sk.get('dst_addr') or [0], sk.get('family'))}:{sk.get('dst_port')}"
            return f"{proto} {local} -> {peer}"
        if kind == "UNIXSK":
            name = entry["usk"].get("name") or b""
            return f"unix {name.decode(errors='replace') if isinstance(name, bytes) else name}".rstrip()
        if kind in ("PIPE", "FIFO"):
            return f"{kind.lower()} {entry.get(kind.lower(), {}).get('pipe_id', '')}"
        return (kind or "?").lower()

    # ------------------------------------------------------------------ memory
    def _pagemap(self, pid: int) -> list[dict]:
        return _load(self.dir / f"pagemap-{pid}.img")

    def pages(self, pid: int):
        """(virtual address, bytes) of each run of this process's pages held in the checkpoint."""
        pm = self._pagemap(pid)
        if not pm:
            return
        pages_file = self.dir / f"pages-{pm[0]['pages_id']}.img"
        with open(pages_file, "rb") as f:
            for e in pm[1:]:
                if e.get("flags", 0) & PE_PARENT or not e.get("flags", 0) & PE_PRESENT:
                    continue
                yield e["vaddr"], f.read(e["nr_pages"] * PAGE)

    def read(self, pid: int, start: int, end: int) -> bytes:
        out = b""
        for vaddr, data in self.pages(pid):
            lo, hi = max(start, vaddr), min(end, vaddr + len(data))
            if lo < hi:
                out += data[lo - vaddr:hi - vaddr]
        return out

    def _cmdline(self, pid: int, mm: dict) -> list[str]:
        start, end = mm.get("mm_arg_start", 0), mm.get("mm_arg_end", 0)
        if not 0 < end - start <= CMDLINE_LIMIT:
            return []
        raw = self.read(pid, start, end)
        return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")] if raw else []

    def search(self, text: str, limit: int = SEARCH_LIMIT) -> list[dict]:
        """Where ``text`` (UTF-8) lies in the processes' memory: pid, address, and the bytes around it."""
        needle, found = text.encode(), []
        for node in self.tree:
            for vaddr, data in self.pages(node["pid"]):
                at = data.find(needle)
                while at >= 0 and len(found) < limit:
                    around = data[max(0, at - 32):at + len(needle) + 32]
                    found.append({"pid": node["pid"], "address": hex(vaddr + at),
                                  "context": around.decode("ascii", errors="replace")})
                    at = data.find(needle, at + 1)
        return found

    # ------------------------------------------------------------------ the rest
    def namespaces(self) -> dict:
        inv = (_load(self.dir / "inventory.img") or [{}])[0]
        return {k.removesuffix("_ns_id"): v for k, v in (inv.get("root_ids") or {}).items() if k.endswith("_ns_id")}

    def mounts(self) -> list[dict]:
        found = []
        for img in sorted(self.dir.glob("mountpoints-*.img")):
            for m in _load(img):
                found.append({"mountpoint": m.get("mountpoint", ""), "fstype": m.get("fstype"),
                              "source": m.get("source", ""), "external": bool(m.get("ext_key") or m.get("ext_mount"))})
        return found

    def stats(self) -> dict:
        entries = _load(self.dir / "stats-dump")
        d = entries[0].get("dump", {}) if entries else {}
        return {k: d[k] for k in ("freezing_time", "frozen_time", "memdump_time", "memwrite_time",
                                  "pages_scanned", "pages_written") if k in d}

    def _layer(self):
        """(path, tar member, deleted) for each entry of the saved writable layer but directories; a deletion is a
        whiteout (``.wh.NAME``, or overlayfs' 0:0 character device)."""
        tar = self.dir / "cmigrate" / "rootfs.tar"
        if not tar.exists():
            return
        with tarfile.open(tar) as t:
            for m in t:
                name = "/" + m.name.lstrip("./")
                if name.rsplit("/", 1)[-1].startswith(".wh."):
                    yield name.replace(".wh.", "", 1), m, t, True
                elif m.ischr() and m.devmajor == 0 and m.devminor == 0:
                    yield name, m, t, True
                elif not m.isdir():
                    yield name, m, t, False

    def layer(self) -> dict:
        """The writable layer saved with the checkpoint: its size and the paths it changes (deleted ones too)."""
        if not (self.dir / "cmigrate" / "rootfs.tar").exists():
            return {}
        changed, deleted, size = [], [], 0
        for name, m, _, gone in self._layer():
            if gone:
                deleted.append(name)
            else:
                changed.append(name)
                size += m.size
        return {"bytes": size, "changed": sorted(changed), "deleted": sorted(deleted)}

    def layer_files(self) -> dict[str, str]:
        """Each path of the saved writable layer -> a digest of what it is (content, mode, link target; a
        deletion is "deleted")."""
        files: dict[str, str] = {}
        for name, m, t, gone in self._layer():
            if gone:
                files[name] = "deleted"
                continue
            h = hashlib.sha256(f"{m.type!r} {m.mode:o} {m.linkname}".encode())
            if m.isfile():
                for chunk in iter(lambda f=t.extractfile(m): f.read(1 << 20), b""):
                    h.update(chunk)
            files[name] = h.hexdigest()
        return files

    def meta(self) -> dict:
        try:
            return json.loads((self.dir / "cmigrate" / "meta.json").read_text())
        except (OSError, ValueError):
            return {}

    def describe(self) -> dict:
        return {"dir": str(self.dir), "meta": self.meta(), "processes": self.processes(), "mounts": self.mounts(),
                "namespaces": self.namespaces(), "layer": self.layer(), "stats": self.stats()}


def diff(a: Checkpoint, b: Checkpoint) -> dict:
    """From checkpoint ``a`` to ``b``: processes added and removed (by pid and name), those whose state changed (a
    server that died and was not reaped is a zombie now), each lasting process's change in memory, and the writable layer's paths added, removed (or deleted) and changed."""
    pa = {(p["pid"], p["name"]): p for p in a.processes()}
    pb = {(p["pid"], p["name"]): p for p in b.processes()}
    brief = lambda p: {"pid": p["pid"], "name": p["name"], "cmdline": p["cmdline"]}  # noqa: E731
    memory = [{"pid": k[0], "name": k[1], "before": pa[k]["memory_bytes"], "after": pb[k]["memory_bytes"],
               "change": pb[k]["memory_bytes"] - pa[k]["memory_bytes"]} for k in sorted(pa.keys() & pb.keys())]
    la, lb = a.layer_files(), b.layer_files()
    gone = sorted(p for p in la.keys() - lb.keys() if la[p] != "deleted") + \
        sorted(p for p in lb if lb[p] == "deleted" and la.get(p) != "deleted")
    return {
        "processes_added": [brief(pb[k]) for k in sorted(pb.keys() - pa.keys())],
        "processes_removed": [brief(pa[k]) for k in sorted(pa.keys() - pb.keys())],
        "processes_changed": [{"pid": k[0], "name": k[1], "before": pa[k]["state"], "after": pb[k]["state"]}
                              for k in sorted(pa.keys() & pb.keys()) if pa[k].get("state") != pb[k].get("state")],
        "memory": memory,
        "memory_change": sum(p["memory_bytes"] for p in pb.values()) - sum(p["memory_bytes"] for p in pa.values()),
        "files_added": sorted(p for p in lb.keys() - la.keys() if lb[p] != "deleted"),
        "files_removed": sorted(set(gone)),
        "files_changed": sorted(p for p in la.keys() & lb.keys() if la[p] != lb[p] and "deleted" not in (la[p], lb[p])),
    }
