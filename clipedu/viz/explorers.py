"""How every explorer (a widget over a plot) shows itself.

One convention for all of them: an explorer **displays itself and returns its widget** (so a
notebook calls it as ``explorer = ...(...)`` and may read or set its controls afterwards). The
widget goes out in one output together with a plain PNG of its first state:

- a front-end with widgets (JupyterLab, Notebook 7, VS Code, Colab) draws the live widget, the
  richest of the formats it knows;
- a viewer without them (a rendered page of the course site, GitHub, nbconvert) shows the PNG,
  a readable figure instead of ``VBox(children=...)``.

:func:`show` does that; each explorer builds the figure of its default state with the same
function its widget redraws with, so the static figure is what the widget first shows.
"""

from __future__ import annotations

import base64
import io

import matplotlib.pyplot as plt
from IPython.display import display

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def figure_png(fig, dpi: int = 90) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it (so it is not also shown inline)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def widget_bundle(widget) -> dict:
    """The display data of ``widget``: its ``text/plain`` and widget-view entries (ipywidgets 7 and 8)."""
    if hasattr(widget, "_repr_mimebundle_"):  # ipywidgets 8
        return dict(widget._repr_mimebundle_())
    # ipywidgets 7 displays itself from _ipython_display_; the same data, built here
    if getattr(widget, "_handle_displayed", None):
        widget._handle_displayed()
    return {"text/plain": repr(widget),
            WIDGET_VIEW: {"version_major": 2, "version_minor": 0, "model_id": widget._model_id}}


def explorer_bundle(widget, figure, name: str) -> dict:
    """One output for ``widget``: the widget view, a PNG of ``figure`` (closed here) and a short
    ``text/plain`` naming the explorer."""
    if not hasattr(figure, "savefig"):
        raise ValueError(f"expected the matplotlib figure of the {name}'s first state, got {type(figure).__name__}")
    bundle = widget_bundle(widget)
    bundle["image/png"] = base64.b64encode(figure_png(figure)).decode("ascii")
    bundle["text/plain"] = f"<{name}: a widget; the figure is its first state>"
    return bundle


EXPLORER = "clipedu-explorer"  # the output's metadata names the explorer (notebooks/conftest.py reads it)


def show(widget, figure, name: str):
    """Display ``widget`` with ``figure`` (its first state) as the fallback for a viewer without
    widgets, and return ``widget``."""
    display(explorer_bundle(widget, figure, name), raw=True, metadata={EXPLORER: name})
    return widget
