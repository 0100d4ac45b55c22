"""Badges, setup cells, stripping and student versions."""

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
    ]
    return {"cells": cells, "metadata": {"widgets": {"state": {}}, "kernelspec": {"name": "other"}},
            "nbformat": 4, "nbformat_minor": 5}


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
