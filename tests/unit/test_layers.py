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


def _module_registries(path: Path) -> list[str]:
    """Module-level names bound to an empty mutable container: where state between calls would collect."""
    found = []
    for node in ast.parse(path.read_text()).body:
        targets, value = [], None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        literal = isinstance(value, (ast.Dict, ast.List, ast.Set)) and \
            not getattr(value, "keys", getattr(value, "elts", None))
        call = isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and \
            value.func.id in ("dict", "set", "list") and not value.args
        empty = literal or call
        if empty:
            found += [t.id for t in targets if isinstance(t, ast.Name)]
    return found


@pytest.mark.parametrize("path", sorted((REPO / "agents").glob("*.py")), ids=lambda p: p.name)
def test_no_module_level_registry_of_migrations(path):
    # one migration's state lives in its SourceMigration / DestinationMigration, reached through the session
    assert _module_registries(path) == []


def test_the_registry_check_sees_one():
    sample = REPO / "agents" / "__init__.py"
    assert _module_registries(sample) == []
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".py") as f:
        f.write("HELD: dict[str, int] = {}\nPREDUMPS = set()\nOK = {'a': 1}\n")
        f.flush()
        assert _module_registries(Path(f.name)) == ["HELD", "PREDUMPS"]


MAX_LINES = 60


@pytest.mark.parametrize("path", sorted((REPO / "agents").glob("*.py")) + [REPO / "migrate" / "migration.py"],
                         ids=lambda p: p.name)
def test_functions_are_short(path):
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert long == []


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports, at module level or inside functions."""
    mods = {}
    for pkg in ("agents", "migrate", "transport"):
        for f in (REPO / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            mods[name] = f
    graph = {}
    for name, f in mods.items():
        deps = set()
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.Import):
                deps |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                subs = {f"{n.module}.{a.name}" for a in n.names} & mods.keys()
                deps |= subs | ({n.module} if len(subs) < len(n.names) else set())
        graph[name] = (deps & mods.keys()) - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done, path = set(), []

    def visit(v: str) -> list[str] | None:
        if v in path:
            return path[path.index(v):] + [v]
        if v in done:
            return None
        path.append(v)
        for w in sorted(graph[v]):
            if found := visit(w):
                return found
        path.pop()
        done.add(v)
        return None
    for v in sorted(graph):
        if found := visit(v):
            return found
    return None


def test_no_import_cycle():
    assert _cycle(_import_graph()) is None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]   # the check sees one
