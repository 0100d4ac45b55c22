"""Packaging: declared dependencies, their floors, the conda mirror, the licence and the citation;
the wheel holds a package that works without the checkout."""

import ast
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import floors
import pytest

from tools import course

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, under its old name (the `dev` extra installs it there)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# conda-forge names that differ from PyPI's
CONDA_NAMES = {"torch": "pytorch", "open_clip_torch": "open-clip-torch"}
# What Colab's runtime ships (Python 3.12; read there in 2025, newer since). A floor above one of
# these would make installing clipedu there replace a preinstalled package and need a restart.
COLAB = {
    "python": "3.12",
    "torch": "2.6",
    "torchvision": "0.21",
    "numpy": "2.0",
    "ipywidgets": "7.7.1",
    "ipython": "7.34",
    "matplotlib": "3.10",
    "scikit-learn": "1.6",
    "threadpoolctl": "3.5",
    "umap-learn": "0.5.7",
    "tqdm": "4.67",
    "pillow": "11.0",
    "regex": "2024.11.6",
}
# import name -> distribution name, where the two differ
DISTRIBUTIONS = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "umap": "umap-learn",
    "open_clip": "open_clip_torch",
    "IPython": "ipython",
    "playwright": "playwright",
}
# imported only on Colab, where it is always there (runtime.py mounts Drive)
COLAB_ONLY = {"google"}


def _split(req: str) -> tuple[str, str]:
    """'numpy>=1.23.2' -> ('numpy', '>=1.23.2'); an environment marker is dropped."""
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*([^;]*)", req.strip())
    return m.group(1).lower(), m.group(2).replace(" ", "")


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.match(r"[0-9]+(?:\.[0-9]+)*", version).group(0).split("."))


def _declared(*groups: str) -> set[str]:
    reqs = list(PROJECT["dependencies"])
    for group in groups:
        reqs += PROJECT["optional-dependencies"][group]
    return {_split(r)[0] for r in reqs}


# --- the conda environment -----------------------------------------------------------------------
def test_environment_yml_mirrors_pyproject():
    extras = PROJECT["optional-dependencies"]
    wanted = dict(_split(r) for r in PROJECT["dependencies"] + extras["dev"] + extras["site"])
    wanted = {CONDA_NAMES.get(k, k): v for k, v in wanted.items()}
    listed, python = {}, None
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("dependencies:", 1)[1].splitlines():
        m = re.match(r"^  - ([A-Za-z].*)$", line)
        if m and m.group(1).startswith("python"):
            python = m.group(1).replace(" ", "")
        elif m and not m.group(1).startswith("pip"):
            name, spec = _split(m.group(1))
            listed[name] = spec
    assert listed == wanted
    assert python == "python" + PROJECT["requires-python"]


# --- floors --------------------------------------------------------------------------------------
def test_floors_stay_low_for_colab():
    deps = PROJECT["dependencies"]
    pins = [d for d in deps if "==" in d or "<" in d or "!=" in d]
    assert not pins, f"exact or upper pins break Colab installs: {pins}"
    declared = floors.floors()
    assert set(declared) <= set(COLAB), f"say what Colab ships of {sorted(set(declared) - set(COLAB))}"
    above = {n: (f, COLAB[n]) for n, f in declared.items() if _release(f) > _release(COLAB[n])}
    assert not above, f"floors above what Colab ships (floor, Colab): {above}"
    python_floor = PROJECT["requires-python"].removeprefix(">=")
    assert _release(python_floor) <= _release(COLAB["python"])


def test_readme_states_the_floors():
    readme = " ".join((ROOT / "README.md").read_text().split())
    python_floor = PROJECT["requires-python"].removeprefix(">=")
    assert f"It needs Python {python_floor} or newer" in readme
    stated = re.search(r"at the least, (.*?) \(every floor", readme).group(1)
    named = dict(re.findall(r"([a-z][a-z\-]*) ([0-9][0-9.]*[0-9])", stated))
    assert named and named == {n: f for n, f in floors.floors().items() if n in named}


def test_floors_reader_agrees_with_tomllib():
    assert floors.floors() == {name: spec.removeprefix(">=") for name, spec in map(_split, PROJECT["dependencies"])}


