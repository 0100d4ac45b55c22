"""Badges, setup cells, stripping and student versions."""

import re
import shutil
import subprocess

import pytest

from tools import course


def _notebook(name="01_demo.ipynb", repo=course.REPOSITORY):
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": [f"{course.badge(name, repo)}\n\n# 01 · Demo\n\n"
                                                             "**What you will learn**: x. CPU 10 s, GPU 5 s."]},
        {"cell_type": "code", "metadata": {}, "execution_count": 3, "outputs": [{"output_type": "stream",
                                                                                "name": "stdout", "text": "x"}],
         "source": course.setup_cell_source(repo)},
        {"cell_type": "code", "metadata": {}, "execution_count": 4, "outputs": [],
         "source": "from clipedu.exercises import nb01\n\ndef f(x):\n    # BEGIN SOLUTION return twice x\n"
                   "    return 2 * x\n    # END SOLUTION\n\nnb01.double.check(f)"},
        {"cell_type": "code", "metadata": {}, "execution_count": 5,
         "outputs": [{"output_type": "execute_result", "execution_count": 5, "metadata": {},
                      "data": {"text/plain": "4"}}],
         "source": "# NBVAL_CHECK_OUTPUT\n2 + 2"},
        {"cell_type": "code", "metadata": {}, "execution_count": 6, "outputs": [],
         "source": "x = 1\n# BEGIN SOLUTION\ny = 2\n# END SOLUTION"},
        {"cell_type": "markdown", "metadata": {}, "source": "## Summary\nDone."},
        {"cell_type": "markdown", "metadata": {}, "source": "## References\n\n- Someone, 2021, *A paper*, fig. 1."},
    ]
    metadata = {"widgets": {"state": {}}, "kernelspec": {"name": "other"}, "clipedu": {"map": "a demo"}}
    return {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}


def test_badge_points_at_the_notebook_itself():
    url = course.colab_url("03_vision_transformer.ipynb", "me/fork", "dev")
    assert url == "https://colab.research.google.com/github/me/fork/blob/dev/notebooks/03_vision_transformer.ipynb"


def test_setup_cell_installs_only_on_colab_and_pins_what_colab_has():
    src = course.setup_cell_source("me/fork")
    assert 'if "google.colab" in sys.modules:' in src
    install = [line for line in src.splitlines() if "%pip install" in line]
    assert len(install) == 1 and install[0].startswith("    ")  # inside the Colab branch
    assert "git+https://github.com/me/fork@main" in install[0] and "{keep}" in install[0]
    for pkg in ("torch", "numpy", "ipywidgets"):
        assert f"{pkg}=={{{pkg}.__version__}}" in src
    assert "--upgrade" not in src and " -U " not in src
    assert src.rstrip().endswith("rt = runtime.setup()")


def test_strip_keeps_only_checked_outputs_and_cleans_metadata():
    nb = course.strip_notebook(_notebook())
    assert nb["cells"][1]["outputs"] == [] and nb["cells"][1]["execution_count"] is None
    assert nb["cells"][3]["outputs"][0]["data"] == {"text/plain": "4"}
    # nbval compares a cell only when it has an execution count: checked cells are numbered 1, 2, ...
    assert nb["cells"][3]["execution_count"] == 1 and nb["cells"][3]["outputs"][0]["execution_count"] == 1
    assert "widgets" not in nb["metadata"] and nb["metadata"]["kernelspec"]["name"] == "python3"


def test_student_version_replaces_solutions_and_tags_cells():
    nb = course.student_notebook(course.strip_notebook(_notebook()))
    ex = course.source(nb["cells"][2])
    assert "return 2 * x" not in ex and "BEGIN SOLUTION" not in ex
    assert "    raise NotImplementedError('Your turn: return twice x')" in ex
    assert ex.rstrip().endswith("nb01.double.check(f)")
    assert "raises-exception" in nb["cells"][2]["metadata"]["tags"]
    plain = course.source(nb["cells"][4])
    assert plain.startswith("x = 1\n") and "raise NotImplementedError('Your turn: write your answer here')" in plain
    assert "tags" not in nb["cells"][3]["metadata"]


