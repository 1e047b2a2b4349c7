"""No submodule of the lab package has the name of one of its functions or constants (``migrate/lab/client.py``
once did: importing it replaced ``lab.client()`` with the module, and the lab tests using it failed in CI)."""
from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

from migrate import lab


def _defined(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def test_no_submodule_shadows_a_name_of_the_package():
    submodules = {m.name for m in pkgutil.iter_modules(lab.__path__)}
    defined = _defined(Path(lab.__file__))
    assert {"client", "client_socket", "up"} <= defined
    assert not submodules & defined, submodules & defined
