"""Whether this host's CPU offers what the source's may have given its processes: a program that picked AVX-512
(say) at start-up dies of SIGILL on a CPU without it, after the move. CRIU describes a CPU in its cpuinfo image
(``criu cpuinfo dump``) and checks one against the CPU it runs on (``criu cpuinfo check``: the instruction
capabilities by default); this module names what is missing. x86 only: elsewhere CRIU has no cpuinfo, and
nothing is checked."""
from __future__ import annotations

import base64
import subprocess
import tempfile
from pathlib import Path

IMAGE = "cpuinfo.img"
# capability words as CRIU (and Linux's cpufeatures.h) number them -> (CPUID register, {bit: feature})
WORDS: dict[int, tuple[str, dict[int, str]]] = {
    0: ("CPUID 1 EDX", {0: "fpu", 15: "cmov", 23: "mmx", 25: "sse", 26: "sse2"}),
    4: ("CPUID 1 ECX", {0: "sse3", 1: "pclmulqdq", 9: "ssse3", 12: "fma", 19: "sse4_1", 20: "sse4_2",
                        22: "movbe", 23: "popcnt", 25: "aes", 26: "xsave", 28: "avx", 29: "f16c", 30: "rdrand"}),
    6: ("CPUID 0x80000001 ECX", {5: "abm", 6: "sse4a", 11: "xop", 16: "fma4", 21: "tbm"}),
    9: ("CPUID 7 EBX", {3: "bmi1", 5: "avx2", 8: "bmi2", 9: "erms", 11: "rtm", 16: "avx512f", 17: "avx512dq",
                        18: "rdseed", 19: "adx", 21: "avx512ifma", 23: "clflushopt", 24: "clwb", 28: "avx512cd",
                        29: "sha_ni", 30: "avx512bw", 31: "avx512vl"}),
    10: ("CPUID 0xD:1 EAX", {0: "xsaveopt", 1: "xsavec", 3: "xsaves"}),
    12: ("CPUID 7:1 EAX", {4: "avx_vnni", 5: "avx512_bf16"}),
    16: ("CPUID 7 ECX", {1: "avx512vbmi", 6: "avx512_vbmi2", 8: "gfni", 9: "vaes", 10: "vpclmulqdq",
                         11: "avx512_vnni", 12: "avx512_bitalg", 14: "avx512_vpopcntdq", 22: "rdpid"}),
    18: ("CPUID 7 EDX", {8: "avx512_vp2intersect", 14: "serialize", 22: "amx_bf16", 23: "avx512_fp16",
                         24: "amx_tile", 25: "amx_int8"}),
}


def _criu(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["criu", "cpuinfo", *argv], capture_output=True, text=True, timeout=60)


def dump() -> str | None:
    """This host's cpuinfo image (base64), or None where CRIU cannot describe the CPU."""
    with tempfile.TemporaryDirectory(prefix="cmigrate-cpu-") as d:
        res = _criu("dump", "-D", d, "-o", "dump.log")
        image = Path(d) / IMAGE
        return base64.b64encode(image.read_bytes()).decode() if res.returncode == 0 and image.exists() else None


def missing(source_image: str) -> list[str]:
    """What the CPU described by ``source_image`` (base64, from ``dump()`` on the source) has and this one lacks:
    feature names, ``"<register> bit N"`` for the unnamed, or CRIU's own words; [] if none. CRIU's check leaves
    out some words (CPUID 7 ECX, with AVX-512 VBMI, VAES, GFNI, was not compared here): any instruction feature
    named in ``WORDS`` that this CPU lacks counts too."""
    with tempfile.TemporaryDirectory(prefix="cmigrate-cpu-") as d:
        Path(d, IMAGE).write_bytes(base64.b64decode(source_image))
        res = _criu("check", "-D", d, "-o", "check.log")
        said = [line.split(": ", 2)[-1] for line in Path(d, "check.log").read_text(errors="replace").splitlines()
                if line.startswith("Error")] if res.returncode else []
    here = dump()
    found = _difference(base64.b64decode(source_image), base64.b64decode(here)) if here else []
    if res.returncode == 0:
        return [name for name, known in found if known]
    return [name for name, _ in found] or said[-1:] or ["CPU features (criu cpuinfo check failed)"]


def _capabilities(image: bytes) -> tuple[list[int], int]:
    import io

    import pycriu
    entry = pycriu.images.load(io.BytesIO(image))["entries"][0]["x86_entry"][0]
    return list(entry.get("capability") or []), int(entry.get("xfeatures_mask") or 0)


def _difference(source: bytes, here: bytes) -> list[tuple[str, bool]]:
    """(name, whether ``WORDS`` names it) of each capability the source has and this CPU lacks."""
    try:
        (src, src_x), (dst, dst_x) = _capabilities(source), _capabilities(here)
    except Exception:   # not x86, or an image pycriu cannot read: CRIU's words stand
        return []
    found = []
    for word, have in enumerate(src):
        lacking = have & ~(dst[word] if word < len(dst) else 0)
        register, known = WORDS.get(word, (f"capability word {word}", {}))
        found += [(known.get(bit, f"{register} bit {bit}"), bit in known) for bit in range(32) if lacking >> bit & 1]
    if src_x & ~dst_x:
        found.append((f"xsave state components {src_x & ~dst_x:#x}", False))
    return found