def test_floors_reader_prints_one_pin_a_dependency(capsys):
    assert floors.main(["requirements"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{name}=={floor}" for name, floor in floors.floors().items()]
    assert len(lines) == len(PROJECT["dependencies"])


@pytest.mark.parametrize(
    "requirement",
    ['"torch"', '"torch==2.3"', '"torch>=2.3,<3"', "\"tomli>=1.1; python_version < '3.11'\"", '"torch>2.3"'],
)
def test_floors_reader_wants_a_plain_floor(requirement):
    text = f"[project]\ndependencies = [\n    {requirement},\n]\n"
    with pytest.raises(ValueError, match=r"must be 'name>=version'.*got"):
        floors.floors(text)


def test_floors_reader_needs_the_dependencies_block():
    with pytest.raises(ValueError, match="no 'dependencies = \\[' block"):
        floors.floors('[project]\ndependencies = ["torch>=2.3"]\n')


def test_floors_reader_ignores_comments_and_reads_markers_free_lines():
    text = '[project]\ndependencies = [\n    # a comment\n    "numpy>=1.23.2",  # why\n    "Pillow >= 9.2",\n]\n'
    assert floors.floors(text) == {"numpy": "1.23.2", "pillow": "9.2"}


@pytest.mark.parametrize(
    ("installed", "floor", "same"),
    [
        ("2.3.0", "2.3", True),
        ("2.3.0+cu121", "2.3", True),
        ("7.7.0", "7.7", True),
        ("2022.9.11", "2022.9.11", True),
        ("2.3.1", "2.3", False),
        ("2.30.0", "2.3", False),
        ("1.23.5", "1.23.2", False),
        ("8.1.9", "7.7", False),
    ],
)
def test_same_release(installed, floor, same):
    assert floors.same_release(installed, floor) is same


def test_check_reports_a_package_off_its_floor(monkeypatch, capsys):
    monkeypatch.setattr(floors, "floors", lambda: {"numpy": "1.23.2", "clipedu-no-such-package": "1.0"})
    monkeypatch.setattr(floors.metadata, "version", lambda name: {"numpy": "1.23.2"}.get(name) or _missing(name))
    assert floors.check() == 1
    out, err = capsys.readouterr()
    assert "numpy" in out and "installed 1.23.2" in out
    assert "installed missing   <- not the floor" in out
    assert err.strip() == "not at the declared floor: clipedu-no-such-package"


def _missing(name):
    raise floors.metadata.PackageNotFoundError(name)


# --- every import is declared --------------------------------------------------------------------
def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(top-level module, optional?) for each absolute import; optional: under `try ... except ImportError`."""
    found = []

    def visit(node, guarded):
        if isinstance(node, ast.Try):
            catches = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            in_try = guarded or bool(catches & {"ImportError", "ModuleNotFoundError"})
            for child in node.body:
                visit(child, in_try)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, guarded)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name.split(".")[0], guarded) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module.split(".")[0], guarded))
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found


def _notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return re.sub(r"^(\s*)[%!].*$", r"\1pass", code, flags=re.M)  # IPython magics are not Python


def _third_party(found, local: set[str]):
    for module, optional in found:
        if module in sys.stdlib_module_names or module in local or module in COLAB_ONLY or module == "clipedu":
            continue
        yield DISTRIBUTIONS.get(module, module).lower(), optional


def test_imports_parser_tells_guarded_from_required():
    code = "import numpy\ntry:\n    import ftfy\nexcept ImportError:\n    ftfy = None\n"
    code += "def f():\n    from PIL import Image\n    from . import sibling\n    import os.path\n"
    found = _imports(ast.parse(code))
    assert found == [("numpy", False), ("ftfy", True), ("PIL", False), ("os", False)]
    assert list(_third_party(found, set())) == [("numpy", False), ("ftfy", True), ("pillow", False)]


def test_the_package_and_notebooks_import_only_declared_packages():
    core, extras = _declared(), _declared(*[g for g in PROJECT["optional-dependencies"] if g != "dev"])
    missing, optional_in_core_path = set(), set()
    sources = [(p, p.read_text()) for p in sorted((ROOT / "clipedu").rglob("*.py"))]
    sources += [(p, _notebook_code(p)) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    for path, code in sources:
        for dist, optional in _third_party(_imports(ast.parse(code)), set()):
            if dist not in extras:
                missing.add(f"{dist} ({path.relative_to(ROOT)})")
            elif not optional and dist not in core:
                optional_in_core_path.add(f"{dist} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
    assert not optional_in_core_path, f"an extra's package imported with no ImportError guard: {optional_in_core_path}"


def test_the_tests_and_benchmarks_import_only_declared_packages():
    declared = _declared(*PROJECT["optional-dependencies"])
    missing = set()
    for folder in ("tests", "benchmarks"):
        local = {p.stem for p in (ROOT / folder).rglob("*.py")} | {"tools"}  # the checkout's own tools/
        for path in sorted((ROOT / folder).rglob("*.py")):
            for dist, _ in _third_party(_imports(ast.parse(path.read_text())), local):
                if dist not in declared:
                    missing.add(f"{dist} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"


# --- licence and citation ------------------------------------------------------------------------
def _cff_value(key: str) -> str:
    m = re.search(rf"^{key}:\s*(.*)$", (ROOT / "CITATION.cff").read_text(), flags=re.M)
    assert m, f"CITATION.cff has no top-level {key!r}"
    return m.group(1).strip().strip('"')


def test_licence_is_mit_everywhere():
    assert PROJECT["license"] == {"text": "MIT"}
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n\nCopyright (c) ")
    assert "Permission is hereby granted, free of charge" in licence
    assert _cff_value("license") == "MIT"
    readme = (ROOT / "README.md").read_text()
    assert "## Licence" in readme and "[MIT](LICENSE)" in readme


def test_citation_agrees_with_pyproject_and_the_repository_setting():
    assert _cff_value("cff-version") == "1.2.0"
    assert _cff_value("version") == PROJECT["version"]
    assert _cff_value("repository-code") == course.repository_url() == f"https://github.com/{course.REPOSITORY}"
    assert _cff_value("title").startswith(PROJECT["name"])
    text = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^authors:\n  - name: \S", text, flags=re.M)
    assert re.search(r"^message: \S", text, flags=re.M)


def test_sync_points_the_citation_at_the_repository(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "README.md").write_text("# fork\n")
    (tmp_path / "CITATION.cff").write_text((ROOT / "CITATION.cff").read_text())
    course.sync("me/fork", "dev", root=tmp_path)
    text = (tmp_path / "CITATION.cff").read_text()
    assert 'repository-code: "https://github.com/me/fork"\n' in text
    assert text.count("repository-code") == (ROOT / "CITATION.cff").read_text().count("repository-code")
    assert course.citation_text(text, course.REPOSITORY) == (ROOT / "CITATION.cff").read_text()


def test_citation_without_a_repository_line_is_an_error():
    with pytest.raises(ValueError, match="no 'repository-code:' line"):
        course.citation_text("cff-version: 1.2.0\n", "me/fork")


# --- CI ------------------------------------------------------------------------------------------
def test_ci_runs_the_readme_test_command_then_the_floors():
    ci = (ROOT / ".ci/run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)
    assert ci.index("make test\n") < ci.index("make test-min\n")
    assert "make test" in (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "tests/floors.py requirements" in makefile and "tests/floors.py check" in makefile


def test_the_wheel_installs_and_every_module_imports(tmp_path):
    """Build the wheel from a copy of the package, install it into a fresh environment that sees
    only the dependencies (not this checkout), and import every module from there."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "clipedu", source / "clipedu", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run = functools.partial(subprocess.run, check=True, capture_output=True, text=True, timeout=600)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path / "dist"), str(source)])
    wheel = next((tmp_path / "dist").glob("clipedu-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"clipedu", wheel.name.split("-py")[0] + ".dist-info"}, tops  # no tools, tests or notebooks

    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    python = env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", site, str(wheel)])
    # The dependencies (torch, ...) come from this interpreter's site-packages; clipedu from the wheel.
    deps = [p for p in sys.path if p.endswith("-packages") and Path(p).is_dir()]
    (Path(site) / "_dependencies.pth").write_text("\n".join(deps) + "\n")
    check = f"""
import importlib, pkgutil, sys
import clipedu
assert clipedu.__file__.startswith({site!r}), clipedu.__file__
names = [m.name for m in pkgutil.walk_packages(clipedu.__path__, "clipedu.") if m.name != "clipedu.__main__"]
for name in names:
    assert importlib.import_module(name).__file__.startswith({site!r}), name
from clipedu import runtime
assert runtime.repo_root() is None  # an installed copy keeps its data and runs in the user's cache
print(len(names))
"""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = run([str(python), "-c", check], cwd=tmp_path, env=environ)
    assert int(out.stdout.split()[-1]) > 40  # every module of the package
    usage = run([str(python), "-m", "clipedu", "--help"], cwd=tmp_path, env=environ)
    assert "train" in usage.stdout and "probe" in usage.stdout
