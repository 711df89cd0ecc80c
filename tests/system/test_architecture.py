"""The layout by stage holds (docs/architecture.md): no import circle between modules, none
between packages (so no import goes up a floor), no private name taken across packages, and the
stages before training import neither torch nor matplotlib."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

SMRI = Path(__file__).resolve().parents[2] / "smri"


def _module(path: Path) -> str:
    parts = path.relative_to(SMRI.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[tuple[str, str | None]]]:
    """Each smri module -> the (module, name) pairs it imports from smri, at any depth
    (imports inside functions count: they go up a floor just the same)."""
    found: dict[str, set[tuple[str, str | None]]] = {}
    modules = {_module(p) for p in SMRI.rglob("*.py")}
    for path in SMRI.rglob("*.py"):
        here = _module(path)
        pairs: set[tuple[str, str | None]] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                pairs |= {(a.name, None) for a in node.names if a.name.startswith("smri")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("smri"):
                for a in node.names:  # `from smri.x import y`: y may be a module itself
                    sub = f"{node.module}.{a.name}"
                    pairs.add((sub, None) if sub in modules else (node.module, a.name))
        found[here] = pairs
    return found


def _package(module: str) -> str:
    """The unit of the stage map: smri.store.reader -> store, smri.errors -> errors."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "smri"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        return list(exc.args[1])
    return None


def test_no_module_imports_one_that_imports_it_back():
    graph = {m: {t for t, _ in pairs if t != m} for m, pairs in _imports().items()}
    # a package's __init__ re-exports its modules: the face, not a floor of its own
    faces = {m for m in graph if (SMRI.parent / m.replace(".", "/") / "__init__.py").exists()}
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and t in faces)}
             for m, ts in graph.items()}  # fmt: skip
    assert _cycle(graph) is None, _cycle(graph)


def test_packages_form_floors_no_import_goes_up():
    graph: dict[str, set[str]] = {}
    for m, pairs in _imports().items():
        graph.setdefault(_package(m), set()).update(
            _package(t) for t, _ in pairs if _package(t) not in {_package(m), "smri"}
        )
    assert _cycle(graph) is None, f"packages import each other: {_cycle(graph)}"


def test_the_package_face_stands_on_top_no_module_imports_from_it():
    """`smri/__init__.py` hands on the API (and names it for type checkers): a stage that took
    `__version__` from it would import upward (the version lives in `smri.version`)."""
    takers = sorted(
        f"{m} takes {name or 'the module'} from smri"
        for m, pairs in _imports().items()
        for t, name in pairs
        if t == "smri" and m != "smri"
    )
    assert not takers, takers


def test_no_private_name_crosses_a_package():
    crossings = [
        f"{m} takes {name} from {t}"
        for m, pairs in _imports().items()
        for t, name in pairs
        if name and name.startswith("_") and name != "__version__"
        and _package(t) != _package(m)
    ]  # fmt: skip
    assert not crossings, crossings


@pytest.mark.parametrize(
    "module", ["smri", "smri.preprocessing", "smri.phantoms", "smri.discovery", "smri.store"]
)
def test_stages_before_training_load_neither_torch_nor_matplotlib(module):
    code = f"import sys, {module}; print(sorted({{'torch', 'matplotlib'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", (module, out.stdout)
