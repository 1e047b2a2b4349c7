"""The CPU check, with this machine's real CRIU: its own CPU passes; a doctored cpuinfo image (a source CPU with
AVX-512 and SHA that this one lacks) is refused in one line naming what is missing."""
from __future__ import annotations

import base64
import io

import pytest

from agents import cpu
from agents.destination import _require_cpu
from migrate.errors import PreflightError


@pytest.fixture(scope="module")
def here() -> str:
    image = cpu.dump()
    assert image is not None, "criu cpuinfo dump failed on this x86 machine"
    return image


def _doctored(image: str, bits: dict[int, list[int]]) -> tuple[str, dict[int, list[int]]]:
    """``image`` with ``bits`` (capability word -> bit numbers) set; those this CPU lacks."""
    import pycriu
    img = pycriu.images.load(io.BytesIO(base64.b64decode(image)))
    caps = img["entries"][0]["x86_entry"][0]["capability"]
    lacking = {w: [b for b in bs if not caps[w] >> b & 1] for w, bs in bits.items()}
    for w, bs in bits.items():
        for b in bs:
            caps[w] |= 1 << b
    out = io.BytesIO()
    pycriu.images.dump(img, out)
    return base64.b64encode(out.getvalue()).decode(), lacking


def test_the_same_cpu_passes(here):
    assert cpu.missing(here) == []
    _require_cpu("c", here, "hostA")


@pytest.mark.parametrize("bits,names", [
    # CPUID 7 EBX: rtm (CRIU's own check refuses it) and an unnamed bit 4 (hle)
    ({9: [4, 11]}, {(9, 4): "CPUID 7 EBX bit 4", (9, 11): "rtm"}),
    # CPUID 7 ECX: avx512vbmi and vaes (CRIU's check passes these; cmigrate's names them)
    ({16: [1, 9]}, {(16, 1): "avx512vbmi", (16, 9): "vaes"}),
])
def test_a_cpu_lacking_what_the_source_had_is_refused_naming_it(here, bits, names):
    doctored, lacking = _doctored(here, bits)
    expected = [names[(w, b)] for w, bs in sorted(lacking.items()) for b in bs]
    assert expected, "this CPU has every doctored bit: the test would prove nothing"
    assert cpu.missing(doctored) == expected
    with pytest.raises(PreflightError) as err:
        _require_cpu("c", doctored, "hostA")
    line = err.value.line()
    assert "\n" not in line and "this host's CPU lacks what hostA's has: " in line and "SIGILL" in line, line
    assert expected[0] in line and "--ignore-cpu" in (err.value.hint or "")
