"""The course site's sources (tools/site.py) and the executed notebooks they are built from
(notebooks/conftest.py); rendering them is `make site`, checked in a browser by `make test-site`."""

import importlib.util
import json
import shutil

import nbformat
import pytest

from tools import course, site

_spec = importlib.util.spec_from_file_location("notebooks_conftest", course.ROOT / "notebooks" / "conftest.py")
executed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(executed)


def _out(kind="display_data", data=None, metadata=None, **rest):
    out = {"output_type": kind, **rest}
    if data is not None:
        out["data"], out["metadata"] = data, metadata or {}
    return nbformat.from_dict(out)


def test_an_explorer_cell_keeps_one_figure_and_no_widget_view():
    view = {"version_major": 2, "version_minor": 0, "model_id": "m"}
    inner = _out(data={"image/png": "drawn-in-the-output-widget", "text/plain": "<Figure>"})
    printed = _out("stream", name="stdout", text="49 patches\n")
    own = _out(data={executed.WIDGET_VIEW: view, "image/png": "first-state", "text/plain": "<explorer>"},
               metadata={executed.EXPLORER: "patch size explorer"})
    kept = executed.readable_outputs([inner, printed, own])
    assert kept == [printed, own]
    assert own["data"] == {"image/png": "first-state", "text/plain": "<explorer>"}
    # a cell without an explorer keeps its figures; a bare widget keeps only its text
    bare = _out(data={executed.WIDGET_VIEW: view, "text/plain": "IntSlider(value=0)"})
    assert executed.readable_outputs([inner, bare]) == [inner, bare]
    assert bare["data"] == {"text/plain": "IntSlider(value=0)"}
    assert executed.EXPLORER == __import__("clipedu.viz.explorers", fromlist=["x"]).EXPLORER


def test_the_line_of_a_wait_on_another_workers_run_is_left_out_of_the_page():
    waited = _out("stream", name="stdout", text=f"{executed.WAITING} /ci/runs/shapes-tiny-fast ...\n")
    both = _out("stream", name="stdout", text=f"{executed.WAITING} /ci/runs/x ...\nloaded 600 steps\n")
    printed = _out("stream", name="stdout", text="49 patches\n")
    assert executed.readable_outputs([waited, both, printed]) == [both, printed]
    assert both["text"] == "loaded 600 steps\n"


def test_links_to_site_pages_stay_and_other_files_point_at_the_repository():
    pages = {"notebooks/05_contrastive_loss.ipynb", "notebooks/GLOSSARY.md"}
    text = ("[next](06_train.ipynb) [loss](05_contrastive_loss.ipynb#the-loss) [code](../clipedu/losses.py) "
            "[guide](../CONTRIBUTING.md#forks) [web](https://example.org/x) [here](#top) [data](../data/) "
            "[words](GLOSSARY.md)")
    out = site.rewrite_links(text, "notebooks", pages, "me/fork", "dev")
    assert "[loss](05_contrastive_loss.ipynb#the-loss)" in out and "[words](GLOSSARY.md)" in out
    assert "[code](https://github.com/me/fork/blob/dev/clipedu/losses.py)" in out
    assert "[guide](https://github.com/me/fork/blob/dev/CONTRIBUTING.md#forks)" in out
    assert "[data](https://github.com/me/fork/tree/dev/data)" in out
    assert "[next](https://github.com/me/fork/blob/dev/notebooks/06_train.ipynb)" in out  # not a page of the site
    assert "[web](https://example.org/x)" in out and "[here](#top)" in out


