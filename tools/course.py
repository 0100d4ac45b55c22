"""Course upkeep, run from a checkout: Colab badges and install cells, clean notebooks, student
versions.

    python tools/course.py set-repo OWNER/NAME [--branch main]   # a fork's badges work at once
    python tools/course.py sync       # rewrite every badge, setup cell, the README's notebook map,
                                      # CITATION.cff and student/
    python tools/course.py strip      # drop outputs (except # NBVAL_CHECK_OUTPUT cells), widget state
    python tools/course.py student    # student/: each solution replaced by a stub (committed, on Colab)
    python tools/course.py check      # list convention problems (the tests run this too)
    python tools/course.py new 13_scaling_out.ipynb "Scaling out"   # a skeleton to fill in

The repository's owner/name and branch live in one place, ``course.toml`` at the root of the
checkout; ``set-repo`` rewrites it and everything generated from it, and
``repository_mentions`` finds any other tracked file that names it (the tests keep that list
empty). This file needs only the standard library, so it runs before clipedu is installed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout
NOTEBOOKS = ROOT / "notebooks"
STUDENT = "student"  # the committed student versions, beside notebooks/
SETTINGS = "course.toml"
_SETTING = re.compile(r'^(repository|branch) = "([^"]*)"$', re.M)


def read_settings(root: Path = ROOT) -> tuple[str, str]:
    """(repository, branch) from ``course.toml``: two ``key = "value"`` lines, read without a TOML
    library so the tool runs on any Python clipedu supports."""
    path = root / SETTINGS
    found = dict(_SETTING.findall(path.read_text(encoding="utf-8"))) if path.exists() else {}
    if set(found) != {"repository", "branch"}:
        raise ValueError(f'{path} must set repository = "OWNER/NAME" and branch = "BRANCH"; found {found}')
    return found["repository"], found["branch"]


REPOSITORY, BRANCH = read_settings()
CHECK_MARK = "NBVAL_CHECK_OUTPUT"
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
NAME_PATTERN = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
SETUP_FIRST_LINE = "# Setup: run this cell first."


def colab_url(notebook: str, repository: str = REPOSITORY, branch: str = BRANCH, folder: str = "notebooks") -> str:
    """Colab's address of ``folder/notebook`` on GitHub: ``notebooks`` (solutions) or ``student``."""
    return f"https://colab.research.google.com/github/{repository}/blob/{branch}/{folder}/{notebook}"


def badge(notebook: str, repository: str = REPOSITORY, branch: str = BRANCH, folder: str = "notebooks") -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook, repository, branch, folder)})"


def repository_url(repository: str = REPOSITORY) -> str:
    return f"https://github.com/{repository}"


def site_url(repository: str = REPOSITORY) -> str:
    """Where GitHub Pages serves the rendered course (``.github/workflows/ci.yml`` publishes it)."""
    owner, name = repository.split("/")
    return f"https://{owner.lower()}.github.io/{name}/"


