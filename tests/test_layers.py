"""The modules of lpot_research import one another in one direction only: no cycle, lazy imports included.

The graph is read from the source with `ast` (no module is imported): every `import lpot_research...` and
`from lpot_research... import ...` (relative ones too), at the top of a module or inside a function, and every
string "lpot_research.module:attr" (what `_lazy.load_object` imports by name, e.g. the strategy and adaptor
registries). `from package import name` points at the submodule `package.name` when there is one, else at the
package. Importing a submodule is not counted as an import of its parent package (`__init__.py`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lpot_research"
LAZY_TARGET = re.compile(rf"^({PACKAGE}(?:\.\w+)*):\w+$")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `name` is or lies in (`a.b.attr` -> `a.b`)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = LAZY_TARGET.match(node.value)
            targets = [m.group(1)] if m else []
        for t in targets:
            if t == PACKAGE or t.startswith(PACKAGE + "."):
                r = _resolve(t, known)
                if r is not None and r != name:
                    found.add(r)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            cycle = visit(n)
            if cycle:
                return cycle
    return None


def test_the_graph_is_read():
    """The reader sees what the modules import (else an empty graph would pass): a top-level import, a
    function-level one and a registry string."""
    g = import_graph()
    assert "lpot_research.core.errors" in g["lpot_research.config"]  # top level
    assert "lpot_research.api" in g["lpot_research"]  # inside `tune`
    assert "lpot_research.strategies.basic" in g["lpot_research.strategies"]  # "module:attr" for load_object


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


# The layers of the tree, from the bottom: a module imports only from its own layer or the ones below.
LAYERS = (
    ("core",),  # errors, the CPU class, the time budget, batches, lazy imports
    ("quant", "measure"),  # the tuning space, criterion, calibration, ranking; latency, metrics, objectives
    ("adaptors",),  # how a framework quantizes, runs and saves a model
    ("models",),  # built-in bundles, data loaders, your own files
    ("strategies",),  # what to try next
    ("run",),  # one run: the loop, trials, evaluation, history, summary, report, callbacks
    ("config", "api", "cli", ""),  # entry points: the settings schema, the Python API, tune.py's CLI
)


def layer(module: str) -> int:
    part = module.removeprefix(PACKAGE).removeprefix(".").partition(".")[0]
    return next(i for i, names in enumerate(LAYERS) if part in names)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if layer(b) > layer(a))


def test_every_module_is_in_a_layer():
    unplaced = [m for m in modules() if not any(m.removeprefix(PACKAGE).removeprefix(".").partition(".")[0] in names
                                                  for names in LAYERS)]
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"


def test_imports_point_down():
    """Arrows point down only (lazy imports included): a newcomer can tell from the tree where a change
    belongs, and no part reaches up into the one that drives it."""
    assert upward_imports({"lpot_research.core.errors": {"lpot_research.run.tuner"}}) == [
        "lpot_research.core.errors -> lpot_research.run.tuner"]
    up = upward_imports(import_graph())
    assert not up, "imports pointing up a layer: " + "; ".join(up)


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in lpot_research: " + " -> ".join(cycle or [])


# ---------------------------------------------------------------------------------------------- function length
MAX_FUNCTION_LINES = 60  # issue 20: a function a reader takes in at once
LENGTH_EXCLUDED: tuple[str, ...] = ()  # every module is held to the limit


def long_functions(limit: int = MAX_FUNCTION_LINES, excluded: tuple[str, ...] = LENGTH_EXCLUDED) -> list[str]:
    """Every function (methods and nested ones too) in lpot_research longer than `limit` lines, counted
    from its `def` line to the last line of its body (decorators not counted), as "path:line name (n lines)"."""
    found = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(excluded):
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_the_length_reader_sees_functions():
    """The reader finds long functions (else an empty result would pass): at a low limit, some are long."""
    assert any(" tune (" in f for f in long_functions(limit=20)), "api.tune is longer than 20 lines"
    assert any("/adaptors/" in f for f in long_functions(limit=5)), "adaptors are checked too"
    assert not any("/adaptors/" in f for f in long_functions(limit=5, excluded=("lpot_research/adaptors/",)))


def test_no_function_over_the_length_limit():
    too_long = long_functions()
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(too_long)
