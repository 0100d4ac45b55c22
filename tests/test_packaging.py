"""Packaging: pyproject.toml and environment.yml list the same packages with the same floors, and
the wheel holds a package that works without the checkout."""

import functools
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
# conda-forge names that differ from PyPI's
CONDA_NAMES = {"torch": "pytorch", "open_clip_torch": "open-clip-torch"}


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", req.strip())
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_split(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"])
    wanted = {CONDA_NAMES.get(k, k): v for k, v in wanted.items()}
    listed = {}
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("dependencies:", 1)[1].splitlines():
        m = re.match(r"^  - ([A-Za-z].*)$", line)
        if m and not m.group(1).startswith(("pip", "python")):
            name, spec = _split(m.group(1))
            listed[name] = spec
    assert listed == wanted


def test_floors_stay_low_for_colab():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in deps if "==" in d or "<" in d]
    assert not pins, f"exact or upper pins break Colab installs: {pins}"
    assert "torch>=2.1" in deps and "ipywidgets>=7.7" in deps


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci/run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


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
