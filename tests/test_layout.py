"""The package's shape: layers import downward only, no module takes another's private names,
and the modules' top-level imports form no cycle (docs/INTERFACES.md, "Layout").

Layers, from the bottom: the foundations (rng, checks, registry, _files, _startup, _checkout,
kernels), gpuwpo/device (the physics of a tile), gpuwpo/search (the search of a batch of layers),
gpuwpo/network (a network's run), and the interfaces (io, cli, wpo, aihwkit, plots, example and
the package's own __init__).
"""

from __future__ import annotations

import ast
from pathlib import Path

import gpuwpo

ROOT = Path(gpuwpo.__file__).parent
RANK = {"device": 1, "search": 2, "network": 3}
FOUNDATIONS = {"rng", "checks", "registry", "_files", "_startup", "_checkout", "kernels"}


def _layer(module: str) -> int:
    part = (module.split(".") + [""])[1]
    return RANK.get(part, 0 if part in FOUNDATIONS else 4)


def _modules() -> dict[str, tuple[tuple[str, ...], ast.Module]]:
    """Dotted module name -> (its package's parts, its syntax tree), for every gpuwpo module."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("gpuwpo", *path.relative_to(ROOT).with_suffix("").parts)
        package = parts[:-1]  # a package's __init__ lives in the package, as a module does
        out[".".join(p for p in parts if p != "__init__")] = (package, ast.parse(path.read_text()))
    return out


MODULES = _modules()


def _imports(package: tuple[str, ...], node: ast.ImportFrom) -> tuple[str, list[str]]:
    """(the module ``node`` imports from, the dotted names it imports)."""
    base = list(package[: len(package) - node.level + 1]) if node.level else []
    target = ".".join(base + ([node.module] if node.module else []))
    return target, [f"{target}.{alias.name}" for alias in node.names]


def _from_imports():
    """(module, node, the module imported from, the dotted names imported) of every
    ``from ... import ...`` anywhere in a gpuwpo module (lazy ones too)."""
    for module, (package, tree) in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                yield (module, node, *_imports(package, node))


def test_lower_layers_never_import_higher_ones():
    # device -> search -> network -> interfaces: e.g. the search layer takes its checkpoint
    # fingerprint from what it knows, never from the network's settings record.
    found = []
    for module, node, target, names in _from_imports():
        names = [target] if node.module else names
        # The package's own version (gpuwpo.__version__) is no layer; the figures
        # (gpuwpo.plots, which needs matplotlib) may be imported lazily, inside a function, by
        # a result's .plot(): never at a module's top.
        lazy_figure = node not in MODULES[module][1].body
        found += [f"{module} imports {name}" for name in names
                  if name.startswith("gpuwpo.") and name != "gpuwpo.__version__"
                  and not (lazy_figure and name == "gpuwpo.plots")
                  and _layer(name) > _layer(module)]
    assert not found, found


def test_no_module_imports_a_private_name_of_another():
    # A name another module uses is public and documented (private modules such as _files are
    # imported by their public names; the package's __version__ is public).
    found = [f"{module}: {name}" for module, _, target, names in _from_imports()
             if target.startswith("gpuwpo") for name in names
             if name.rsplit(".", 1)[1].startswith("_")
             and name != "gpuwpo.__version__" and name not in MODULES]
    assert not found, found


def test_top_level_imports_form_no_cycle():
    # Imports inside functions (lazy, e.g. Ray, the CLI's commands) are not edges: they run
    # after every module is loaded.
    edges: dict[str, set[str]] = {}
    for module, (package, tree) in MODULES.items():
        targets = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                target, names = _imports(package, node)
                targets |= {name if name in MODULES else target for name in names}
        # A package's __init__ is imported before its modules: importing gpuwpo.x.y runs
        # gpuwpo.x first, which is no edge of y's own.
        edges[module] = {t for t in targets if t in MODULES and t != module
                         and not module.startswith(t + ".")}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt])
                return True
            if nxt not in state and visit(nxt, path + [node]):
                return True
        state[node] = 2
        return False

    for module in sorted(edges):
        if module not in state and visit(module, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_the_layers_are_folders():
    for folder in ("device", "search", "network", "io", "cli"):
        assert (ROOT / folder / "__init__.py").is_file(), folder
