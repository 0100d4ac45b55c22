"""The embedding space, drawn (notebook 09): 2-d projections coloured by attribute, matched and
unmatched cosines, and a widget that recolours precomputed projections.

The numbers come from :mod:`clipedu.geometry`; these functions only draw them.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.lines import Line2D

from clipedu.viz.explorers import show

PROJECTION_TITLES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}


# --- plots ----------------------------------------------------------------------------------------------
def _colours(count: int, palette=None) -> list:
    if palette is not None:
        if len(palette) < count:
            raise ValueError(f"the palette has {len(palette)} colours for {count} classes")
        return [tuple(c / 255 for c in p) if max(p) > 1 else tuple(p) for p in palette[:count]]
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]


def plot_projection(points, labels, names: Sequence[str] | None = None, modality=None, ax=None,
                    title: str = "", palette=None, size: float = 9.0, legend: bool = True):
    """A 2-d scatter: colour = ``labels`` (class indices, with ``names``), marker = ``modality``.

    ``modality`` (N,) booleans or 0/1, True/1 for a text embedding: images are drawn as dots and
    texts as crosses. ``palette``: one RGB colour per class (0-255 or 0-1). Returns the axes.
    """
    points = torch.as_tensor(points).detach().float().cpu()
    labels = torch.as_tensor(labels).long().cpu()
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"expected 2-d points (N, 2), got {tuple(points.shape)}")
    if labels.shape != (len(points),):
        raise ValueError(f"expected one label per point ({len(points)}), got {tuple(labels.shape)}")
    count = int(labels.max()) + 1 if names is None else len(names)
    names = list(names) if names is not None else [str(i) for i in range(count)]
    colours = _colours(count, palette)
    kinds = [(torch.ones(len(points), dtype=torch.bool), "o", "")]
    if modality is not None:
        is_text = torch.as_tensor(modality).bool().cpu()
        kinds = [(~is_text, "o", "image"), (is_text, "x", "text")]
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    for mask, marker, _ in kinds:
        for c in range(count):
            sel = mask & (labels == c)
            if sel.any():
                ax.scatter(points[sel, 0], points[sel, 1], s=size, color=colours[c], marker=marker,
                           linewidths=0.8, alpha=0.75)
    if legend:
        handles = [Line2D([], [], ls="", marker="o", color=colours[c], label=names[c]) for c in range(count)]
        if modality is not None:
            handles += [Line2D([], [], ls="", marker=m, color="grey", label=lab) for _, m, lab in kinds]
        ax.legend(handles=handles, fontsize=6, loc="best", markerscale=0.8, framealpha=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return ax


def plot_cosine_histograms(matched, unmatched, ax=None, title: str = "", bins: int = 60):
    """Densities of matched and unmatched pair cosines on one axis, with their means marked."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 2.8))
    edges = np.linspace(-1, 1, bins + 1)
    for values, label, colour in ((unmatched, "unmatched pairs", "C7"), (matched, "matched pairs", "C3")):
        v = torch.as_tensor(values).float().cpu().numpy()
        ax.hist(v, bins=edges, density=True, alpha=0.6, color=colour, label=f"{label} (mean {v.mean():.2f})")
        ax.axvline(v.mean(), color=colour, lw=1, ls="--")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax


def projection_explorer(points: dict, labels: dict, names: dict, modality=None, palettes: dict | None = None,
                        attribute: str | None = None, method: str | None = None):
    """Recolour precomputed projections: a menu for the method and one for the attribute.

    ``points``: method name -> (N, 2); ``labels``: attribute -> (N,) class indices; ``names``:
    attribute -> class names; ``palettes``: attribute -> colours (optional). Nothing is recomputed,
    so a change redraws at once.
    """
    if not points or not labels:
        raise ValueError("give at least one projection and one attribute")
    palettes = palettes or {}
    method_menu = widgets.Dropdown(options=[(PROJECTION_TITLES.get(m, m), m) for m in points],
                                   value=method or next(iter(points)), description="projection")
    attribute_menu = widgets.Dropdown(options=list(labels), value=attribute or next(iter(labels)),
                                      description="colour by")

    def figure(method, attribute):
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        plot_projection(points[method], labels[attribute], names[attribute], modality, ax,
                        title=f"{PROJECTION_TITLES.get(method, method)}, coloured by {attribute}",
                        palette=palettes.get(attribute))
        fig.tight_layout()
        return fig

    def draw(method, attribute):
        figure(method, attribute)
        plt.show()

    out = widgets.interactive_output(draw, {"method": method_menu, "attribute": attribute_menu})
    box = widgets.VBox([widgets.HBox([method_menu, attribute_menu]), out])
    return show(box, figure(method_menu.value, attribute_menu.value), "projection explorer")
