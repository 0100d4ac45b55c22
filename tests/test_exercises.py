"""Every checker accepts a correct answer and rejects each typical mistake with a specific message;
every worked solution runs on its own and passes its checker."""

import ast
import textwrap

import numpy as np
import pytest
import torch

from clipedu.exercises import Exercise, Feedback, all_exercises, as_number, close

EXERCISES = all_exercises()


def test_exercises_exist():
    assert len(EXERCISES) >= 2


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.name)
def test_checker_accepts_the_reference(exercise):
    feedback = exercise.check(exercise.reference())
    assert feedback.ok, feedback.message


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.name)
def test_checker_rejects_typical_mistakes(exercise):
    assert exercise.mistakes, f"{exercise.name} lists no typical mistake to reject"
    for make_wrong, expected in exercise.mistakes:
        feedback = exercise.check(make_wrong())
        assert not feedback.ok, f"{exercise.name} accepted a wrong answer"
        assert expected in feedback.message, f"{exercise.name}: {feedback.message!r} lacks {expected!r}"


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.name)
def test_hint_and_solution_print_something(exercise, capsys):
    exercise.hint()
    exercise.solution()
    out = capsys.readouterr().out
    assert "Hint" in out and len(out) > 40


def test_unfinished_and_crashing_answers_get_feedback_not_tracebacks():
    def checker(answer):
        return None if answer() == 2 else "expected 2"

    ex = Exercise("demo", "return 2", checker, "add one and one", "return 1 + 1", lambda: lambda: 2)

    def unfinished():
        raise NotImplementedError

    assert "not filled in yet" in ex.check(unfinished).message
    assert "raised ZeroDivisionError" in ex.check(lambda: 1 / 0).message
    assert isinstance(ex.check(lambda: 2), Feedback) and ex.check(lambda: 2)


def test_as_number_takes_one_number_in_any_form_and_refuses_the_rest():
    assert as_number(0.5) == 0.5 and as_number(3) == 3.0
    assert as_number(torch.tensor(2.5)) == 2.5 and as_number(torch.tensor([2.5])) == 2.5
    assert as_number(np.float64(1.5)) == 1.5 and as_number(np.array([1.5])) == 1.5
    for bad in (torch.zeros(2), np.zeros(3), [1.0], "one", None):
        assert as_number(bad) is None


def _function_defined_by(code: str):
    """Run a solution in a fresh namespace and return the one function it defines (a prediction's
    solution defines one name instead, ``my_prediction``)."""
    body = ast.parse(code).body
    names = [n.name for n in body if isinstance(n, ast.FunctionDef)]
    if not names:
        names = [t.id for n in body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]
    assert len(names) == 1, f"a solution defines one function or one name, this one defines {names}"
    namespace: dict = {}
    exec(compile(code, "<solution_code>", "exec"), namespace)
    return namespace[names[0]]


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.name)
def test_solution_code_passes_its_own_checker(exercise):
    """The code .solution() prints runs on its own (it imports what it uses) and is accepted."""
    answer = _function_defined_by(textwrap.dedent(exercise.solution_code))
    feedback = exercise.check(answer)
    assert feedback.ok, f"{exercise.name}: {feedback.message}"


def test_close_takes_numbers_and_tensors():
    assert close(1.0, 1.00005) and not close(1.0, 1.01)
    assert close(1e-6, 1.01e-6, atol=1e-12, rel=0.02) and not close(1e-6, 1.1e-6, atol=1e-12)  # relative
    t = torch.tensor([1.0, 2.0])
    assert close(t + 1e-6, t) and not close(t + 0.1, t)
    assert not close(t[:1], t) and not close([1.0, 2.0], t)  # another shape, or no tensor at all


def test_prediction_accepts_its_answer_and_explains_the_rest():
    from clipedu.exercises import prediction

    choice = prediction("p", "sharper or flatter?", "sharper", why="the logits grow.", hint="h",
                        choices=("sharper", "flatter", "unchanged"))
    assert choice.kind == "predict" and choice.check("Sharper ") and choice.solution_code == "my_prediction = 'sharper'"
    wrong = choice.check("flatter")
    assert not wrong and "next cell shows 'sharper'" in wrong.message and "the logits grow." in wrong.message
    assert "answer with one of 'sharper', 'flatter', 'unchanged'" in choice.check(3).message
    number = prediction("n", "how many?", 4.85, why="ln 128.", hint="h", wrong=(128,))
    assert number.check(4.9) and number.check(torch.tensor(4.8)) and not number.check(6.0)
    assert "answer with one number" in number.check("four").message
    assert len(number.mistakes) == 1 and len(choice.mistakes) == 2
    with pytest.raises(ValueError, match="not one of the choices"):
        prediction("x", "?", "maybe", why="", hint="", choices=("yes", "no"))
    with pytest.raises(ValueError, match="kind should be one of"):
        Exercise("k", "t", lambda a: None, "h", "x = 1", lambda: 1, kind="quiz")


def test_every_notebook_has_a_prediction_a_derivation_and_an_experiment():
    import importlib
    import pkgutil

    import clipedu.exercises as package

    modules = sorted(info.name for info in pkgutil.iter_modules(package.__path__))
    assert len(modules) >= 14
    for name in modules:
        module = importlib.import_module(f"clipedu.exercises.{name}")
        kinds = {v.kind for v in vars(module).values() if isinstance(v, Exercise)}
        missing = {"predict", "derive", "experiment"} - kinds
        assert not missing, f"{name} has no exercise of kind {sorted(missing)}"
        for v in vars(module).values():
            if isinstance(v, Exercise) and v.kind == "predict":
                assert v.name.startswith("predict_"), f"{name}.{v.name}: a prediction's name starts with predict_"