def _checkout(root, glossary=True):
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(course.ROOT / course.SETTINGS, root / course.SETTINGS)
    (root / "README.md").write_text(
        "# demo\n\nThe opening.\n\n## The package\n\n| module | notebook |\n| --- | --- |\n"
        "| `demo.x` | [00](notebooks/00_demo.ipynb), [guide](CONTRIBUTING.md) |\n\n"
        "## The notebooks\n\nA table.\n\n### Syllabus\n\nWeek 1: [00](notebooks/00_demo.ipynb).\n\n"
        "## Licence\n\nMIT.\n")
    if glossary:
        (root / "notebooks" / "GLOSSARY.md").write_text("# Glossary\n\n**loss**: see [00](00_demo.ipynb).\n")
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# 00 · Demo\n\nSee [code](../demo/x.py)."},
                    {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                     "source": course.setup_cell_source()}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    course.save(nb, root / "notebooks" / "00_demo.ipynb")
    ran = json.loads(json.dumps(nb))
    ran["cells"][1]["outputs"] = [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                                   "data": {"text/plain": "1"}}]
    (root / "executed").mkdir()
    course.save(ran, root / "executed" / "00_demo.ipynb")


def test_assemble_writes_every_page_with_links_from_course_toml(tmp_path):
    root = tmp_path / "repo"
    _checkout(root)
    course.set_repo("me/fork", "dev", root=root)
    src = tmp_path / "src"
    assert site.assemble(root / "executed", src, root) == ["00_demo.ipynb"]
    config = json.loads((src / "_config.yml").read_text())
    assert config["repository"] == {"url": "https://github.com/me/fork", "branch": "dev", "path_to_book": ""}
    assert config["execute"]["execute_notebooks"] == "off"  # rendered from nbval's outputs, never run again
    toc = json.loads((src / "_toc.yml").read_text())
    assert toc["parts"][0]["chapters"] == [{"file": "notebooks/00_demo"}]
    assert toc["parts"][1]["chapters"] == [{"file": "map"}, {"file": "syllabus"}, {"file": "notebooks/GLOSSARY"}]
    home = (src / "index.md").read_text()
    assert home.startswith("# demo\n\nThe opening.") and "[Demo](notebooks/00_demo.ipynb)" in home
    assert "github/me/fork/blob/dev/student/00_demo.ipynb" in home and "[Glossary](notebooks/GLOSSARY.md)" in home
    assert "[guide](https://github.com/me/fork/blob/dev/CONTRIBUTING.md)" in (src / "map.md").read_text()
    syllabus = (src / "syllabus.md").read_text()
    assert syllabus.startswith("# Syllabus\n\nWeek 1: [00](notebooks/00_demo.ipynb)") and "MIT" not in syllabus
    assert "[00](00_demo.ipynb)" in (src / "notebooks" / "GLOSSARY.md").read_text()
    nb = course.load(src / "notebooks" / "00_demo.ipynb")
    assert nb["cells"][1]["outputs"][0]["data"] == {"text/plain": "1"}  # the executed copy, outputs kept
    assert "(https://github.com/me/fork/blob/dev/demo/x.py)" in course.source(nb["cells"][0])
    assert "me/fork" not in (course.ROOT / "tools" / "site.py").read_text()


def test_the_readme_gives_the_site_its_map_and_its_syllabus():
    readme = (course.ROOT / "README.md").read_text(encoding="utf-8")
    heading, body = site.readme_section(readme, r"syllabus")
    assert heading.startswith("Syllabus") and "| **the course** |" in body and "## " not in body
    heading, body = site.readme_section(readme, r"\bpackage\b|\bmap\b")
    assert heading == "The package" and "clipedu." in body


def test_assemble_without_glossary_or_executed_notebooks(tmp_path):
    root = tmp_path / "repo"
    _checkout(root, glossary=False)
    src = tmp_path / "src"
    site.assemble(root / "executed", src, root)
    assert {"file": "notebooks/GLOSSARY"} not in json.loads((src / "_toc.yml").read_text())["parts"][1]["chapters"]
    (root / "executed" / "00_demo.ipynb").unlink()
    with pytest.raises(SystemExit, match="lacks the executed 00_demo.ipynb: run `make test-notebooks`"):
        site.assemble(root / "executed", src, root)
