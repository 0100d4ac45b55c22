"""nbval runs every notebook in `make test`; with ``CLIPEDU_SAVE_EXECUTED=<folder>`` set, each
notebook is also written there with the outputs that run produced, so that `make site` renders
the course from them instead of executing the notebooks once more.

What is written is for reading, not for committing: each cell keeps nbval's outputs and an
execution count. An explorer's output keeps its static figure and drops the widget view (no
widget state is saved, so a page could not draw the widget), and the figures its widget drew into
its Output widgets (which reach the cell's outputs when no front-end takes them) are left out, so
the page shows the explorer's first state once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clipedu.checkpoint import WAITING

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
EXPLORER = "clipedu-explorer"  # display metadata of an explorer's output (clipedu.viz.explorers)


# nbval waits 5 s for a cell's output messages once the kernel has replied (a constant of nbval's,
# computationalmodelling/nbval#136 and #231). With ipykernel 7, a cell that trains for minutes on
# two busy cores has been seen to deliver them more than 60 s late, which failed a cell that ran
# fine (notebook 07 in CI). A cell that really hangs is still stopped by --nbval-cell-timeout.
OUTPUT_TIMEOUT = 600


def pytest_collection_modifyitems(items):
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = OUTPUT_TIMEOUT


def _folder() -> Path | None:
    value = os.environ.get("CLIPEDU_SAVE_EXECUTED")
    return Path(value) if value else None


def readable_outputs(outputs: list) -> list:
    """A cell's outputs for a static page: widget views dropped, an explorer's static figure kept
    in place of the figures its widget drew, and the line a notebook prints while it waits for a
    run another worker is training left out."""
    explorer = any(EXPLORER in out.get("metadata", {}) for out in outputs)
    kept = []
    for out in outputs:
        data = out.get("data")
        if out.get("output_type") == "stream" and WAITING in out.get("text", ""):
            # run_lock's line when another worker was training the same run: of this test run, not the lesson
            text = "".join(line for line in out["text"].splitlines(True) if not line.startswith(WAITING))
            if not text:
                continue
            out["text"] = text
        if data is None:  # stream, error
            kept.append(out)
            continue
        if explorer and EXPLORER not in out.get("metadata", {}) and "image/png" in data:
            continue  # drawn inside an explorer's Output widget: the explorer's own figure stands for it
        data.pop(WIDGET_VIEW, None)  # nbval has compared them already: edited in place
        kept.append(out)
    return kept


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield
    if _folder() is None or not hasattr(item, "test_outputs") or item.test_outputs is None:
        return
    cell = item.cell  # a cell of the notebook nbval read (item.parent.nb)
    cell.outputs = readable_outputs(item.test_outputs)
    cell.execution_count = item.cell_num + 1
    for out in cell.outputs:
        if "execution_count" in out:
            out["execution_count"] = cell.execution_count


def pytest_runtest_teardown(item, nextitem):
    folder = _folder()
    notebook = getattr(item.parent, "nb", None)
    if folder is None or notebook is None or (nextitem is not None and nextitem.parent is item.parent):
        return
    import nbformat

    folder.mkdir(parents=True, exist_ok=True)
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, str(folder / Path(str(item.parent.fspath)).name))
