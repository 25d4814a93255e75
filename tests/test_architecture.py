"""The package's shape holds: no import circle between its modules, no private name taken from
another module, no module over 600 lines. Read from the source (ast), every import counted,
the lazy ones inside functions too: a circle through a lazy import is still a circle."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "vlmtool"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = p
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]):
    """(target module, imported name or None) for every vlmtool import in the file."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            if base.split(".")[0] != "vlmtool":
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                yield (full, None) if full in mods else (base, a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "vlmtool":
                    yield (a.name if a.name in mods else a.name.rsplit(".", 1)[0]), None


def _graph():
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for name, path in mods.items():
        for target, imported in _imports(name, path, mods):
            if target != name and target in mods:
                edges[name].add(target)
            if imported and imported.startswith("_") and not imported.startswith("__") and target != name:
                private.append(f"{name} imports {imported} from {target}")
    return edges, private


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    edges, _ = _graph()
    assert _circles(edges) == []


def test_no_private_name_is_imported_across_modules():
    _, private = _graph()
    assert private == []


def test_the_checker_sees_a_circle():
    """The check itself can fail: made-up modules that import each other in a loop."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(edges) == [["a", "b", "c"]]


def test_no_module_over_600_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}


def _functions():
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield p, node


def test_no_function_over_60_lines():
    """Counted from the `def` line to the last line of the body, docstring included."""
    long = {f"{p.relative_to(PKG)}:{f.lineno} {f.name}": n for p, f in _functions() if (n := f.end_lineno - f.lineno + 1) > 60}
    assert long == {}


def _connector_names_compared(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines that compare a value to a connector's name, or key a dict or a match by one."""
    def named(node):
        return [n for n in ast.walk(node) if isinstance(n, ast.Constant) and n.value in names]

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            lines += [n.lineno for n in named(node)]
        elif isinstance(node, ast.Dict):
            lines += [n.lineno for k in node.keys if k is not None for n in named(k)]
        elif isinstance(node, ast.match_case):
            lines += [n.lineno for n in named(node.pattern)]
    return sorted(lines)


def test_only_the_connectors_module_compares_connector_names():
    """Adding a connector is a class in vlm/connectors.py: nowhere else asks `connector == "mlp"`."""
    from vlmtool.vlm.connectors import CONNECTORS

    names = set(CONNECTORS)
    found = {f"{p.relative_to(PKG)}:{line}" for p in PKG.rglob("*.py") if p != PKG / "vlm" / "connectors.py"
             for line in _connector_names_compared(ast.parse(p.read_text()), names)}
    assert found == set()


def test_the_connector_check_sees_a_comparison():
    tree = ast.parse('if cfg.connector != "mlp":\n    x = {"xattn": 1}\nok = name in ("native", "other")\ny = f("mlp")\n')
    assert _connector_names_compared(tree, {"mlp", "xattn", "native"}) == [1, 2, 3]
