"""The package's shape stays readable: layers without import circles, small modules and
functions, no private names across modules, and a docstring on every subpackage.

Everything is read with ``ast``; nothing is imported. The layers, lowest first::

    errors, config, fsutil, validate, catalog  (top-level modules)
    models -> runtime -> live -> events -> serve -> cluster | offline -> cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "streamrec"
LAYERS = {"": 0, "models": 1, "runtime": 2, "live": 3, "events": 4, "serve": 5, "cluster": 6, "offline": 6, "cli": 7}
FACADE = {"streamrec", "streamrec.__main__"}  # the public entry points may reach any layer, lazily
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def package_of(module: str) -> str:
    """``streamrec.live.ring`` -> ``live``; a top-level module -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


def resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    is_pkg = MODULES[module].name == "__init__.py"
    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[str, int, list[str]]]:
    """Every streamrec module ``module`` imports, at any depth of the code: (target, line, names)."""
    found = []
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, []) for a in node.names if a.name.startswith("streamrec")]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            if not target.startswith("streamrec"):
                continue
            names = [a.name for a in node.names]
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            found += [(s, node.lineno, []) for s in subs] or [(target, node.lineno, names)]
    return [(t if t in MODULES else t.rsplit(".", 1)[0], line, names) for t, line, names in found]


def test_every_subpackage_exists_with_a_docstring():
    for pkg in (p for p in LAYERS if p):
        init = PACKAGE / pkg / "__init__.py"
        assert init.is_file(), f"streamrec/{pkg}/ is missing"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 8, f"streamrec/{pkg}/__init__.py needs a docstring saying what lives there"


def test_no_module_imports_from_a_higher_layer():
    wrong = []
    for module in MODULES:
        if module in FACADE:
            continue
        mine = package_of(module)
        for target, line, _ in imports_of(module):
            theirs = package_of(target)
            if (target in FACADE and mine != "cli") or LAYERS[theirs] > LAYERS[mine] or (
                    theirs != mine and LAYERS[theirs] == LAYERS[mine] and mine):
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}")
    assert wrong == []


def test_no_import_circles():
    graph = {m: {t for t, _, _ in imports_of(m) if t != m and t in MODULES} for m in MODULES if m not in FACADE}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_modules_stay_small():
    big = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert big == {}


def test_functions_stay_small():
    long = []
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{MODULES[module].relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def private_uses(path: Path) -> list[str]:
    """``from streamrec.x import _y`` and ``x._y`` where ``x`` is an imported streamrec module."""
    tree = ast.parse(path.read_text())
    aliases, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("streamrec")):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name}")
                aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            aliases |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("streamrec")}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in aliases):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("folder", ["streamrec", "tests", "benchmarks"])
def test_no_private_names_across_modules(folder):
    found = [hit for p in sorted((ROOT / folder).rglob("*.py")) for hit in private_uses(p)]
    assert found == []


# a file written in place: a full disk or a kill midway leaves it half-written (clips, caches, configs)
IN_PLACE_WRITES = {"write_text", "write_bytes"}
WRITES_IN_PLACE_ON_PURPOSE = {
    "streamrec.fsutil",  # the atomic helpers themselves: a temporary file, then a rename
    "streamrec.cluster.clips",  # a probe that a folder is writable, deleted at once
}


def in_place_writes(module: str) -> list[str]:
    """``path.write_text(...)``, ``path.write_bytes(...)`` and ``open(path, "w"...)`` in ``module``'s code."""
    found = []
    for node in ast.walk(TREES[module]):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in IN_PLACE_WRITES:
            found.append(f"{MODULES[module].relative_to(ROOT)}:{node.lineno} .{func.attr}()")
        elif isinstance(func, ast.Name) and func.id == "open" and len(node.args) > 1:
            mode = node.args[1]
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax"):
                found.append(f"{MODULES[module].relative_to(ROOT)}:{node.lineno} open(..., {mode.value!r})")
    return found


def test_files_are_written_atomically():
    """Every file streamrec writes goes through ``streamrec.fsutil``'s atomic helpers (a temporary
    file, then a rename), so a full disk or a kill midway leaves the old file, never half of one."""
    found = [hit for module in MODULES if module not in WRITES_IN_PLACE_ON_PURPOSE for hit in in_place_writes(module)]
    assert found == []
