"""pyproject.toml and environment.yml must list the same packages with the same floors."""

import re
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
