"""Course upkeep, run from a checkout: Colab badges and install cells, clean notebooks, student
versions.

    python tools/course.py set-repo OWNER/NAME [--branch main]   # a fork's badges work at once
    python tools/course.py sync       # rewrite every badge, setup cell, study time, "next" link, notebook
                                      # 00's course map, the README's notebook and syllabus tables,
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
import copy
import json
import math
import re
import sys
from dataclasses import dataclass
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
# random generator and reports the mode: fast, cpu or full (see notebook 00).
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


# --- the course as a list: map, "next" links, study time ---------------------------------------
# Study time is what a student spends reading and doing, not what the computer spends running
# (that is the title cell's "Runtime"). The rule: every whitespace-separated word a student reads,
# markdown and code, in the student version (each solution replaced by its stub; the title cell and
# the generated setup cell not counted), read at READING_WPM words a minute, plus
# MINUTES_PER_EXERCISE for each exercise cell (a BEGIN SOLUTION block) and MINUTES_PER_PREDICTION
# for each prediction (an exercise cell whose checker is ``nbNN.predict_...``: one choice or number
# to commit to); the total is rounded up to 5 minutes.
READING_WPM = 200
MINUTES_PER_EXERCISE = 10
MINUTES_PER_PREDICTION = 5
PREDICTION_CALL = re.compile(r"^\s*nb\d\d\.predict_\w+\.check\(", re.M)
STUDY_RULE = (
    f"Study time = the words a student reads (markdown and code of the student version, without the "
    f"title and setup cells) at {READING_WPM} words a minute, plus {MINUTES_PER_EXERCISE} minutes per "
    f"exercise and {MINUTES_PER_PREDICTION} per prediction (a question answered before the cell that "
    f"shows the outcome), rounded up to 5 minutes. It does not include the time the cells take to run "
    f"(each notebook's \"Runtime\")."
)
STUDY_PREFIX = "**Study time:**"
NEXT_PREFIX = "**Next:**"
REFERENCES_HEADING = "## References"
MAP_HEADER = "| # | notebook | what you build or see | study time |"
MAP_KEY = "clipedu"  # notebook metadata: {"clipedu": {"map": "one line for the course map"}}


@dataclass(frozen=True)
class Entry:
    """One notebook as the course map sees it."""

    name: str
    title: str
    blurb: str
    words: int
    exercises: int  # exercise cells, predictions not counted
    predictions: int = 0

    @property
    def number(self) -> str:
        return self.name[:2]

    @property
    def reading_minutes(self) -> int:
        return math.ceil(self.words / READING_WPM)

    @property
    def exercise_minutes(self) -> int:
        return self.exercises * MINUTES_PER_EXERCISE + self.predictions * MINUTES_PER_PREDICTION

    @property
    def study_minutes(self) -> int:
        return 5 * math.ceil((self.reading_minutes + self.exercise_minutes) / 5)

    def link(self) -> str:
        return f"[{self.number} · {self.title}]({self.name})"


def words_read(nb: dict) -> int:
    """Words a student reads in ``nb``: its student version without the title and setup cells."""
    student = student_notebook(copy.deepcopy(nb))
    cells = student["cells"][1:]
    setup = next((c for c in cells if c["cell_type"] == "code"), None)
    return sum(len(source(c).split()) for c in cells if c is not setup and c["cell_type"] in ("markdown", "code"))


def map_blurb(nb: dict) -> str:
    return nb.get("metadata", {}).get(MAP_KEY, {}).get("map", "")


def course_entries(notebooks: dict[str, dict]) -> list[Entry]:
    """The course in order, from notebooks keyed by file name."""
    entries = []
    for name, nb in sorted(notebooks.items()):
        cells = [source(c) for c in code_cells(nb) if BEGIN in source(c)]
        predictions = sum(bool(PREDICTION_CALL.search(text)) for text in cells)
        entries.append(Entry(name, title_of(nb), map_blurb(nb), words_read(nb), len(cells) - predictions, predictions))
    return entries


def _doing(entry: Entry) -> str:
    text = f"{entry.exercises} exercises at {MINUTES_PER_EXERCISE} min each"
    if entry.predictions:
        text += f" and {entry.predictions} prediction{'s' * (entry.predictions > 1)} at {MINUTES_PER_PREDICTION} min"
    return text


def study_line(entry: Entry) -> str:
    return (
        f"{STUDY_PREFIX} about {entry.study_minutes} min: {entry.reading_minutes} min of reading "
        f"({entry.words:,} words), {_doing(entry)} (the rule is in the README's syllabus)."
    )


def next_line(entries: list[Entry], name: str) -> str:
    names = [e.name for e in entries]
    i = names.index(name)
    if i + 1 < len(entries):
        return f"{NEXT_PREFIX} {entries[i + 1].link()}"
    return f"{NEXT_PREFIX} this is the last notebook; the [course map]({entries[0].name}) lists them all."


def course_map(entries: list[Entry]) -> str:
    """Notebook 00's table of every notebook."""
    rows = [MAP_HEADER, "| --- | --- | --- | --- |"]
    for e in entries:
        rows.append(f"| {e.number} | [{e.title}]({e.name}) | {e.blurb} | {e.study_minutes} min |")
    return "\n".join(rows)


