"""The README's install on NEW Debian machines: fresh minimal bookworm and trixie roots (debootstrap, cached), with
only what every build machine has copied in, the commit under test cloned into each. In each: ./install.sh from
nothing succeeds and a second run finishes in under 30 s. In trixie (Debian 13, Docker 26) the lab comes up and the
core lab tests pass. The build machines had their packages installed long ago, so without this a broken install
step stays green (it did: the package check once saw nothing missing on a new machine).

Each case takes minutes (debootstrap once, ~90 s of install, the trixie lab tests ~6 min); tests/platforms/
new-machine.sh runs the same by hand."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "platforms" / "new-machine.sh"
LOGS = Path(os.environ.get("CMIGRATE_PLATFORM_LOGS", "/var/tmp/cmigrate-platforms/logs"))
# what issue 15 names: the migrate, checkpoint, modes and recover lab tests, and the platform's own
CORE_LAB_TESTS = ["tests/lab/test_migrate.py", "tests/lab/test_checkpoint.py", "tests/lab/test_modes.py",
                  "tests/lab/test_recover.py", "tests/lab/test_platform.py"]

pytestmark = pytest.mark.platforms


def new_machine(suite: str, *pytest_args: str, timeout: float) -> str:
    if os.geteuid() != 0:
        pytest.fail("the new-machine check needs root (debootstrap, namespaces)")
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{suite}.log"
    argv = [str(SCRIPT), suite] + (["--", *pytest_args] if pytest_args else [])
    with open(log, "w") as out:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    text = log.read_text(errors="replace")
    assert res.returncode == 0, f"{suite}: exit {res.returncode}; log {log}:\n" + "\n".join(text.splitlines()[-40:])
    return text


def test_install_from_nothing_on_debian_12():
    text = new_machine("bookworm", timeout=1200)
    assert "step 1 passed" in text and "step 2: the second run took" in text


def test_debian_13_installs_and_passes_the_core_lab_tests():
    text = new_machine("trixie", "-v", *CORE_LAB_TESTS, timeout=2400)
    assert "step 1 passed" in text and "step 3 passed" in text
    assert "[trixie] install: done" in text and "docker-cli" in text   # the client is its own package there
    summary = [ln for ln in text.splitlines() if re.search(r"\[trixie\] =+ .*\d+ passed", ln)]
    assert summary and " failed" not in summary[-1], summary
