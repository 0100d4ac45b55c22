""""Your turn" exercises: a checker, a hint and a worked solution for each.

In a notebook::

    from clipedu.exercises import nb01
    nb01.patchify.hint()          # a nudge
    nb01.patchify.check(answer)   # specific feedback: which shape, which value
    nb01.patchify.solution()      # the worked answer

Each notebook's exercises live in their own module (``nb01``, ``nb02``, ...). An exercise knows a
correct answer (``reference``) and the typical wrong ones (``mistakes``), so the tests can prove
that every checker accepts the first and rejects each of the others with a specific message.

Exercises come in four kinds (``Exercise.kind``), and every notebook has the last three:

- ``implement``: write a function the notebook has just explained; the checker compares it with the
  package's own on several inputs.
- ``predict``: commit to a choice or a number *before* the cell that shows it (made with
  :func:`prediction`); the feedback says what the next cell will show and why.
- ``derive``: work a result out on paper (a gradient, a count, an identity) and write it in closed
  form; the checker compares it with autograd or a brute-force computation.
- ``experiment``: change one thing, predict, measure; the checker re-runs the measurement for the
  settings the student chose and verifies the numbers, not a fixed answer.
"""

from __future__ import annotations

import importlib
import pkgutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

KINDS = ("implement", "predict", "derive", "experiment")


@dataclass
class Feedback:
    """What :meth:`Exercise.check` found. Truthy when the answer is right."""

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return ("Correct! " if self.ok else "Not yet: ") + self.message

    def _repr_markdown_(self) -> str:
        return ("**Correct!** " if self.ok else "**Not yet:** ") + self.message


@dataclass
class Exercise:
    """One exercise.

    ``checker(answer)`` returns None when the answer is right and otherwise a message saying what
    is wrong. ``reference()`` builds a correct answer; each ``mistakes`` entry is
    ``(build_wrong_answer, words_the_feedback_must_contain)``.
    """

    name: str
    task: str
    checker: Callable[[Any], str | None]
    hint_text: str
    solution_code: str
    reference: Callable[[], Any]
    mistakes: list[tuple[Callable[[], Any], str]] = field(default_factory=list)
    success: str = "well done."
    kind: str = "implement"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Exercise {self.name!r}: kind should be one of {KINDS}, got {self.kind!r}")

    def check(self, answer) -> Feedback:
        try:
            problem = self.checker(answer)
        except NotImplementedError:
            problem = "the exercise is not filled in yet (replace the NotImplementedError with your code)."
        except Exception as exc:  # the student's code raised: say what, not a traceback
            problem = f"running your answer raised {type(exc).__name__}: {exc}"
        feedback = Feedback(problem is None, self.success if problem is None else problem)
        return feedback

    def hint(self) -> None:
        print(f"Hint ({self.name}): {self.hint_text}")

    def solution(self) -> None:
        print(textwrap.dedent(self.solution_code).strip())

    def __repr__(self) -> str:
        return f"Exercise({self.name!r}): {self.task}"


def prediction(name: str, question: str, answer, *, why: str, hint: str, choices: tuple[str, ...] = (),
               rel: float = 0.15, wrong: tuple = ()) -> Exercise:
    """A predict-then-run question: the student writes ``my_prediction = ...`` (one of ``choices``, or
    a number within ``rel`` of ``answer``) before the cell that shows the outcome. The feedback says
    what that cell will show and ``why``. ``wrong`` lists typical wrong numbers (for the tests);
    with ``choices`` every other choice is a typical mistake."""
    choices = tuple(c.lower() for c in choices)
    if choices and str(answer).lower() not in choices:
        raise ValueError(f"prediction {name!r}: the answer {answer!r} is not one of the choices {choices}")
    shown = f"{answer!r}" if choices else f"about {answer:.4g}"

    def checker(got) -> str | None:
        if choices:
            if not isinstance(got, str) or got.strip().lower() not in choices:
                return f"answer with one of {', '.join(repr(c) for c in choices)}; got {got!r}."
            if got.strip().lower() == str(answer).lower():
                return None
            return f"you predicted {got.strip()!r}; the next cell shows {shown}. {why}"
        value = as_number(got)
        if value is None:
            return f"answer with one number; got {type(got).__name__} {got!r}."
        if abs(value - answer) <= rel * abs(answer) + 1e-12:
            return None
        return f"you predicted {value:.4g}; the next cell shows {shown}. {why}"

    mistakes = [(lambda c=c: c, "the next cell shows") for c in choices if c != str(answer).lower()]
    mistakes += [(lambda w=w: w, "the next cell shows") for w in wrong]
    return Exercise(name, question, checker, hint, f"my_prediction = {answer!r}", lambda: answer,
                    mistakes, success=f"the next cell shows {shown}. {why}", kind="predict")


# --- helpers for writing checkers ---------------------------------------------------------------
def compare_tensors(name: str, got, expected: torch.Tensor, atol: float = 1e-5) -> str | None:
    """None when ``got`` equals ``expected``; otherwise says how it differs (type, shape, values)."""
    if not isinstance(got, torch.Tensor):
        return f"{name} should be a torch.Tensor, got {type(got).__name__}."
    if tuple(got.shape) != tuple(expected.shape):
        return f"{name} should have shape {tuple(expected.shape)}, got {tuple(got.shape)}."
    if got.dtype.is_floating_point != expected.dtype.is_floating_point:
        return f"{name} should have dtype {expected.dtype}, got {got.dtype}."
    diff = (got.double() - expected.double()).abs()
    if not torch.all(diff <= atol):
        where = tuple(int(i) for i in torch.nonzero(diff > atol)[0])
        return (
            f"{name} has the right shape but wrong values: at index {where} it is "
            f"{got[where].item():.5g}, expected {expected[where].item():.5g} "
            f"({int((diff > atol).sum())} of {diff.numel()} entries differ)."
        )
    return None


def as_number(got) -> float | None:
    """``got`` as a Python float when it is one number (a float, an int, a one-element tensor or
    array); None otherwise, so a checker can say what it expected."""
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            return None
        got = got.detach().item()
    elif hasattr(got, "size") and hasattr(got, "item"):  # a NumPy array or scalar
        if got.size != 1:
            return None
        got = got.item()
    try:
        return float(got)
    except (TypeError, ValueError):
        return None


def close(got, expected, rel: float = 1e-4, atol: float = 1e-4) -> bool:
    """True when ``got`` is within ``atol + rel * |expected|`` of ``expected``: two numbers, or two
    tensors of the same shape, entry by entry (a tensor against a non-tensor is never close)."""
    if isinstance(expected, torch.Tensor):
        return (isinstance(got, torch.Tensor) and got.shape == expected.shape
                and bool(torch.allclose(got.double(), expected.double(), rtol=rel, atol=atol)))
    return abs(got - expected) <= atol + rel * abs(expected)


def compare_numbers(name: str, got, expected: float, rel: float = 1e-4) -> str | None:
    try:
        value = float(got)
    except (TypeError, ValueError):
        return f"{name} should be a number, got {type(got).__name__}."
    if not close(value, expected, rel=rel, atol=rel):
        return f"{name} should be {expected:.6g}, got {value:.6g}."
    return None


def all_exercises() -> list[Exercise]:
    """Every exercise of every notebook module (the tests walk this list)."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += [v for v in vars(module).values() if isinstance(v, Exercise)]
    return found