def test_unbalanced_solution_markers_are_errors():
    nb = _notebook()
    course.set_source(nb["cells"][2], "# BEGIN SOLUTION\nx = 1")
    with pytest.raises(ValueError, match="without '# END SOLUTION'"):
        course.student_notebook(nb)


def test_check_notebook_reports_problems():
    problems = course.check_notebook(_notebook(), "01_demo.ipynb")
    assert "kernelspec is not python3" in problems and "saved widget state in metadata" in problems
    assert any("keeps outputs without NBVAL_CHECK_OUTPUT" in p for p in problems)
    assert course.check_notebook(course.strip_notebook(_notebook()), "01_demo.ipynb") == []
    assert "name is not NN_lower_snake.ipynb" in course.check_notebook(_notebook(), "Demo.ipynb")


def test_set_repo_rewrites_badges_install_cells_and_readme(tmp_path):
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    course.save(course.strip_notebook(_notebook()), root / "notebooks" / "01_demo.ipynb")
    (root / "README.md").write_text("intro\n<!-- notebooks:start -->\nold\n<!-- notebooks:end -->\nend\n")
    shutil.copy(course.ROOT / course.SETTINGS, root / course.SETTINGS)

    course.set_repo("me/fork", "dev", root=root)

    assert course.read_settings(root) == ("me/fork", "dev")
    assert "set-repo" in (root / course.SETTINGS).read_text()  # the file keeps its explanation
    assert course.check_all(root) == {}  # every generated link now points at the fork
    nb = course.load(root / "notebooks" / "01_demo.ipynb")
    assert course.badge("01_demo.ipynb", "me/fork", "dev") in course.source(nb["cells"][0])
    assert course.source(course.code_cells(nb)[0]) == course.setup_cell_source("me/fork", "dev")
    readme = (root / "README.md").read_text()
    assert "github/me/fork/blob/dev/notebooks/01_demo.ipynb" in readme and "old" not in readme
    assert readme.startswith("intro\n") and readme.endswith("end\n")
    # two badges a row: the student version and the solutions, both at the fork's branch
    assert "github/me/fork/blob/dev/student/01_demo.ipynb" in readme
    assert "https://me.github.io/fork/" in readme
    student = course.load(root / "student" / "01_demo.ipynb")
    assert course.badge("01_demo.ipynb", "me/fork", "dev", "student") in course.source(student["cells"][0])
    assert course.source(course.code_cells(student)[0]) == course.setup_cell_source("me/fork", "dev")
    assert "raise NotImplementedError('Your turn: return twice x')" in course.source(student["cells"][2])


def test_set_repo_rejects_a_bad_name_and_a_broken_settings_file(tmp_path):
    with pytest.raises(ValueError, match="expected OWNER/NAME"):
        course.set_repo("not a repo")
    (tmp_path / course.SETTINGS).write_text('repository = "me/fork"\n')
    with pytest.raises(ValueError, match='must set repository = "OWNER/NAME" and branch'):
        course.set_repo("me/fork", root=tmp_path)


def test_the_repository_name_is_written_in_one_place():
    """course.toml holds it; badges, install cells, the README table, CITATION.cff and student/
    are generated from it, and no other tracked file names it."""
    if not (course.ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    assert course.repository_mentions() == [], "run `python tools/course.py sync`, or derive the name from course.toml"


def _git_checkout(root):
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(course.ROOT / course.SETTINGS, root / course.SETTINGS)
    (root / "README.md").write_text("intro\n<!-- notebooks:start -->\nold\n<!-- notebooks:end -->\nend\n")
    course.save(course.strip_notebook(_notebook()), root / "notebooks" / "01_demo.ipynb")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)


