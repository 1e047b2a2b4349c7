"""install.sh's package check (scripts/missing-packages.sh) against a fake dpkg-query: a new machine with none of
the packages, one with some, one with all. The check once reported nothing missing on a new machine (a pipeline
under pipefail stopped at the first unknown package), and the install then failed in the CRIU build."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "scripts" / "missing-packages.sh"
PACKAGES = ["docker.io", "docker-cli", "openssh-server", "libnet1-dev", "protobuf-compiler"]

# dpkg-query as Debian's: exit 1 and a message on stderr for a package dpkg has never heard of.
FAKE_DPKG_QUERY = """#!/bin/sh
pkg=""
for a in "$@"; do pkg=$a; done
while read -r name status; do
    if [ "$name" = "$pkg" ]; then printf '%s ' "$status"; exit 0; fi
done < "$FAKE_DPKG_DB"
echo "dpkg-query: no packages found matching $pkg" >&2
exit 1
"""


def missing(tmp_path: Path, installed: dict[str, str]) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "dpkg-query"
    fake.write_text(FAKE_DPKG_QUERY)
    fake.chmod(0o755)
    db = tmp_path / "db"
    db.write_text("".join(f"{name} {status}\n" for name, status in installed.items()))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DPKG_DB": str(db)}
    res = subprocess.run(["bash", str(CHECK), *PACKAGES], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_a_new_machine_misses_every_package(tmp_path):
    assert missing(tmp_path, {}) == PACKAGES


def test_some_installed_lists_exactly_the_rest(tmp_path):
    assert missing(tmp_path, {"openssh-server": "ii", "libnet1-dev": "ii"}) == [
        "docker.io", "docker-cli", "protobuf-compiler"]


def test_all_installed_lists_nothing(tmp_path):
    assert missing(tmp_path, {p: "ii" for p in PACKAGES}) == []


@pytest.mark.parametrize("status", ["rc", "iU", "un", "iF"])
def test_removed_or_half_installed_packages_count_as_missing(tmp_path, status):
    installed = {p: "ii" for p in PACKAGES} | {"docker.io": status}
    assert missing(tmp_path, installed) == ["docker.io"]


def test_install_sh_uses_the_check_and_installs_the_docker_client_on_debian_13():
    text = (REPO / "install.sh").read_text()
    assert "scripts/missing-packages.sh" in text
    assert "runtime_pkgs+=(docker-cli)" in text
