from migrate.errors import CheckpointError, MigrationError, PreflightError
from migrate.hostinfo import CriuInfo, parse_version


def test_errors_are_one_line_with_host_and_hint():
    err = PreflightError("CRIU 4.1.1 is too old", host="hostB", hint="run ./install.sh")
    assert isinstance(err, MigrationError)
    assert str(err) == "hostB: CRIU 4.1.1 is too old (run ./install.sh)"
    assert "\n" not in str(CheckpointError("dump failed", host="a", detail="line1\nline2"))


def test_criu_version_and_modes():
    assert parse_version("Version: 4.2.1\nGitID: v4.2.1\n") == (4, 2, 1)
    assert parse_version("criu: command not found") is None
    info = CriuInfo(version="4.2.1", check_ok=True, uffd=True)
    assert info.modes() == ["stop-copy", "post-copy"]
    assert CriuInfo(version="4.2.1", check_ok=False).modes() == []
