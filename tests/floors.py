"""The declared minimum versions, for `make test-min`.

    python tests/floors.py requirements   # each runtime dependency pinned at its floor: torch==2.3 ...
    python tests/floors.py check          # print what is installed; fail where it is not the floor

Every entry of ``[project] dependencies`` in pyproject.toml is ``name>=floor``. The file is read
without a TOML parser, so this runs on the oldest Python the project supports before anything is
installed (``tomllib`` arrived in 3.11); ``tests/test_packaging.py`` checks the result against
``tomllib``.
"""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def runtime_requirements(text: str) -> list[str]:
    """The requirement strings of ``[project] dependencies`` (one quoted string a line)."""
    block = re.search(r"^dependencies = \[\n(.*?)^\]", text, flags=re.S | re.M)
    if block is None:
        raise ValueError("pyproject.toml has no 'dependencies = [' block with one requirement a line")
    return re.findall(r'^\s*"([^"]+)"', block.group(1), flags=re.M)


def floors(text: str | None = None) -> dict[str, str]:
    """{distribution name (lower case): floor} for every runtime dependency."""
    found = {}
    for req in runtime_requirements(PYPROJECT.read_text() if text is None else text):
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)>=([0-9]+(?:\.[0-9]+)*)", req.replace(" ", ""))
        if m is None:
            raise ValueError(f"every dependency must be 'name>=version' (a floor, no pin, no marker), got {req!r}")
        found[m.group(1).lower()] = m.group(2)
    return found


def same_release(installed: str, floor: str) -> bool:
    """'2.3.0' and '2.3.0+cu121' are the floor '2.3'; '2.3.1' is not."""
    def numbers(v):
        parts = [int(p) for p in re.match(r"[0-9]+(?:\.[0-9]+)*", v).group(0).split(".")]
        while parts and parts[-1] == 0:
            parts.pop()
        return parts

    return numbers(installed) == numbers(floor)


def check() -> int:
    """Print Python's and each runtime dependency's version; 1 if one is not at its floor."""
    print(f"Python {platform.python_version()} ({sys.executable})")
    wrong = []
    for name, floor in floors().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        ok = installed != "missing" and same_release(installed, floor)
        print(f"  {name:<14} floor {floor:<11} installed {installed}{'' if ok else '   <- not the floor'}")
        if not ok:
            wrong.append(name)
    if wrong:
        print(f"not at the declared floor: {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv == ["requirements"]:
        print("\n".join(f"{name}=={floor}" for name, floor in floors().items()))
        return 0
    if argv == ["check"]:
        return check()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
