"""The Vagrant lab (vagrant/) as far as it can be checked without starting a VM: the Vagrantfile is valid for
Vagrant, and every shell script of the project passes shellcheck."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = ["install.sh", "test.sh", "demo.sh", ".ci/run", "agents/cmigrate-runc", "vagrant/keys.sh",
           "vagrant/provision.sh", "vagrant/ssh-config.sh", "vagrant/softdirty-vm.sh"]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:   # install.sh installs both; a missing one is a broken install, not a reason to skip
        pytest.fail(f"{tool} is not installed: run ./install.sh")
    return path


def test_vagrantfile_is_valid(tmp_path):
    env = {**os.environ, "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"), "VAGRANT_HOME": str(tmp_path / "home"),
           "VAGRANT_CHECKPOINT_DISABLE": "1"}
    res = subprocess.run([_need("vagrant"), "validate", "--ignore-provider"], cwd=REPO / "vagrant", env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Vagrantfile validated successfully" in res.stdout


def test_vagrantfile_defines_the_two_lab_hosts_provisioned_by_the_installer():
    text = (REPO / "vagrant" / "Vagrantfile").read_text()
    assert '"hostA" => "192.168.56.11"' in text and '"hostB" => "192.168.56.12"' in text
    assert "debian/bookworm64" in text and ":libvirt" in text and ":virtualbox" in text
    provision = (REPO / "vagrant" / "provision.sh").read_text()
    assert '"$src/install.sh"' in provision and '"experimental": true' in provision


def test_shell_scripts_pass_shellcheck():
    res = subprocess.run([_need("shellcheck"), *SCRIPTS], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ssh_config_script_refuses_without_a_lab(tmp_path):
    copy = tmp_path / "vagrant"
    copy.mkdir()
    shutil.copy(REPO / "vagrant" / "ssh-config.sh", copy)
    res = subprocess.run(["sh", str(copy / "ssh-config.sh")], capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "run 'vagrant up' first" in res.stderr and res.stdout == ""


def test_keys_script_makes_keys_once_and_pins_every_host(tmp_path):
    copy = tmp_path / "vagrant"
    copy.mkdir()
    shutil.copy(REPO / "vagrant" / "keys.sh", copy)
    argv = ["sh", str(copy / "keys.sh"), "hostA=192.168.56.11", "hostB=192.168.56.12"]
    subprocess.run(argv, check=True, timeout=60)
    keys = copy / ".keys"
    first = (keys / "id_ed25519").read_bytes()
    subprocess.run(argv, check=True, timeout=60)
    assert (keys / "id_ed25519").read_bytes() == first, "a second run must keep the keys"
    assert oct(keys.stat().st_mode & 0o777) == "0o700"
    lines = (keys / "known_hosts").read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["hostA,192.168.56.11", "hostB,192.168.56.12"]
    assert lines[0].split()[2] == (keys / "host_hostA.pub").read_text().split()[1]


def test_softdirty_vm_names_no_mirror_and_refuses_an_unknown_suite():
    script = REPO / "vagrant" / "softdirty-vm.sh"
    text = script.read_text()
    assert "://" not in text, "the VM's mirror comes from this machine's apt sources, never from the script"
    assert "VM_SUITE" in text and "trixie" in text and "mkfs.ext4" in text
    res = subprocess.run(["bash", str(script), "build"], env={**os.environ, "VM_SUITE": "potato"},
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "VM_SUITE=potato: choose bookworm or trixie" in res.stderr