def test_repository_mentions_finds_a_name_outside_the_generated_places(tmp_path):
    root = tmp_path / "repo"
    _git_checkout(root)
    course.set_repo("me/fork", "dev", root=root)
    (root / "docs.md").write_text("clone it:\n  git clone https://github.com/Me/Fork\n")
    (root / "untracked.md").write_text("me/fork")  # not tracked: git does not list it
    nb = course.load(root / "notebooks" / "01_demo.ipynb")
    nb["cells"][3]["source"] = "# NBVAL_CHECK_OUTPUT\nprint('me/fork')"
    course.save(nb, root / "notebooks" / "01_demo.ipynb")
    subprocess.run(["git", "add", "course.toml", "README.md", "docs.md", "notebooks", "student"], cwd=root, check=True)
    found = course.repository_mentions(root)
    assert found == ["docs.md:2", "notebooks/01_demo.ipynb: outside the badge and the setup cell"], found
    course.save(course.strip_notebook(_notebook("01_demo.ipynb", "me/fork")), root / "notebooks" / "01_demo.ipynb")
    (root / "docs.md").write_text("clone it from GitHub\n")
    assert course.repository_mentions(root) == []  # the badges, table and student/ do not count


def test_solution_of_keeps_the_answer_and_drops_the_scaffolding():
    cell = ("import torch\n\nfrom clipedu.exercises import nb01\n\n\ndef f(x):\n    # BEGIN SOLUTION do it\n"
            "    return torch.zeros(x)\n    # END SOLUTION\n\n\nnb01.thing.check(f)  # a comment")
    assert course.solution_of(cell) == "import torch\n\ndef f(x):\n    return torch.zeros(x)"


def test_new_notebook_skeleton_keeps_every_convention():
    nb = course.new_notebook("13_scaling_out.ipynb", "Scaling out")
    assert course.check_notebook(nb, "13_scaling_out.ipynb") == []
    with pytest.raises(ValueError, match="notebook names look like"):
        course.new_notebook("Scaling.ipynb", "x")


# --- the course map, "next" links and study time ---------------------------------------------------
def _course(n=3):
    """n synced demo notebooks, 00 with a course-map cell."""
    notebooks = {}
    for i in range(n):
        name = f"{i:02d}_demo_{i}.ipynb"
        nb = course.strip_notebook(_notebook(name))
        course.set_source(nb["cells"][0], course.source(nb["cells"][0]).replace("# 01 · Demo", f"# {i:02d} · Demo {i}"))
        notebooks[name] = nb
    table = {"cell_type": "markdown", "metadata": {}, "source": "| # | notebook |"}
    notebooks["00_demo_0.ipynb"]["cells"].insert(2, table)
    return notebooks


def test_next_links_and_the_map_follow_the_notebook_list():
    notebooks = _course()
    entries = course.synced(notebooks)
    assert [e.name for e in entries] == ["00_demo_0.ipynb", "01_demo_1.ipynb", "02_demo_2.ipynb"]
    first, last = notebooks["00_demo_0.ipynb"], notebooks["02_demo_2.ipynb"]
    assert course.source(first["cells"][-1]).endswith("**Next:** [01 · Demo 1](01_demo_1.ipynb)")
    assert course.source(first["cells"][0]).endswith("**Next:** [01 · Demo 1](01_demo_1.ipynb)")
    assert course.source(first["cells"][-1]).startswith("## References\n\n- Someone")  # hand-written part kept
    assert "this is the last notebook" in course.source(last["cells"][-1])
    table = course.source(first["cells"][2])
    assert table.startswith(course.MAP_HEADER) and table.count("\n| 0") == 3 and "[Demo 2](02_demo_2.ipynb)" in table
    assert course.generated_problems(notebooks) == {}
    # a hand edit of a generated line is found, and sync is idempotent
    cell = notebooks["01_demo_1.ipynb"]["cells"][-1]
    course.set_source(cell, course.source(cell).replace("02_demo_2", "00_demo_0"))
    assert list(course.generated_problems(notebooks)) == ["01_demo_1.ipynb"]
    course.synced(notebooks)
    assert course.generated_problems(notebooks) == {}


