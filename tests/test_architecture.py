"""The package plan of docs/ARCHITECTURE.md, enforced on the source: stages import only downward, no import
circles (imports inside functions count), no private names across modules, Dagster and MLflow where they
belong, and no long core module without a stated reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The pipeline's stages, lowest first: a module imports its own stage or a lower one, never a higher one.
CORE_LAYERS = {
    "paths": 0, "db": 0, "settings": 1,
    "ingest": 2, "data": 3, "model": 4, "query": 5, "evaluation": 6, "experiments": 7, "cli": 8,
}  # fmt: skip
ASSET_LAYERS = {
    "metadata": 0, "resources": 0, "partitions": 1,
    "ingest": 2, "data": 3, "model": 4, "evaluation": 5, "experiments": 6, "schedules": 7, "definitions": 8,
}  # fmt: skip
MAX_LINES = 400  # a longer core module says at the top of its docstring why it is one module
MLFLOW_HOME = "pingllm_core.model.tracking_mlflow"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(p): p for pkg in ("pingllm_core", "pingllm_assets") for p in (ROOT / pkg).rglob("*.py")
    }


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every absolute import in the file, at any depth."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
    return out


def _targets(module: str, names: list[str]) -> set[str]:
    """The project modules an import statement loads (a `from pkg import mod` names the submodule)."""
    found = {f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES}
    if module in MODULES and (not names or len(found) < len(names)):
        found.add(module)
    return found


GRAPH = {
    name: {t for mod, names, _ in _imports(tree) for t in _targets(mod, names) if t != name}
    for name, tree in TREES.items()
}


def _layer(name: str) -> tuple[str, int] | None:
    pkg, *rest = name.split(".")
    if not rest:
        return None
    table = CORE_LAYERS if pkg == "pingllm_core" else ASSET_LAYERS
    return rest[0], table[rest[0]]


def test_every_module_has_a_stage():
    unknown = [n for n in MODULES if n.count(".") >= 1 and n.split(".")[1] not in
               (CORE_LAYERS if n.startswith("pingllm_core") else ASSET_LAYERS)]  # fmt: skip
    assert not unknown, (
        f"modules outside the plan (add them to docs/ARCHITECTURE.md and this test): {unknown}"
    )


def test_stages_import_only_downward():
    bad = []
    for name, targets in GRAPH.items():
        here = _layer(name)
        for t in targets:
            there = _layer(t)
            if here is None or there is None or t.split(".")[0] != name.split(".")[0]:
                continue
            if there[1] > here[1] or (there[1] == here[1] and there[0] != here[0]):
                bad.append(f"{name} -> {t}")
    assert not bad, "upward or sideways imports:\n" + "\n".join(sorted(bad))


def test_core_never_imports_assets_or_dagster():
    bad = []
    for name, tree in TREES.items():
        if not name.startswith("pingllm_core"):
            continue
        for mod, _, line in _imports(tree):
            top = mod.split(".")[0]
            if top == "pingllm_assets" or top.startswith("dagster"):
                bad.append(f"{name}:{line} imports {mod}")
            if top == "mlflow" and name != MLFLOW_HOME:
                bad.append(f"{name}:{line} imports mlflow outside {MLFLOW_HOME}")
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    """Depth-first search for a back edge in the module graph; reports one circle."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for t in sorted(GRAPH[n]):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(GRAPH):
        if n not in state and (cycle := visit(n)):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_no_private_names_across_modules():
    bad = [
        f"{name}:{line} imports {n} from {mod}"
        for name, tree in TREES.items()
        for mod, names, line in _imports(tree)
        if mod.split(".")[0] in ("pingllm_core", "pingllm_assets") and mod != name
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert not bad, "\n".join(bad)


def test_long_core_modules_say_why():
    bad = []
    for name, path in MODULES.items():
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(TREES[name]) or ""
        if name.startswith("pingllm_core") and lines > MAX_LINES and "one module" not in doc.lower():
            bad.append(f"{name}: {lines} lines")
    assert not bad, f"over {MAX_LINES} lines without 'one module: <why>' in the docstring:\n" + "\n".join(bad)


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path):
    """The rules above can fail: a planted circle and an upward import are found by the same graph code."""
    global GRAPH
    saved = GRAPH
    try:
        GRAPH = dict(saved)
        GRAPH["pingllm_core.data.tokens"] = saved["pingllm_core.data.tokens"] | {"pingllm_core.query.engine"}
        with pytest.raises(AssertionError, match="upward"):
            test_stages_import_only_downward()
        with pytest.raises(pytest.fail.Exception, match="import circle"):
            test_no_import_circles()
    finally:
        GRAPH = saved


def _defined(tree: ast.Module) -> set[str]:
    """Names a module defines itself at its top level (functions, classes, assignments)."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                out |= {
                    e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(e, ast.Name)
                }
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return out


def _module_aliases(tree: ast.Module) -> dict[str, str]:
    """Local names bound to project modules (`import pingllm_core.x as m`, `from pingllm_core import x as m`)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.asname: a.name for a in node.names if a.asname and a.name in MODULES}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out |= {(a.asname or a.name): f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in MODULES}  # fmt: skip
    return out


def _foreign_names(tree: ast.Module, attributes: bool) -> list[str]:
    """Names this file takes from a project module that does not define them (a re-export); with `attributes`,
    also `module.name` reads through a module alias (tests may patch a name where it is used)."""
    bad = []
    for mod, names, line in _imports(tree):
        if mod in MODULES:
            bad += [f"{line}: {n} from {mod}" for n in names
                    if f"{mod}.{n}" not in MODULES and n not in _defined(TREES[mod])]  # fmt: skip
    aliases = _module_aliases(tree) if attributes else {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            mod = aliases[node.value.id]
            if f"{mod}.{node.attr}" not in MODULES and node.attr not in _defined(TREES[mod]):
                bad.append(f"{node.lineno}: {node.value.id}.{node.attr} ({mod} does not define it)")
    return bad


def test_names_come_from_their_home():
    """One path per name: the package, its tests and benchmarks take each name from the module that defines
    it, never through a module that re-exports it (a moved function leaves no alias behind)."""
    files = dict(MODULES) | {p.stem: p for d in ("tests", "benchmarks") for p in (ROOT / d).rglob("*.py")}
    bad = [f"{path.relative_to(ROOT)}:{b}" for name, path in files.items()
           for b in _foreign_names(TREES.get(name) or ast.parse(path.read_text()), name in MODULES)]  # fmt: skip
    assert not bad, "\n".join(bad)