def syllabus_table(entries: list[Entry]) -> str:
    """The README's syllabus: study time per notebook, and the rule that gives it."""
    rows = [STUDY_RULE, "", "| # | notebook | words | reading | exercises | predictions | study time |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for e in entries:
        rows.append(f"| {e.number} | [{e.title}](notebooks/{e.name}) | {e.words:,} | {e.reading_minutes} min "
                    f"| {e.exercises} × {MINUTES_PER_EXERCISE} min | {e.predictions} × {MINUTES_PER_PREDICTION} min "
                    f"| {e.study_minutes} min |")
    total = sum(e.study_minutes for e in entries)
    rows.append(f"| | **the course** | {sum(e.words for e in entries):,} | "
                f"{sum(e.reading_minutes for e in entries)} min | {sum(e.exercises for e in entries)} | "
                f"{sum(e.predictions for e in entries)} | **{total} min** (about {total / 60:.0f} h) |")
    return "\n".join(rows)


# --- the glossary: each notebook's title cell lists the terms it is the first to use --------------
GLOSSARY = "GLOSSARY.md"  # in notebooks/
TERMS_PREFIX = "**New terms**"


@dataclass(frozen=True)
class Term:
    name: str  # the heading
    spellings: tuple[str, ...]  # the name and its "*Also:*" spellings

    @property
    def anchor(self) -> str:
        """GitHub's anchor for the heading: lower case, punctuation dropped, spaces to hyphens."""
        return re.sub(r"[^\w\- ]", "", self.name.lower()).replace(" ", "-")

    def pattern(self) -> re.Pattern:
        words = "|".join(re.escape(s) for s in sorted(self.spellings, key=len, reverse=True))
        return re.compile(rf"(?<![\w-])(?:{words})(?![\w-])", re.I)


def glossary_terms(text: str) -> list[Term]:
    """The entries of GLOSSARY.md: ``### Name`` headings, each optionally followed by a line
    ``*Also:* other; spellings``."""
    terms = []
    for block in re.split(r"^### ", text, flags=re.M)[1:]:
        lines = block.strip().splitlines()
        name = lines[0].strip()
        also = next((ln for ln in lines[1:] if ln.strip()), "")
        spellings = [name]
        if also.startswith("*Also:*"):
            spellings += [x.strip() for x in also[len("*Also:*"):].split(";") if x.strip()]
        terms.append(Term(name, tuple(spellings)))
    return terms


def _reading_text(nb: dict) -> str:
    """The markdown a student reads, without the generated glossary line itself."""
    texts = [source(c) for c in nb["cells"] if c["cell_type"] == "markdown"]
    return "\n\n".join(p for t in texts for p in t.split("\n\n") if not p.startswith(TERMS_PREFIX))


def first_uses(notebooks: dict[str, dict], terms: list[Term]) -> dict[str, list[Term]]:
    """For each notebook (in course order), the glossary terms no earlier notebook used."""
    found, seen = {}, set()
    for name in sorted(notebooks):
        text = _reading_text(notebooks[name])
        new = [t for t in terms if t.name not in seen and t.pattern().search(text)]
        seen.update(t.name for t in new)
        found[name] = new
    return found


def terms_line(terms: list[Term]) -> str:
    if not terms:
        return f"{TERMS_PREFIX}: none here; the [glossary]({GLOSSARY}) has every term of the course."
    links = ", ".join(f"[{t.name}]({GLOSSARY}#{t.anchor})" for t in terms)
    return f"{TERMS_PREFIX} (defined in the [glossary]({GLOSSARY})): {links}."


def _with_study_line(title: str, lines: list[str]) -> str:
    paragraphs = [p for p in title.split("\n\n") if not p.startswith((STUDY_PREFIX, TERMS_PREFIX))]
    # after the runtime; without one, before the closing "Builds on ... Next" paragraph
    default = len(paragraphs) - 1 if len(paragraphs) > 1 and NEXT_PREFIX in paragraphs[-1] else len(paragraphs)
    at = next((i + 1 for i, p in enumerate(paragraphs) if p.startswith("**Runtime:**")), default)
    return "\n\n".join(paragraphs[:at] + lines + paragraphs[at:])


def _with_next_line(text: str, line: str, separator: str) -> str:
    """``text`` up to its "next" line (dropped) followed by ``line``. An existing "next" keeps its
    place: after " · " on the same paragraph, or as a paragraph of its own; ``separator`` is for a
    text without one."""
    found = re.search(r"(\s*)(·\s*)?\*\*Next:\*\*", text)
    if found:
        separator = "\n\n" if "\n\n" in found.group(1) and not found.group(2) else " · "
        text = text[: found.start()]
    return f"{text.rstrip()}{separator}{line}"


# --- sync: badges, setup cells, README ----------------------------------------------------------
_BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


def sync_notebook(nb: dict, name: str, repository: str = REPOSITORY, branch: str = BRANCH,
                  folder: str = "notebooks", entries: list[Entry] | None = None,
                  new_terms: list[Term] | None = None) -> dict:
    """Rewrite what is generated in ``nb``: the badge (opening ``folder/name`` on Colab), the setup
    cell and, given the course's ``entries``, the title cell's study time, glossary terms
    (``new_terms``, when a glossary is given) and "next" link, the last cell's "next" link (after
    the references; the cell is added when missing) and, in notebook 00, the course map."""
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
    if entries is None:
        return nb
    entry = next(e for e in entries if e.name == name)
    nxt = next_line(entries, name)
    lines = [study_line(entry)] + ([] if new_terms is None else [terms_line(new_terms)])
    text = _with_study_line(source(first), [])  # without the generated lines
    set_source(first, _with_study_line(_with_next_line(text, nxt, "\n\n"), lines))
    last = nb["cells"][-1]
    if last["cell_type"] != "markdown" or not source(last).startswith(REFERENCES_HEADING):
        last = {"cell_type": "markdown", "metadata": {}, "source": REFERENCES_HEADING}
        nb["cells"].append(last)
    set_source(last, _with_next_line(source(last), nxt, "\n\n"))
    if name == entries[0].name:
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown" and source(cell).startswith(MAP_HEADER.split(" what")[0]):
                set_source(cell, course_map(entries))
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


README_BLOCKS = ("notebooks", "syllabus")


def _replace_block(text: str, key: str, body: str) -> str:
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    if start not in text or end not in text:
        return text
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def readme_text(text: str, paths: list[Path], entries: list[Entry], repository: str = REPOSITORY,
                branch: str = BRANCH) -> str:
    text = _replace_block(text, "notebooks", readme_table(paths, repository, branch))
    return _replace_block(text, "syllabus", syllabus_table(entries))


def synced(notebooks: dict[str, dict], repository: str = REPOSITORY, branch: str = BRANCH,
           glossary: str | None = None) -> list[Entry]:
    """Sync ``notebooks`` (file name -> notebook) in place; returns the course's entries. Two passes:
    the first adds any missing generated cell, the second counts the words with every cell there.
    ``glossary`` is the text of GLOSSARY.md; without it the title cells get no terms line."""
    terms = None if glossary is None else glossary_terms(glossary)
    for _ in range(2):
        entries = course_entries(notebooks)
        uses = None if terms is None else first_uses(notebooks, terms)
        for name, nb in notebooks.items():
            sync_notebook(nb, name, repository, branch, entries=entries, new_terms=None if uses is None else uses[name])
    return course_entries(notebooks)


def read_glossary(root: Path = ROOT) -> str | None:
    path = root / "notebooks" / GLOSSARY
    return path.read_text(encoding="utf-8") if path.exists() else None


def sync(repository: str = REPOSITORY, branch: str = BRANCH, root: Path = ROOT) -> None:
    paths = notebook_paths(root / "notebooks")
    notebooks = {p.name: load(p) for p in paths}
    entries = synced(notebooks, repository, branch, read_glossary(root))
    for p in paths:
        save(notebooks[p.name], p)
    readme = root / "README.md"
    readme.write_text(readme_text(readme.read_text(encoding="utf-8"), paths, entries, repository, branch),
                      encoding="utf-8")
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
           "**Builds on:** ..."),
        code(setup_cell_source()),
        md("## 1. ...\n\nA short paragraph, then a small cell and a result you can see."),
        code("# (B, N, D)"),
        md("### Your turn 1\n\nWhat to do, and what the checker will look at."),
        code(exercise),
        md("### Your turn 2\n\n..."),
        code(exercise.replace("first", "second")),
        md("## Summary\n\n- ..."),
        md(f"{REFERENCES_HEADING}\n\n- Author et al., year, *Title*, section, figure: what it backs."),
    ]
    metadata = {MAP_KEY: {"map": f"what notebook {number} builds, in one line"}}
    return strip_notebook({"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5})


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
    seen = set()
    for i, cell in enumerate(nb["cells"]):
        cell.setdefault("id", f"cell-{i}")
        if cell["id"] in seen:  # a cell inserted by hand with an id already taken
            cell["id"] = next(f"cell-{i}-{k}" for k in range(len(nb["cells"]) + 1) if f"cell-{i}-{k}" not in seen)
        seen.add(cell["id"])
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
    nb = sync_notebook(student_notebook(strip_notebook(load(path))), path.name, repository, branch, folder=STUDENT)
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
    markdown = [source(c) for c in cells if c["cell_type"] == "markdown"]
    if not any(text.startswith("## Summary") for text in markdown):
        problems.append("no markdown cell starting '## Summary'")
    last = cells[-1]
    if last["cell_type"] != "markdown" or not source(last).startswith(REFERENCES_HEADING):
        problems.append(f"last cell is not a markdown cell starting {REFERENCES_HEADING!r}")
    elif not re.search(r"^- ", source(last), flags=re.M):
        problems.append("the references cell lists no reference ('- ' items)")
    if any(NEXT_PREFIX in text for text in markdown[1:-1]):
        problems.append(f"{NEXT_PREFIX} outside the title and last cells (they are generated; run sync)")
    if not map_blurb(nb):
        problems.append(f'no course-map line in the notebook metadata ({{"{MAP_KEY}": {{"map": "..."}}}})')
    return problems


def generated_problems(notebooks: dict[str, dict], repository: str = REPOSITORY, branch: str = BRANCH,
                       glossary: str | None = None) -> dict[str, list[str]]:
    """Where a notebook differs from what ``sync`` would write (badge, setup cell, study time, the
    glossary terms, the "next" links, the course map)."""
    want = copy.deepcopy(notebooks)
    try:
        synced(want, repository, branch, glossary)
    except ValueError as err:
        return {"(sync)": [str(err)]}
    found = {}
    for name, nb in notebooks.items():
        have_cells, want_cells = nb["cells"], want[name]["cells"]
        diff = [i for i, (a, b) in enumerate(zip(have_cells, want_cells)) if source(a) != source(b)]
        if len(have_cells) != len(want_cells):
            diff.append(len(have_cells))
        if diff:
            found[name] = [f"generated text out of date in cell(s) {diff} (run `python tools/course.py sync`)"]
    return found


def check_all(root: Path = ROOT) -> dict[str, list[str]]:
    readme = (root / "README.md").read_text(encoding="utf-8")
    repository, branch = read_settings(root)
    paths = notebook_paths(root / "notebooks")
    notebooks = {p.name: load(p) for p in paths}
    glossary = read_glossary(root)
    generated = generated_problems(notebooks, repository, branch, glossary)
    found = {}
    student = student_problems(root)
    for p in paths:
        problems = check_notebook(notebooks[p.name], p.name, repository, branch) + generated.get(p.name, [])
        if f"notebooks/{p.name}" not in readme:
            problems.append("not listed in README.md (run `python tools/course.py sync`)")
        if p.name in student:
            problems.append(f"{STUDENT}/{p.name} is {student[p.name]} (run `python tools/course.py student`)")
        if problems:
            found[p.name] = problems
    for name, problem in student.items():
        if problem == "no such notebook":
            found[f"{STUDENT}/{name}"] = [f"{problem} in notebooks/ (run `python tools/course.py student`)"]
    if "(sync)" in generated:
        found["(sync)"] = generated["(sync)"]
    if glossary is not None:
        uses = first_uses(notebooks, glossary_terms(glossary))
        unused = [t.name for t in glossary_terms(glossary) if not any(t in u for u in uses.values())]
        if unused:
            found[GLOSSARY] = [f"terms no notebook uses: {unused}"]
    if "(sync)" not in generated:
        want = copy.deepcopy(notebooks)
        entries = synced(want, repository, branch, glossary)
        if readme_text(readme, paths, entries, repository, branch) != readme:
            found["README.md"] = ["the notebook or syllabus table is out of date (run `python tools/course.py sync`)"]
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
