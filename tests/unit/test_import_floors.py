"""The house has floors: no import runs upward or sideways, no files import each other in a loop.

The floors table is the one ``python-services/docs/architecture.md`` states (its
"Floors" table); the imports are read from ``src/vmclient`` with ``ast`` (every
import statement, also inside a function or under ``TYPE_CHECKING``: each is a
dependency someone has to know about).  Nothing is imported or run.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from testlib import ROOT

SRC = ROOT / "python-services" / "src"
DOC = ROOT / "python-services" / "docs" / "architecture.md"
ROOT_PACKAGE = "vmclient"


def floors_table(markdown: str) -> dict[str, int]:
    """{component: floor} from the doc's table rows ``| <floor> | `a/` `b.py` … | … |``
    under the heading ``## Floors``; a component is a package (``store/``) or a module
    (``errors.py``) right under ``vmclient/``."""
    section = markdown.split("\n## Floors", 1)[1].split("\n## ", 1)[0]
    floors: dict[str, int] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].isdigit():
            continue
        for name in re.findall(r"`([a-z_]+)(?:/|\.py)`", cells[1]):
            assert name not in floors, f"{name} stands on two floors in {DOC.name}"
            floors[name] = int(cells[0])
    return floors


def module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules ``module`` imports (``from pkg import mod`` names the module)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known}


def import_graph(src: Path) -> dict[str, set[str]]:
    """{module: the project modules it imports} over every file below ``src/vmclient``."""
    files = {module_name(p, src): p for p in (src / ROOT_PACKAGE).rglob("*.py")}
    known = set(files)
    return {m: imported(ast.parse(p.read_text(), str(p)), m, p.name == "__init__.py", known)
            - {m} for m, p in files.items()}


def component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT_PACKAGE


def against_floors(graph: Mapping[str, Iterable[str]], floors: Mapping[str, int]
                   ) -> list[str]:
    """Every import that does not go down a floor (pure)."""
    bad = []
    for module, targets in sorted(graph.items()):
        a = component(module)
        for target in sorted(targets):
            b = component(target)
            if b in (a, ROOT_PACKAGE):
                continue
            if a not in floors or b not in floors:
                bad.append(f"{module} -> {target}: {a if a not in floors else b} is on no floor")
            elif floors[b] >= floors[a]:
                way = "up" if floors[b] > floors[a] else "sideways"
                bad.append(f"{module} -> {target}: {way}, floor {floors[a]} to {floors[b]}")
    return bad


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The groups of modules that import each other in a loop (Tarjan's components, pure)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_goes_up_or_sideways_a_floor():
    floors = floors_table(DOC.read_text())
    graph = import_graph(SRC)
    placed = {component(m) for m in graph} - {ROOT_PACKAGE}
    assert placed <= set(floors), f"not on a floor in {DOC.name}: {sorted(placed - set(floors))}"
    assert set(floors) <= placed, f"{DOC.name} places what is gone: {sorted(set(floors) - placed)}"
    assert against_floors(graph, floors) == []


def test_no_files_import_each_other_in_a_loop():
    assert cycles(import_graph(SRC)) == []


def test_the_checks_see_an_upward_import_and_a_loop(tmp_path: Path):
    pkg = tmp_path / ROOT_PACKAGE
    (pkg / "low").mkdir(parents=True)
    (pkg / "high").mkdir()
    for f, text in {"__init__.py": "", "errors.py": "",
                    "low/__init__.py": "", "low/a.py": "from ..high import b\nfrom . import c\n",
                    "low/c.py": "from .a import x\nfrom .. import errors\n",
                    "high/__init__.py": "", "high/b.py": "from vmclient import errors\n"}.items():
        (pkg / f).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["vmclient.low.a"] == {"vmclient.high.b", "vmclient.low.c"}
    assert graph["vmclient.low.c"] == {"vmclient.low.a", "vmclient.errors"}
    assert graph["vmclient.high.b"] == {"vmclient.errors"}
    floors = floors_table("# x\n\n## Floors\n\n| floor | parts |\n|---|---|\n"
                          "| 1 | `errors.py` |\n| 2 | `low/` |\n| 3 | `high/` |\n\n## Next\n"
                          "| 9 | `other/` |\n")
    assert floors == {"errors": 1, "low": 2, "high": 3}
    assert against_floors(graph, floors) == [
        "vmclient.low.a -> vmclient.high.b: up, floor 2 to 3"]
    assert against_floors(graph, {**floors, "high": 2}) == [
        "vmclient.low.a -> vmclient.high.b: sideways, floor 2 to 2"]
    assert against_floors(graph, {"low": 2, "high": 3}) == [
        "vmclient.high.b -> vmclient.errors: errors is on no floor",
        "vmclient.low.a -> vmclient.high.b: up, floor 2 to 3",
        "vmclient.low.c -> vmclient.errors: errors is on no floor"]
    assert cycles(graph) == [["vmclient.low.a", "vmclient.low.c"]]
