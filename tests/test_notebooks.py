"""Conventions every notebook keeps (the notebooks themselves run under nbval in `make test`)."""

import difflib
import importlib
import re
import textwrap

import pytest

from clipedu.exercises import all_exercises
from tools import course

NOTEBOOKS = course.notebook_paths()


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    problems = course.check_notebook(course.load(path), path.name)
    assert not problems, f"{path.name}: " + "; ".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_cell_calls_a_checker(path):
    for cell in course.code_cells(course.load(path)):
        text = course.source(cell)
        if course.BEGIN in text:
            assert re.search(r"\bnb\d\d\.\w+\.check\(", text), f"{path.name}: exercise cell without a checker"
            after = text.split(course.END, 1)[1]
            assert ".check(" in after, f"{path.name}: the check must come after the solution block"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_listed_in_readme(path):
    assert f"notebooks/{path.name}" in (course.ROOT / "README.md").read_text()


def test_every_exercise_is_used_by_its_notebook():
    text = {p.name[:2]: p.read_text() for p in NOTEBOOKS}
    for ex in all_exercises():
        module = ex.checker.__module__.rsplit(".", 1)[-1]  # nbNN
        number = module[2:]
        if number in text:
            name = [k for k, v in vars(__import__(ex.checker.__module__, fromlist=["x"])).items() if v is ex][0]
            assert f"{module}.{name}." in text[number], f"{module}.{name} is never used in notebook {number}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_exercise_cell_holds_the_solution_its_checker_prints(path):
    """A notebook's worked answer and the package's ``solution_code`` (what ``.solution()`` prints,
    and what the student version falls back on) are the same code, so they cannot drift apart."""
    for cell in course.code_cells(course.load(path)):
        text = course.source(cell)
        if course.BEGIN not in text:
            continue
        module, name, answer = re.search(r"\b(nb\d\d)\.(\w+)\.check\((\w+)\)", text).groups()
        exercise = getattr(importlib.import_module(f"clipedu.exercises.{module}"), name)
        kept = course.solution_of(textwrap.dedent(exercise.solution_code))
        assert course.solution_of(text) == kept, (
            f"{path.name}: the cell of {module}.{name} and its solution_code differ:\n"
            + "\n".join(difflib.unified_diff(kept.split("\n"), course.solution_of(text).split("\n"), lineterm=""))
        )
        if exercise.kind == "predict":  # a prediction is a value the student commits to, not a function
            assert kept.startswith(f"{answer} = "), f"{path.name}: {module}.{name}.check({answer}) checks another name"
        else:
            assert f"def {answer}(" in kept, f"{path.name}: {module}.{name}.check({answer}) checks another function"
