"""What cmigrate checkpoint create tells CRIU through the cmigrate-runc runtime (held file locks, watched files'
paths), and what it refuses under plain runc, where Docker's checkpoint can pass CRIU nothing."""
from __future__ import annotations

import pytest

from agents import checkpoint
from migrate.errors import PreflightError


def info(runtime: str) -> dict:
    return {"Id": "c0ffee", "State": {"Pid": 4242}, "HostConfig": {"Runtime": runtime}}


@pytest.fixture
def held(monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint, "RESTORE_MAPS", tmp_path)

    def hold(locks=(), hints=""):
        monkeypatch.setattr(checkpoint.file_locks, "held", lambda pid: list(locks))
        monkeypatch.setattr(checkpoint.watches, "irmap_hints", lambda pid, name: hints)
    return hold


def test_under_cmigrate_runc_the_dump_gets_file_locks_and_hints(held, tmp_path):
    held(["pid 7 fd 3 (FLOCK on /held.lock)"], "irmap-scan-path /w\n")
    assert checkpoint._dump_options(info("cmigrate-runc"), "c1") == "file-locks\nirmap-scan-path /w\n"
    assert (tmp_path / "c0ffee.dump").read_text() == "file-locks\nirmap-scan-path /w\n"


def test_nothing_to_tell_writes_nothing(held, tmp_path):
    held()
    assert checkpoint._dump_options(info("cmigrate-runc"), "c1") == ""
    assert not (tmp_path / "c0ffee.dump").exists()


@pytest.mark.parametrize("locks, hints, says", [
    (["pid 7 fd 3 (FLOCK on /held.lock)"], "", "holds file locks (pid 7 fd 3 (FLOCK on /held.lock))"),
    ([], "irmap-scan-path /etc\nirmap-scan-path /w\n", "watches files CRIU cannot find by itself (/w)"),
])
def test_under_runc_what_docker_cannot_carry_is_refused(held, locks, hints, says):
    held(locks, hints)
    with pytest.raises(PreflightError) as err:
        checkpoint._dump_options(info("runc"), "c1")
    assert err.value.message == f"container c1 {says}, which Docker's checkpoint cannot carry under the runc runtime"
    assert "--runtime cmigrate-runc" in err.value.hint


def test_under_runc_a_watch_in_etc_is_left_to_criu(held):
    held([], "irmap-scan-path /etc\n")
    assert checkpoint._dump_options(info(""), "c1") == ""


def test_a_clone_gets_its_own_hostname_no_published_ports_and_the_fast_runtime():
    orig = {"Config": {"Hostname": "abc123", "Image": "busybox", "Cmd": ["sh"]},
            "HostConfig": {"Runtime": "runc", "PortBindings": {"80/tcp": [{"HostPort": "8080"}]},
                           "PublishAllPorts": True, "Binds": ["v:/v"]},
            "NetworkSettings": {"Networks": {"appnet": {}}}}
    config = checkpoint._clone_config(orig)
    assert "Hostname" not in config and config["Cmd"] == ["sh"]
    assert config["HostConfig"] == {"Runtime": "cmigrate-runc", "PortBindings": {}, "PublishAllPorts": False,
                                    "Binds": ["v:/v"]}
    assert config["NetworkingConfig"] == {"EndpointsConfig": {"appnet": {}}}
    assert orig["HostConfig"]["Runtime"] == "runc" and "Hostname" in orig["Config"]   # the original untouched
