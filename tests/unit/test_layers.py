"""The layers' arrows point down, and errors cross the wire as stable codes."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import migrate.errors as errors
from transport.errors import CODES, AgentError, from_wire
from transport.framing import ProtocolError

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((REPO / "transport").glob("*.py")), ids=lambda p: p.name)
def test_transport_imports_nothing_above_it(path):
    above = {n for n in _imports(path) if n.split(".")[0] in ("migrate", "agents")}
    assert above == set(), f"{path.name} imports {above}"


def test_every_error_class_has_its_own_code_and_comes_back_from_the_wire():
    classes = [errors.MigrationError, errors.TransportError, errors.HostKeyError, errors.AgentError,
               ProtocolError, errors.UsageError, errors.PreflightError, errors.DockerError, errors.CheckpointError,
               errors.DumpAborted, errors.RestoreError, errors.RollbackError, errors.Interrupted, errors.LabError]
    assert len({c.code for c in classes}) == len(classes)
    for cls in classes:
        exc = cls("it failed", host="hostB", container="cr", hint="do this")
        back = from_wire({"type": "error"} | exc.to_dict(), "elsewhere")
        assert type(back) is cls and back.line() == exc.line()
    assert CODES["dump-aborted"] is errors.DumpAborted


def test_the_class_name_on_the_wire_means_nothing():
    msg = {"type": "error", "code": "preflight", "error": "SomethingRenamed", "message": "no"}
    assert type(from_wire(msg, "h")) is errors.PreflightError
    unknown = {"type": "error", "code": "from-a-newer-version", "error": "PreflightError", "message": "no"}
    assert type(from_wire(unknown, "h")) is AgentError


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "agents").glob("*.py") if p.name != "main.py"),
                         ids=lambda p: p.name)
def test_agent_modules_do_not_import_the_dispatcher(path):
    # agents/main.py only dispatches: the operations never reach back into it (they once did, for SessionLost)
    assert "agents.main" not in _imports(path)
