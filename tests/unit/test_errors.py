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


def test_an_error_line_never_carries_terminal_controls():
    from migrate.errors import DockerError
    exc = DockerError("restore failed: \x1b]0;owned\x07\x1b[2J gone\r", host="hostB", detail="x\x1b[31my")
    assert "\x1b" not in exc.line() and "\x07" not in exc.line() and "\r" not in exc.line()
    assert "\\x1b]0;owned" in exc.line()


def test_str_of_an_error_includes_a_hint_added_later():
    from migrate.errors import CheckpointError
    exc = CheckpointError("dump failed", host="hostA")
    exc.hint = "rolled back: cr runs on hostA again"
    assert str(exc) == "hostA: dump failed (rolled back: cr runs on hostA again)"


def test_one_writer_of_criu_failures(tmp_path):
    from agents.dockerd import criu_failure
    from migrate.errors import CheckpointError, RestoreError
    log = tmp_path / "dump.log"
    log.write_text("(00.1) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self\n"
                   "(00.2) Error (criu/file-lock.c:110): Some file locks are hold by dumping tasks!\n")
    exc = criu_failure(CheckpointError, "checkpoint of cr", log, "runc failed", container="cr")
    assert exc.message == "checkpoint of cr failed, CRIU says: Some file locks are hold by dumping tasks!"
    assert exc.hint == f"full log: {log}" and "file-lock.c:110" in exc.detail and exc.container == "cr"
    quiet = criu_failure(RestoreError, "receiving the memory pages", tmp_path / "none.log", "exit status 1",
                         speaker="CRIU's page server")
    assert quiet.message == "receiving the memory pages failed, CRIU's page server says: exit status 1"
    assert quiet.hint == ""
