"""The package map in CONTRIBUTING.md is the code's: each module imports only what its row names,
and only modules of the rows above it."""

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _map() -> list[tuple[str, set[str]]]:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    table = text.split("<!-- package-map:start -->")[1].split("<!-- package-map:end -->")[0]
    rows = []
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        module = cells[0].strip("`").removeprefix("clipedu.")
        allowed = {m.strip() for m in cells[-1].split(",")} - {"-"}
        rows.append((module, allowed))
    return rows


MAP = _map()


def _unit(name: str) -> str:
    """The map's unit of a module: the package for the files of data/, blip2/, viz/, exercises/."""
    return name.split(".")[0]


@functools.cache
def _imports() -> dict[str, set[str]]:
    """unit -> the units of clipedu it imports (inside a unit, imports are free)."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "clipedu").rglob("*.py"):
        parts = path.relative_to(ROOT / "clipedu").with_suffix("").parts
        if parts in (("__init__",), ("__main__",)):
            continue  # the package's face and the command's entry point
        unit = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("clipedu"):
                names = [node.module] if node.module != "clipedu" else [f"clipedu.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("clipedu")]
            for name in names:
                target = _unit(name.removeprefix("clipedu."))
                if target[:1].islower() and target != unit:
                    found.setdefault(unit, set()).add(target)
    return found


def test_every_module_of_the_package_is_on_the_map():
    on_map = {module for module, _ in MAP}
    units = {p.relative_to(ROOT / "clipedu").parts[0].removesuffix(".py") for p in (ROOT / "clipedu").glob("*")
             if p.name not in ("__init__.py", "__main__.py", "__pycache__")}
    assert units == on_map, f"not on the map: {sorted(units - on_map)}; on the map only: {sorted(on_map - units)}"


@pytest.mark.parametrize("row", range(len(MAP)), ids=[m for m, _ in MAP])
def test_a_module_imports_only_what_its_row_names_from_the_rows_above(row):
    module, allowed = MAP[row]
    above = {m for m, _ in MAP[:row]}
    assert allowed <= above, f"{module}: the map lets it import {sorted(allowed - above)}, which are not above it"
    imported = _imports().get(module, set())
    assert imported <= allowed, f"{module} imports {sorted(imported - allowed)}, which its row does not name"


def test_nothing_but_the_command_line_draws():
    drawers = sorted(unit for unit, targets in _imports().items() if "viz" in targets and unit != "viz")
    assert drawers == ["cli"], drawers


def test_the_map_reads_a_real_table():
    assert len(MAP) > 20 and MAP[0][0] == "config" and re.fullmatch(r"\w+", MAP[-1][0])
