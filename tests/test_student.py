"""Student versions: every solution becomes a stub, and nothing after an exercise depends on it.

The student versions are committed in ``student/`` (Colab opens them from GitHub) and regenerated
by ``make student``; a stale one fails here. `make test-student` executes them under nbval (the
stubbed cells are tagged ``raises-exception``); this file checks, without running anything, the
property that makes that pass: a later cell never reads a name that only an exercise cell defines.
"""

from __future__ import annotations

import ast
import json
import re
import shutil

import pytest

from tools import course

NOTEBOOKS = course.notebook_paths()


def _parse(text: str) -> ast.Module:
    # IPython syntax (%pip, !cmd) is not Python: blank those lines, keep the numbering.
    lines = ["" if re.match(r"\s*[%!]", line) else line for line in text.split("\n")]
    return ast.parse("\n".join(lines))


def _defined(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        else:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
    return names


def _read(tree: ast.Module) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_later_cells_never_use_an_exercise_answer(path):
    nb = course.load(path)
    known: set[str] = set()  # names some non-exercise cell has defined so far
    only_in_exercises: dict[str, int] = {}  # name -> the exercise cell that defined it
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        text = course.source(cell)
        tree = _parse(text)
        if course.BEGIN in text:
            for name in _defined(tree) - known:
                only_in_exercises.setdefault(name, index)
            continue
        used = {name: only_in_exercises[name] for name in _read(tree) - _defined_before_use(tree)
                if name in only_in_exercises}
        assert not used, (
            f"{path.name}, cell {index} reads {sorted(used)}, defined only in exercise cell(s) "
            f"{sorted(set(used.values()))}; in the student version those hold a stub. Use the package instead."
        )
        defined = _defined(tree)
        known |= defined
        for name in defined:
            only_in_exercises.pop(name, None)


def _defined_before_use(tree: ast.Module) -> set[str]:
    """Names a cell assigns in an earlier top-level statement than the one that reads them."""
    seen: set[str] = set()
    safe: set[str] = set()
    for node in tree.body:
        safe |= _read(ast.Module(body=[node], type_ignores=[])) & seen
        seen |= _defined(ast.Module(body=[node], type_ignores=[]))
    return safe


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_student_version_stubs_every_solution_and_keeps_the_rest(path):
    original = course.strip_notebook(course.load(path))
    student = course.student_notebook(course.strip_notebook(course.load(path)))
    assert len(student["cells"]) == len(original["cells"])
    stubs = 0
    for before, after in zip(original["cells"], student["cells"]):
        text, new = course.source(before), course.source(after)
        if before["cell_type"] == "code" and course.BEGIN in text:
            stubs += 1
            assert course.BEGIN not in new and course.END not in new
            assert "raise NotImplementedError(" in new and "Your turn: " in new
            assert "raises-exception" in after["metadata"]["tags"]
            compile(_parse(new), path.name, "exec")  # the stub is valid Python
            # the answer's lines are gone, the checker call stays
            checks = [line for line in text.split("\n") if ".check(" in line]
            assert all(line in new for line in checks)
        else:
            assert new == text
    exercises = sum(course.BEGIN in course.source(c) for c in original["cells"] if c["cell_type"] == "code")
    assert stubs == exercises >= 2, f"{path.name}: {exercises} exercises"


def test_student_folder_matches_the_notebooks():
    assert course.student_problems() == {}, "run `make student` (python tools/course.py student) and commit student/"


def test_a_stale_missing_or_orphaned_student_version_is_reported(tmp_path):
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(course.ROOT / course.SETTINGS, root / course.SETTINGS)
    (root / "README.md").write_text("")
    for p in NOTEBOOKS[:2]:
        shutil.copy(p, root / "notebooks" / p.name)
    first, second = (p.name for p in NOTEBOOKS[:2])
    course.build_student(root=root)
    assert course.student_problems(root) == {}
    nb = course.load(root / "notebooks" / first)
    nb["cells"][-1]["source"] = "## Summary\n\nChanged after the student version was written."
    course.save(nb, root / "notebooks" / first)
    (root / "student" / second).unlink()
    (root / "student" / "99_gone.ipynb").write_text("{}")
    assert course.student_problems(root) == {first: "stale", second: "missing", "99_gone.ipynb": "no such notebook"}
    assert any("is stale" in p for p in course.check_all(root)[first])
    course.build_student(root=root)
    assert course.student_problems(root) == {}


@pytest.mark.parametrize("path", NOTEBOOKS[:1], ids=[p.name for p in NOTEBOOKS[:1]])
def test_committed_student_version_opens_itself_and_installs_the_same_branch(path):
    repository, branch = course.read_settings()
    nb = json.loads((course.ROOT / course.STUDENT / path.name).read_text())
    title = course.source(nb["cells"][0])
    assert f"github/{repository}/blob/{branch}/student/{path.name}" in title
    assert f"github/{repository}/blob/{branch}/notebooks/{path.name}" in title  # the solutions, one link away
    setup = course.source(course.code_cells(nb)[0])
    assert f'git+https://github.com/{repository}@{branch}"' in setup