def setup_cell_source(repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """The first code cell of every notebook."""
    return f'''{SETUP_FIRST_LINE}
# On Colab it installs clipedu, pinning the torch, numpy and ipywidgets Colab already has (so
# nothing is upgraded and no restart is needed). Everywhere it then picks the device, seeds every
# random generator and reports fast or full mode (see notebook 00).
import sys

if "google.colab" in sys.modules:
    import ipywidgets
    import numpy
    import torch

    keep = f"torch=={{torch.__version__}} numpy=={{numpy.__version__}} ipywidgets=={{ipywidgets.__version__}}"
    %pip install -q "clipedu @ git+https://github.com/{repository}@{branch}" {{keep}}

from clipedu import runtime

rt = runtime.setup()'''


# --- reading and writing notebooks --------------------------------------------------------------
def notebook_paths(folder: Path = NOTEBOOKS) -> list[Path]:
    return sorted(p for p in folder.glob("*.ipynb") if p.is_file())


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save(nb: dict, path: Path) -> None:
    text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    Path(path).write_text(text, encoding="utf-8")


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def set_source(cell: dict, text: str) -> None:
    lines = text.split("\n")
    cell["source"] = [line + "\n" for line in lines[:-1]] + [lines[-1]]


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


# --- sync: badges, setup cells, README ----------------------------------------------------------
_BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


def sync_notebook(nb: dict, name: str, repository: str = REPOSITORY, branch: str = BRANCH,
                  folder: str = "notebooks") -> dict:
    """The title cell's badge (opening ``folder/name`` on Colab) and the setup cell, regenerated."""
    first = nb["cells"][0]
    if first["cell_type"] != "markdown":
        raise ValueError(f"{name}: the first cell must be the markdown title cell")
    text = source(first)
    new_badge = badge(name, repository, branch, folder)
    text = _BADGE_RE.sub(new_badge, text) if _BADGE_RE.search(text) else new_badge + "\n\n" + text
    set_source(first, text)
    cells = code_cells(nb)
    if not cells or not source(cells[0]).startswith(SETUP_FIRST_LINE):
        raise ValueError(f"{name}: the first code cell must be the setup cell starting {SETUP_FIRST_LINE!r}")
    set_source(cells[0], setup_cell_source(repository, branch))
    return nb


def title_of(nb: dict) -> str:
    """The title line without its number: "# 03 · The Vision Transformer" -> "The Vision Transformer"."""
    for line in source(nb["cells"][0]).splitlines():
        if line.startswith("# "):
            return re.sub(r"^\d\d\s*[·:.-]\s*", "", line[2:].strip())
    return "(untitled)"


def readme_table(paths: list[Path], repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """The README's notebook map: each notebook with two Colab badges, the student version
    (exercises to fill in, from ``student/``) and the solutions (``notebooks/``)."""
    rows = [f"Read the course rendered, outputs included, at <{site_url(repository)}>; run it on Colab",
            "with a badge: **student** opens the version with the exercises to fill in, **solutions**",
            "the one with the worked answers.", "",
            "| # | notebook | student | solutions |", "| --- | --- | --- | --- |"]
    for p in paths:
        rows.append(
            f"| {p.name[:2]} | [{title_of(load(p))}](notebooks/{p.name}) "
            f"| {badge(p.name, repository, branch, STUDENT)} | {badge(p.name, repository, branch)} |"
        )
    return "\n".join(rows)


def sync(repository: str = REPOSITORY, branch: str = BRANCH, root: Path = ROOT) -> None:
    paths = notebook_paths(root / "notebooks")
    for p in paths:
        save(sync_notebook(load(p), p.name, repository, branch), p)
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = "<!-- notebooks:start -->", "<!-- notebooks:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{readme_table(paths, repository, branch)}\n{end}{tail}"
        readme.write_text(text, encoding="utf-8")
    citation = root / "CITATION.cff"
    if citation.exists():
        citation.write_text(citation_text(citation.read_text(encoding="utf-8"), repository), encoding="utf-8")
    build_student(root / STUDENT, root, repository, branch)


def citation_text(text: str, repository: str = REPOSITORY) -> str:
    """CITATION.cff's text with ``repository-code`` pointing at ``repository``."""
    line = f'repository-code: "{repository_url(repository)}"'
    if not re.search(r"^repository-code:", text, flags=re.M):
        raise ValueError("CITATION.cff has no 'repository-code:' line to point at the repository")
    return re.sub(r"^repository-code:.*$", line, text, count=1, flags=re.M)


def set_repo(repository: str, branch: str = BRANCH, root: Path = ROOT) -> None:
    """Point the course at another GitHub repository: rewrite ``course.toml``, then sync."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+", repository):
        raise ValueError(f"expected OWNER/NAME, got {repository!r}")
    if not re.fullmatch(r"[A-Za-z0-9_./\-]+", branch):
        raise ValueError(f"expected a branch name, got {branch!r}")
    path = root / SETTINGS
    read_settings(root)  # a file that does not hold both settings is refused, not half rewritten
    values = {"repository": repository, "branch": branch}
    text = _SETTING.sub(lambda m: f'{m.group(1)} = "{values[m.group(1)]}"', path.read_text(encoding="utf-8"))
    path.write_text(text, encoding="utf-8")
    sync(repository, branch, root)


# --- new: a skeleton that already keeps every convention ------------------------------------------
def new_notebook(name: str, title: str) -> dict:
    """A notebook skeleton: title cell, setup cell, one section, two exercise cells, a summary."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"notebook names look like 07_zero_shot.ipynb, got {name!r}")
    number = name[:2]

    def md(text):
        return {"cell_type": "markdown", "metadata": {}, "source": text}

    def code(text):
        return {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": text}

    exercise = (
        f"from clipedu.exercises import nb{number}\n\n"
        "def my_answer():\n    # BEGIN SOLUTION one-line instruction for the student\n    return 42\n"
        f"    # END SOLUTION\n\nnb{number}.first.check(my_answer)  # .hint() for a nudge, .solution() for the answer"
    )
    cells = [
        md(f"{badge(name)}\n\n# {number} · {title}\n\n**What you will learn**\n\n- ...\n- ...\n\n"
           "**Runtime:** about ... s on a CPU in fast mode, about ... min on a Colab GPU in full mode.\n\n"
           "**Builds on:** ... · **Next:** ..."),
        code(setup_cell_source()),
        md("## 1. ...\n\nA short paragraph, then a small cell and a result you can see."),
        code("# (B, N, D)"),
        md("### Your turn 1\n\nWhat to do, and what the checker will look at."),
        code(exercise),
        md("### Your turn 2\n\n..."),
        code(exercise.replace("first", "second")),
        md("## Summary\n\n- ...\n\n**Next:** ..."),
    ]
    return strip_notebook({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


# --- strip: what gets committed -----------------------------------------------------------------
def strip_notebook(nb: dict) -> dict:
    """Outputs only for checked cells, no execution counts, no widget state, kernel python3."""
    checked = 0
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("execution", None)
        if cell["cell_type"] != "code":
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
            continue
        if CHECK_MARK in source(cell) and cell.get("outputs"):
            # nbval compares only cells that ran, i.e. that have an execution count: number the
            # checked cells 1, 2, ... so the diff stays stable from one run to the next.
            checked += 1
            cell["execution_count"] = checked
            for out in cell["outputs"]:
                if "execution_count" in out:
                    out["execution_count"] = checked
                out.get("metadata", {}).clear()
        else:
            cell["execution_count"] = None
            cell["outputs"] = []
    meta = nb.setdefault("metadata", {})
    meta.pop("widgets", None)
    meta["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    meta["language_info"] = {"name": "python"}
    meta.setdefault("colab", {"provenance": []})
    meta["accelerator"] = "GPU"  # Colab opens the notebook with a GPU runtime selected
    nb["nbformat"], nb["nbformat_minor"] = 4, 5
    for i, cell in enumerate(nb["cells"]):
        cell.setdefault("id", f"cell-{i}")
    return nb


# --- student versions ---------------------------------------------------------------------------
def student_notebook(nb: dict) -> dict:
    """Replace each BEGIN/END SOLUTION block by a stub; tag the cell ``raises-exception``."""
    for cell in code_cells(nb):
        text = source(cell)
        if BEGIN not in text:
            continue
        out, inside = [], False
        for line in text.split("\n"):
            stripped = line.strip()
            if stripped.startswith(BEGIN):
                if inside:
                    raise ValueError(f"nested {BEGIN!r} in cell:\n{text}")
                inside = True
                indent = line[: len(line) - len(line.lstrip())]
                task = stripped[len(BEGIN):].strip(" :-") or "write your answer here"
                out.append(f"{indent}# YOUR CODE HERE")
                out.append(f"{indent}raise NotImplementedError({('Your turn: ' + task)!r})")
            elif stripped.startswith(END):
                if not inside:
                    raise ValueError(f"{END!r} without {BEGIN!r} in cell:\n{text}")
                inside = False
            elif not inside:
                out.append(line)
        if inside:
            raise ValueError(f"{BEGIN!r} without {END!r} in cell:\n{text}")
        set_source(cell, "\n".join(out))
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "raises-exception" not in tags:
            tags.append("raises-exception")
        cell["outputs"] = []
    return nb


def solution_of(text: str) -> str:
    """An exercise cell's worked answer as the package keeps it (``Exercise.solution_code``): the
    cell without its ``from clipedu.exercises import`` line, its checker call and the solution
    markers, runs of blank lines made one."""
    kept = [line.rstrip() for line in text.split("\n")
            if not line.strip().startswith((BEGIN, END))
            and not re.match(r"\s*from clipedu\.exercises import nb\d\d\s*$", line)
            and not re.match(r"\s*nb\d\d\.\w+\.check\(", line)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


STUDENT_NOTE = ("*Student version: each \"Your turn\" cell is a stub that raises until you write the answer. "
                "The worked answers: [solutions]({url}).*")


def student_version(path: Path, repository: str = REPOSITORY, branch: str = BRANCH) -> dict:
    """The committed student version of the notebook at ``path``: stripped, each solution a stub,
    its badge opening itself on Colab, and a line under the badge pointing at the solutions."""
    nb = sync_notebook(student_notebook(strip_notebook(load(path))), path.name, repository, branch, STUDENT)
    title = source(nb["cells"][0])
    own = badge(path.name, repository, branch, STUDENT)
    note = STUDENT_NOTE.format(url=colab_url(path.name, repository, branch))
    set_source(nb["cells"][0], title.replace(own, f"{own}\n\n{note}", 1))
    return nb


def _text(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def build_student(out_dir: Path | None = None, root: Path = ROOT, repository: str | None = None,
                  branch: str | None = None) -> list[Path]:
    """Write ``student/`` (or ``out_dir``): one student version per notebook, nothing else."""
    if repository is None or branch is None:
        repository, branch = read_settings(root)
    out_dir = root / STUDENT if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    paths = notebook_paths(root / "notebooks")
    for p in paths:
        target = out_dir / p.name
        text = _text(student_version(p, repository, branch))
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
        written.append(target)
    names = {p.name for p in paths}
    for old in out_dir.glob("*.ipynb"):
        if old.name not in names:  # a notebook renamed or removed
            old.unlink()
    return written


def student_problems(root: Path = ROOT) -> dict[str, str]:
    """``student/`` against the notebooks: name -> "missing", "stale" or "no such notebook"."""
    repository, branch = read_settings(root)
    folder = root / STUDENT
    paths = notebook_paths(root / "notebooks")
    found = {}
    for p in paths:
        target = folder / p.name
        if not target.exists():
            found[p.name] = "missing"
        elif target.read_text(encoding="utf-8") != _text(student_version(p, repository, branch)):
            found[p.name] = "stale"
    for extra in sorted({q.name for q in folder.glob("*.ipynb")} - {p.name for p in paths}):
        found[extra] = "no such notebook"
    return found


# --- one place names the repository ---------------------------------------------------------------
def _tracked_files(root: Path) -> list[Path]:
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise RuntimeError(f"{root} is not a git checkout: {err}") from err
    return [root / name for name in listed.decode().split("\0") if name]


def _outside_generated(path: Path, text: str, root: Path) -> str:
    """``text`` without the parts that ``sync`` generates from ``course.toml``."""
    rel = path.relative_to(root).as_posix()
    if rel == "README.md":
        return re.sub(r"<!-- notebooks:start -->.*?<!-- notebooks:end -->", "", text, flags=re.S)
    if rel == "CITATION.cff":
        return re.sub(r"^repository-code:.*$", "", text, flags=re.M)
    if rel.startswith("notebooks/") and rel.endswith(".ipynb"):
        nb = json.loads(text)
        if nb.get("cells"):
            set_source(nb["cells"][0], _BADGE_RE.sub("", source(nb["cells"][0])))
        for cell in code_cells(nb)[:1]:
            if source(cell).startswith(SETUP_FIRST_LINE):
                set_source(cell, "")
        return json.dumps(nb, ensure_ascii=False)
    return text


def repository_mentions(root: Path = ROOT, files: list[Path] | None = None) -> list[str]:
    """Every ``path:line`` of a tracked file that names the repository outside what ``sync``
    generates (``course.toml`` itself, ``student/``, the badges and setup cells, the README's
    notebook map, CITATION.cff's ``repository-code``). A fork runs ``set-repo`` and is done only
    while this list is empty."""
    repository, _ = read_settings(root)
    found = []
    for path in _tracked_files(root) if files is None else files:
        rel = path.relative_to(root).as_posix()
        if rel == SETTINGS or rel.startswith(f"{STUDENT}/") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # a binary file
        if repository.lower() not in text.lower():
            continue
        rest = _outside_generated(path, text, root)
        if rel.endswith(".ipynb"):
            if repository.lower() in rest.lower():
                found.append(f"{rel}: outside the badge and the setup cell")
            continue
        found += [f"{rel}:{n}" for n, line in enumerate(rest.split("\n"), 1) if repository.lower() in line.lower()]
    return found


# --- conventions ----------------------------------------------------------------------------------
def check_notebook(nb: dict, name: str, repository: str = REPOSITORY, branch: str = BRANCH) -> list[str]:
    problems = []
    if not NAME_PATTERN.match(name):
        problems.append("name is not NN_lower_snake.ipynb")
    if nb.get("metadata", {}).get("kernelspec", {}).get("name") != "python3":
        problems.append("kernelspec is not python3")
    if "widgets" in nb.get("metadata", {}):
        problems.append("saved widget state in metadata")
    cells = nb.get("cells", [])
    if not cells or cells[0]["cell_type"] != "markdown":
        return problems + ["first cell is not the markdown title cell"]
    title = source(cells[0])
    if badge(name, repository, branch) not in title:
        problems.append(f"title cell lacks the Colab badge for {repository}/notebooks/{name}")
    for needed in ("What you will learn", "CPU", "GPU"):
        if needed.lower() not in title.lower():
            problems.append(f"title cell does not mention {needed!r}")
    code = code_cells(nb)
    if not code or source(code[0]) != setup_cell_source(repository, branch):
        problems.append("first code cell is not the generated setup cell (run `python tools/course.py sync`)")
    for i, cell in enumerate(code):
        if cell.get("outputs") and CHECK_MARK not in source(cell):
            problems.append(f"code cell {i} keeps outputs without {CHECK_MARK}")
        if cell.get("execution_count") is not None and not cell.get("outputs"):
            problems.append(f"code cell {i} keeps an execution count without outputs")
    exercises = sum(BEGIN in source(c) for c in code)
    if exercises < 2:
        problems.append(f"{exercises} exercises (BEGIN SOLUTION blocks); at least 2 expected")
    last = cells[-1]
    if last["cell_type"] != "markdown" or "summary" not in source(last).lower():
        problems.append("last cell is not a markdown summary")
    return problems


def check_all(root: Path = ROOT) -> dict[str, list[str]]:
    readme = (root / "README.md").read_text(encoding="utf-8")
    repository, branch = read_settings(root)
    found = {}
    student = student_problems(root)
    for p in notebook_paths(root / "notebooks"):
        problems = check_notebook(load(p), p.name, repository, branch)
        if f"notebooks/{p.name}" not in readme:
            problems.append("not listed in README.md (run `python tools/course.py sync`)")
        if p.name in student:
            problems.append(f"{STUDENT}/{p.name} is {student[p.name]} (run `python tools/course.py student`)")
        if problems:
            found[p.name] = problems
    for name, problem in student.items():
        if problem == "no such notebook":
            found[f"{STUDENT}/{name}"] = [f"{problem} in notebooks/ (run `python tools/course.py student`)"]
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/course.py", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("set-repo", help="point every badge and install cell at OWNER/NAME")
    s.add_argument("repository")
    s.add_argument("--branch", default=BRANCH)
    sub.add_parser("sync", help="rewrite badges, setup cells and the README notebook map")
    s = sub.add_parser("strip", help="strip outputs except checked cells")
    s.add_argument("paths", nargs="*", type=Path)
    s = sub.add_parser("student", help="write the student versions to student/")
    s.add_argument("--out", type=Path, default=None, help="another folder (default: student/)")
    sub.add_parser("check", help="list convention problems")
    s = sub.add_parser("new", help="write a notebook skeleton that keeps every convention")
    s.add_argument("name", help="e.g. 13_scaling_out.ipynb")
    s.add_argument("title")
    args = ap.parse_args(argv)

    if args.command == "set-repo":
        set_repo(args.repository, args.branch)
        print(f"badges and install cells now point at {args.repository}@{args.branch}")
    elif args.command == "sync":
        sync()
    elif args.command == "strip":
        for p in args.paths or notebook_paths():
            save(strip_notebook(load(p)), p)
    elif args.command == "student":
        for p in build_student(args.out):
            print(p)
    elif args.command == "new":
        target = NOTEBOOKS / args.name
        if target.exists():
            print(f"{target} exists; not overwritten", file=sys.stderr)
            return 1
        save(new_notebook(args.name, args.title), target)
        print(f"wrote {target}")
    elif args.command == "check":
        problems = check_all()
        for name, items in problems.items():
            for item in items:
                print(f"{name}: {item}")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