def test_a_missing_references_cell_is_added_and_then_asks_for_references():
    notebooks = _course(1)
    nb = notebooks["00_demo_0.ipynb"]
    nb["cells"].pop()  # the references
    course.synced(notebooks)
    assert course.source(nb["cells"][-1]).startswith("## References\n\n**Next:**")
    assert "the references cell lists no reference ('- ' items)" in course.check_notebook(nb, "00_demo_0.ipynb")


def test_check_reports_stale_next_lines_and_a_missing_map_line():
    nb = course.strip_notebook(_notebook())
    nb["cells"][-2]["source"] = "## Summary\nDone.\n\n**Next:** [02 · Old](02_old.ipynb)"
    del nb["metadata"]["clipedu"]
    problems = course.check_notebook(nb, "01_demo.ipynb")
    assert any("outside the title and last cells" in p for p in problems)
    assert any("no course-map line" in p for p in problems)


def test_study_time_follows_the_stated_rule():
    nb = course.strip_notebook(_notebook())
    words = 450
    nb["cells"].insert(2, {"cell_type": "markdown", "metadata": {}, "source": " ".join(["word"] * words)})
    base = course.words_read(course.strip_notebook(_notebook()))
    entry = course.course_entries({"01_demo.ipynb": nb})[0]
    assert entry.words == base + words and entry.exercises == 2
    # reading rounds up to whole minutes, the total up to 5 minutes
    reading = -(-(base + words) // course.READING_WPM)
    assert entry.reading_minutes == reading
    assert entry.study_minutes == 5 * -(-(reading + 2 * course.MINUTES_PER_EXERCISE) // 5)
    # solutions are not read (the student version stubs them), the setup cell is not counted
    assert "return 2 * x" not in " ".join(course.source(c) for c in course.student_notebook(nb)["cells"])
    long_setup = course.strip_notebook(_notebook())
    course.set_source(long_setup["cells"][1], course.source(long_setup["cells"][1]) + " extra" * 500)
    assert course.words_read(long_setup) == base
    assert str(course.READING_WPM) in course.STUDY_RULE and str(course.MINUTES_PER_EXERCISE) in course.STUDY_RULE
    assert f"{course.MINUTES_PER_PREDICTION} per prediction" in course.STUDY_RULE
    # a prediction (its checker is nbNN.predict_...) counts MINUTES_PER_PREDICTION, not an exercise's
    nb = course.strip_notebook(_notebook())
    nb["cells"].insert(2, {"cell_type": "markdown", "metadata": {}, "source": " ".join(["word"] * words)})
    cell = next(c for c in nb["cells"] if "y = 2" in course.source(c))
    course.set_source(cell, course.source(cell) + "\nnb01.predict_y.check(y)")
    entry = course.course_entries({"01_demo.ipynb": nb})[0]
    assert (entry.exercises, entry.predictions) == (1, 1)
    minutes = reading + course.MINUTES_PER_EXERCISE + course.MINUTES_PER_PREDICTION
    assert entry.study_minutes == 5 * -(-minutes // 5)
    assert "1 exercises at 10 min each and 1 prediction at 5 min" in course.study_line(entry)


def test_the_real_course_map_reaches_every_notebook():
    paths = course.notebook_paths()
    notebooks = {p.name: course.load(p) for p in paths}
    assert course.generated_problems(notebooks, glossary=course.read_glossary()) == {}
    # follow the "next" links from 00: every notebook is reached, in order, and the last says so
    seen, name = [], paths[0].name
    while True:
        seen.append(name)
        last = course.source(notebooks[name]["cells"][-1])
        found = re.search(r"\*\*Next:\*\* \[[^]]*\]\((\d\d_\w+\.ipynb)\)", last)
        if not found:
            assert "this is the last notebook" in last
            break
        name = found.group(1)
    assert seen == [p.name for p in paths]
    assert "13_scaling_out.ipynb" in seen
    assert "(13_scaling_out.ipynb)" in course.source(notebooks["12_real_clip_weights.ipynb"]["cells"][-1])
    table = next(course.source(c) for c in notebooks[paths[0].name]["cells"]
                 if course.source(c).startswith(course.MAP_HEADER))
    assert all(f"]({p.name})" in table for p in paths)


def test_readme_syllabus_is_generated_and_current():
    readme = (course.ROOT / "README.md").read_text()
    assert "<!-- syllabus:start -->" in readme and "<!-- syllabus:end -->" in readme
    paths = course.notebook_paths()
    entries = course.course_entries({p.name: course.load(p) for p in paths})
    assert course.readme_text(readme, paths, entries) == readme
    block = readme.split("<!-- syllabus:start -->")[1].split("<!-- syllabus:end -->")[0]
    assert course.STUDY_RULE in block
    assert all(f"(notebooks/{p.name}) | {e.words:,} |" in block for p, e in zip(paths, entries))
    assert course.check_all() == {}


def test_glossary_terms_are_listed_where_first_used():
    glossary = ("# Glossary\n\n### Nats\n\n*Also:* nat\n\nUnits.\n\n### Prefix-LM\n\n*Also:* prefix LM; prefix-LMs\n\n"
                "A mask.\n\n### Recall@K\n\nA rate.\n")
    terms = course.glossary_terms(glossary)
    assert [(t.name, t.spellings, t.anchor) for t in terms] == [
        ("Nats", ("Nats", "nat"), "nats"), ("Prefix-LM", ("Prefix-LM", "prefix LM", "prefix-LMs"), "prefix-lm"),
        ("Recall@K", ("Recall@K",), "recallk")]
    notebooks = _course()
    for name, text in (("01_demo_1.ipynb", "A loss of ln 2 nats; a PREFIX LM."),
                       ("02_demo_2.ipynb", "More nats; natsu; recall@KK")):
        notebooks[name]["cells"].insert(2, {"cell_type": "markdown", "metadata": {}, "source": text})
    uses = course.first_uses(notebooks, terms)
    assert {k: [t.name for t in v] for k, v in uses.items()} == {
        "00_demo_0.ipynb": [], "01_demo_1.ipynb": ["Nats", "Prefix-LM"], "02_demo_2.ipynb": []}  # whole words only
    course.synced(notebooks, glossary=glossary)
    title = course.source(notebooks["01_demo_1.ipynb"]["cells"][0])
    assert "**New terms** (defined in the [glossary](GLOSSARY.md)): [Nats](GLOSSARY.md#nats), " \
           "[Prefix-LM](GLOSSARY.md#prefix-lm)." in title
    assert "**New terms**: none here" in course.source(notebooks["00_demo_0.ipynb"]["cells"][0])
    # the generated line does not count as a use, so syncing again changes nothing
    assert course.generated_problems(notebooks, glossary=glossary) == {}
    assert course.generated_problems(notebooks) != {}  # without the glossary the lines would go


def test_every_glossary_term_is_used_and_the_required_ones_are_there():
    terms = course.glossary_terms(course.read_glossary())
    names = {t.name.lower() for t in terms} | {s.lower() for t in terms for s in t.spellings}
    for needed in ("nats", "label smoothing", "l-bfgs", "multinomial logistic regression", "mutual information",
                   "svd", "prefix-lm", "infonce", "temperature", "modality gap", "linear probe", "zero-shot",
                   "cls token", "eot pooling", "causal mask"):
        assert needed in names, needed
    assert "GLOSSARY.md" not in course.check_all()


def test_strip_gives_every_cell_a_unique_id():
    nb = _notebook()
    for cell in nb["cells"]:
        cell["id"] = "same"
    ids = [c["id"] for c in course.strip_notebook(nb)["cells"]]
    assert len(set(ids)) == len(ids) and ids[0] == "same"
