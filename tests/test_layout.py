"""The package's layering: no module imports, directly or through others, a module that imports it back.

Imports inside functions count too: a lazy import that closes a cycle hides a layering mistake (the
pipeline once imported the CLI that imports the pipeline; the detector module built band detectors whose
module imports the detector module).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rfcx_lightning"


def module_graph() -> dict[str, set[str]]:
    """``module -> the package modules it imports`` (``from . import x`` counts as importing ``x``)."""
    files = {"rfcx_lightning." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
             for p in PACKAGE.rglob("*.py")}
    files = {name.removesuffix(".__init__"): p for name, p in files.items()}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                subs = {f"{base}.{a.name}" for a in node.names} & files.keys()
                found |= subs or ({base} & files.keys())
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names} & files.keys()
        graph[name] = found - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_has_no_import_cycles():
    graph = module_graph()
    assert "rfcx_lightning.models.factory" in graph["rfcx_lightning.stages.base"]   # the graph sees imports
    assert cycles(graph) == []


def test_every_package_is_installed():
    """setup.cfg lists its packages by hand (the configuration tree is mapped in): a new package folder that
    is not listed imports in an editable checkout and is missing from a real install."""
    import configparser

    config = configparser.ConfigParser()
    config.read(PACKAGE.parent / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {"rfcx_lightning" + "".join("." + part for part in p.parent.relative_to(PACKAGE).parts)
             for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set(), f"add to setup.cfg [options] packages: {sorted(found - listed)}"
