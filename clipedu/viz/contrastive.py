"""The contrastive loss, drawn: similarity matrices, one row's softmax at a temperature, rankings
(notebook 05).

Pure functions compute what is shown; the tests call them directly:

- :func:`temperature_view` -- one row of a similarity matrix at a temperature tau: the softmax,
  the row's InfoNCE loss, and the gradient on every entry (d loss / d logit = p - y,
  d loss / d similarity = (p - y) / tau).
- :func:`rank_texts`, :func:`rank_images` -- the top-k texts for an image and images for a text.
- :func:`ranking_html` -- a ranked caption list as a small HTML table.

Plots: :func:`plot_similarity_matrix` (a labelled heatmap with thumbnails), :func:`plot_temperature_view`,
:func:`plot_image_ranking`.

Widgets (core ipywidgets only; ipywidgets 7.7 and 8), each drawn in its default state at once; each
displays itself, with a plain figure of that state for a viewer without widgets, and returns its
widget (:mod:`clipedu.viz.explorers`):

- :func:`temperature_explorer` -- a ``FloatLogSlider`` for tau and an ``IntSlider`` for the row.
- :func:`similarity_explorer` -- pick an image and see the captions ranked; pick a caption and see
  the images ranked.

Hooks for browser tests (stable names; keep them when editing):

==========================  ===============================================================
temperature explorer        ``description="tau"`` FloatLogSlider, CSS class ``clipedu-tau``;
                            ``description="row"`` IntSlider, class ``clipedu-row``;
                            HTML readout, class ``clipedu-readout`` (scale, p(positive), gradients);
                            HTML whose text starts ``loss =``, class ``clipedu-loss``;
                            Output widget, class ``clipedu-plot``, holding one PNG image that is
                            re-rendered on every change.
similarity explorer         ``description="image"`` IntSlider, class ``clipedu-image``;
                            ``description="caption"`` Dropdown, class ``clipedu-caption``;
                            HTML table of ranked captions, class ``clipedu-text-ranking``;
                            Output widgets (PNG), classes ``clipedu-image-plot`` (the chosen
                            image) and ``clipedu-images-plot`` (the ranked images).
==========================  ===============================================================

Sliders use ``continuous_update=False``: a redraw (a matplotlib figure) takes a tenth of a second.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Sequence
from typing import NamedTuple

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import Image, clear_output, display
from matplotlib.offsetbox import AnnotationBbox, OffsetImage

from clipedu.viz.explorers import figure_png, show
from clipedu.viz.images import draw_image, to_display


# --- pure functions ---------------------------------------------------------------------------------
def _check_matrix(similarities: torch.Tensor, name: str = "similarities") -> torch.Tensor:
    if not isinstance(similarities, torch.Tensor) or similarities.dim() != 2 or 0 in similarities.shape:
        got = tuple(similarities.shape) if isinstance(similarities, torch.Tensor) else type(similarities).__name__
        raise ValueError(f"expected {name} of shape (B, M) with B, M >= 1, got {got}")
    return similarities.detach().float().cpu()


def temperature_view(
    similarities: torch.Tensor,
    row: int,
    tau: float,
    positives: Sequence[int] | torch.Tensor | None = None,
) -> dict:
    """What one row of the contrastive loss looks like at temperature ``tau``.

    ``similarities`` (B, M): cosines, row i = image i against every text (pass ``.t()`` for the
    text-to-image direction). The row's logits are ``similarities[row] / tau`` and its target puts
    all its weight on text ``row``, or spreads it evenly over ``positives`` (indices or a bool mask
    of length M) when several texts fit, as ``clip_loss(..., positive_mask=...)`` does.

    Returns a dict of plain floats and (M,) tensors:

    - ``probs``: the softmax over the row (sums to 1); ``target``: y; ``logits``;
    - ``loss``: cross-entropy ``-sum_j y_j log p_j`` (= ``-log p[row]`` for a one-hot target);
    - ``grad_logits`` = p - y, ``grad_similarities`` = (p - y) / tau;
    - ``grad_positive``: d loss / d similarity of the positive text ``row`` (negative: pulled up);
      ``grad_negatives``: the same for the other columns, in ``negative_index`` order (each
      non-negative for a one-hot target: pushed down);
    - ``grad_logit_scale``: d loss / d log(1/tau) = sum_j (p_j - y_j) logits_j: positive means a
      gradient step would *lower* the scale (raise tau), negative means it would raise it;
    - ``p_positive``, ``scale`` (1/tau), ``tau``, ``row``, ``entropy`` (nats) and
      ``effective_candidates`` = exp(entropy): about 1 when the softmax is sure, M when it is uniform.
    """
    sims = _check_matrix(similarities)
    b, m = sims.shape
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < b:
        raise ValueError(f"row must be an int in [0, {b}), got {row!r}")
    if row >= m:
        raise ValueError(f"row {row} has no positive: the matrix has only {m} columns")
    tau = float(tau)
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau (the temperature) must be a positive number, got {tau}")
    target = torch.zeros(m)
    if positives is None:
        target[row] = 1.0
    else:
        mask = torch.as_tensor(positives)
        if mask.dtype != torch.bool:
            index = mask.long().flatten()
            if index.numel() and not (0 <= int(index.min()) and int(index.max()) < m):
                raise ValueError(f"positives must be column indices in [0, {m}), got {index.tolist()}")
            mask = torch.zeros(m, dtype=torch.bool)
            mask[index] = True
        if mask.shape != (m,):
            raise ValueError(f"a boolean positives mask must have shape ({m},), got {tuple(mask.shape)}")
        if not mask[row]:
            raise ValueError(f"positives must include the row's own text ({row})")
        target = mask.float() / mask.sum()
    logits = sims[row].double() / tau  # (M,) in float64: tau can be tiny
    log_probs = logits.log_softmax(0)
    probs = log_probs.exp()
    grad_logits = probs - target.double()  # d loss / d logits: the softmax minus the target
    entropy = -(probs * log_probs).sum().item()  # log_softmax stays finite, so 0 * log 0 never occurs
    others = [j for j in range(m) if j != row]
    grad_similarities = grad_logits / tau
    return {
        "row": row,
        "tau": tau,
        "scale": 1.0 / tau,
        "logits": logits.float(),
        "probs": probs.float(),
        "target": target,
        "loss": max(0.0, -(target.double() * log_probs).sum().item()),  # >= 0; rounding can give -1e-17
        "p_positive": probs[row].item(),
        "grad_logits": grad_logits.float(),
        "grad_similarities": grad_similarities.float(),
        "grad_positive": grad_similarities[row].item(),
        "grad_negatives": grad_similarities[others].float(),
        "negative_index": others,
        "grad_logit_scale": (grad_logits * logits).sum().item(),
        "entropy": entropy,
        "effective_candidates": math.exp(entropy),
    }


class Ranking(NamedTuple):
    """The top-k items, best first: their indices and similarities (cosines)."""

    indices: list[int]
    scores: list[float]


def _check_pair(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> None:
    for name, x in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] == 0:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected {name} of shape (N, E) with N >= 1, got {got}")
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"image and text embeddings must have the same width, got {image_embeds.shape[1]} and "
            f"{text_embeds.shape[1]}"
        )


def _rank(scores: torch.Tensor, k: int) -> Ranking:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    top = scores.topk(min(k, scores.numel()))
    return Ranking(top.indices.tolist(), top.values.tolist())


def rank_texts(image_embeds: torch.Tensor, text_embeds: torch.Tensor, i: int, k: int = 5) -> Ranking:
    """The ``k`` texts most similar to image ``i`` (cosine of unit embeddings), best first."""
    _check_pair(image_embeds, text_embeds)
    n = image_embeds.shape[0]
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
        raise ValueError(f"image index must be an int in [0, {n}), got {i!r}")
    scores = text_embeds.detach().float().cpu() @ image_embeds[i].detach().float().cpu()  # (M,)
    return _rank(scores, k)


def rank_images(image_embeds: torch.Tensor, text_embeds: torch.Tensor, j: int, k: int = 5) -> Ranking:
    """The ``k`` images most similar to text ``j``, best first."""
    _check_pair(image_embeds, text_embeds)
    m = text_embeds.shape[0]
    if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < m:
        raise ValueError(f"text index must be an int in [0, {m}), got {j!r}")
    scores = image_embeds.detach().float().cpu() @ text_embeds[j].detach().float().cpu()  # (N,)
    return _rank(scores, k)


def ranking_html(
    ranking: Ranking,
    captions: Sequence[str],
    own: int | None = None,
    fitting: Sequence[int] | torch.Tensor | None = None,
) -> str:
    """A ranked caption list as an HTML table: rank, cosine, caption.

    ``own`` marks the image's own caption with a star; ``fitting`` (indices or a bool mask) marks
    captions that also describe the image (same attributes) with a check mark.
    """
    if fitting is None:
        fit = set()
    else:
        fitting = torch.as_tensor(fitting)
        fit = set((fitting.nonzero().flatten() if fitting.dtype == torch.bool else fitting.flatten()).tolist())
    rows = []
    for rank, (j, score) in enumerate(zip(ranking.indices, ranking.scores), start=1):
        mark = "&#9733;" if j == own else ("&#10003;" if j in fit else "")
        rows.append(
            f"<tr><td>{rank}</td><td>{score:+.3f}</td><td>{mark}</td>"
            f"<td style='text-align:left'>{html.escape(captions[j])}</td></tr>"
        )
    legend = "&#9733; its own caption" + (" &middot; &#10003; same attributes" if fitting is not None else "")
    return (
        "<table class='clipedu-ranking'><tr><th>rank</th><th>cosine</th><th></th>"
        "<th style='text-align:left'>caption</th></tr>" + "".join(rows) + f"</table><small>{legend}</small>"
    )


# --- plots ------------------------------------------------------------------------------------------
def _short(text: str, width: int = 28, lines: int = 2) -> str:
    return textwrap.shorten(text, width * lines, placeholder="...") if len(text) > width * lines else text


def plot_similarity_matrix(
    similarities: torch.Tensor,
    captions: Sequence[str] | None = None,
    images: torch.Tensor | None = None,
    ax=None,
    title: str = "cosine similarity",
    values: bool = True,
    vmin: float | None = -1.0,
    vmax: float | None = 1.0,
    cmap: str = "RdBu_r",
    positives: torch.Tensor | None = None,
):
    """A heatmap of a (B, M) similarity matrix: rows are images, columns texts.

    ``images`` (uint8 (B, C, H, W)) are drawn as thumbnails beside the rows; ``captions`` label the
    columns. With ``values`` each cell shows its number (for small batches). The positives get a
    black frame: the diagonal, or every True cell of ``positives`` ((B, M) booleans). Returns the axes.
    """
    sims = _check_matrix(similarities)
    b, m = sims.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.75 * m, 1.6 + 0.6 * b))
    im = ax.imshow(sims.numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if values and b * m <= 256:
        for i in range(b):
            for j in range(m):
                v = sims[i, j].item()
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if vmax is not None and abs(v) > 0.6 * max(abs(vmax), 1e-9) else "black")
    if positives is None:
        frames = [(k, k) for k in range(min(b, m))]
    else:
        if tuple(positives.shape) != (b, m):
            raise ValueError(f"positives must be ({b}, {m}) booleans, got {tuple(positives.shape)}")
        frames = [tuple(ij) for ij in torch.as_tensor(positives).nonzero().tolist()]
    for i, j in frames:  # outline the positives
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=1.5))
    ax.set_xticks(range(m))
    if captions is not None:
        ax.set_xticklabels([f"{j}: " + "\n".join(textwrap.wrap(_short(c), 28)) for j, c in enumerate(captions)],
                           rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
        ax.set_xlabel("text j")
    else:
        ax.set_xlabel("text j")
    ax.set_yticks(range(b))
    ax.set_ylabel("image i")
    if images is not None:
        pictures = images.detach().cpu()
        height_in = ax.get_position().height * ax.figure.get_figheight()
        zoom = 0.85 * height_in * 72 / b / pictures.shape[-2]  # OffsetImage sizes are in points
        for i in range(b):
            box = OffsetImage(to_display(pictures[i]), zoom=zoom, cmap="gray")
            ax.add_artist(AnnotationBbox(box, (-0.55, i), xycoords="data", box_alignment=(1.0, 0.5),
                                         frameon=False, annotation_clip=False))
        ax.set_yticklabels([f"{i}" for i in range(b)])
        ax.tick_params(axis="y", pad=4 + zoom * pictures.shape[-2])
    ax.set_title(title)
    return ax


def plot_temperature_view(view: dict, labels: Sequence[str] | None = None, axes=None, title: str | None = None):
    """Three panels for a :func:`temperature_view`: the row's cosines, its softmax, its gradient.

    Left: the cosines (what the model computed; tau does not change them). Middle: p_j as bars
    (the positive green, the rest grey) and the target y as black marks. Right: d loss /
    d similarity_j = (p_j - y_j) / tau; gradient descent moves each similarity against its bar, so
    the positive (bar below 0) is pulled up and the negatives (bars above 0) are pushed down.
    """
    probs, target, grads = view["probs"].numpy(), view["target"].numpy(), view["grad_similarities"].numpy()
    cosines = (view["logits"] * view["tau"]).numpy()
    m = len(probs)
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.0))
    else:
        fig = axes[0].figure
    colours = ["#2a9d4b" if t > 0 else "#9a9a9a" for t in target]
    x = list(range(m))
    ticks = list(labels) if labels is not None else [str(j) for j in x]
    panels = [
        (cosines, "cosine(image, text j)", f"row {view['row']}: cosines"),
        (probs, "p(text j | image)", f"softmax at tau = {view['tau']:.3g}: loss {view['loss']:.3f}"),
        (grads, "d loss / d cosine", "gradient (p - y) / tau"),
    ]
    for ax, (values, ylabel, panel_title) in zip(axes, panels):
        ax.bar(x, values, color=colours)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(ticks, fontsize=8)
        ax.set_xlabel("text j")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title, fontsize=10)
    axes[0].set_ylim(-1.05, 1.05)
    axes[1].set_ylim(0, 1.05)
    axes[1].scatter(x, target, marker="_", s=250, color="black", zorder=3, label="target y")
    axes[1].legend(loc="upper right", fontsize=8)
    limit = max(abs(float(grads.min())), abs(float(grads.max())), 1e-12) * 1.1
    axes[2].set_ylim(-limit, limit)
    axes[2].set_xlabel("text j  (below 0: pulled up, above 0: pushed down)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_image_ranking(images: torch.Tensor, ranking: Ranking, own: int | None = None,
                       fitting: Sequence[int] | torch.Tensor | None = None, title: str | None = None):
    """The ranked images in a row, each titled with its rank and cosine; ``own`` (the caption's own
    image) gets a green frame, ``fitting`` images (same attributes) a blue one. Returns the figure."""
    fit = set()
    if fitting is not None:
        fitting = torch.as_tensor(fitting)
        fit = set((fitting.nonzero().flatten() if fitting.dtype == torch.bool else fitting.flatten()).tolist())
    k = len(ranking.indices)
    fig, axes = plt.subplots(1, k, figsize=(1.45 * k, 1.9), squeeze=False)
    for ax, rank, i, score in zip(axes[0], range(1, k + 1), ranking.indices, ranking.scores):
        draw_image(ax, images[i])
        colour = "#2a9d4b" if i == own else ("#3b6ea5" if i in fit else None)
        for spine in ax.spines.values():
            spine.set_visible(colour is not None)
            if colour:
                spine.set_color(colour)
                spine.set_linewidth(3)
        ax.set_title(f"#{rank} image {i}\ncos {score:+.3f}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# --- widgets ----------------------------------------------------------------------------------------
def _show_png(output, png: bytes) -> None:
    with output:
        clear_output(wait=True)
        display(Image(data=png, format="png"))


def _classed(widget, name: str):
    widget.add_class(name)
    return widget


def temperature_explorer(
    similarities: torch.Tensor,
    captions: Sequence[str] | None = None,
    row: int = 0,
    tau: float = 0.07,
    positives: torch.Tensor | None = None,
    tau_range: tuple[float, float] = (1e-3, 3.0),
):
    """A widget: the softmax, loss and gradient of one row of ``similarities`` as tau changes.

    ``similarities`` (B, M) cosines; ``captions`` (M) name the columns in the readout; ``positives``
    (B, M) booleans, optional, mark every text that fits each image (the target then spreads over
    them). Controls: ``tau`` (log scale) and ``row``. Draws its default state at once.
    """
    sims = _check_matrix(similarities)
    b, m = sims.shape
    if positives is not None and tuple(positives.shape) != (b, m):
        raise ValueError(f"positives must be a (B, M) = ({b}, {m}) bool mask, got {tuple(positives.shape)}")
    low, high = (math.log10(t) for t in tau_range)
    tau_slider = _classed(widgets.FloatLogSlider(
        value=tau, base=10, min=low, max=high, step=0.05, description="tau", readout_format=".4f",
        continuous_update=False, style={"description_width": "initial"},
        layout=widgets.Layout(width="420px")), "clipedu-tau")
    row_slider = _classed(widgets.IntSlider(
        value=row, min=0, max=min(b, m) - 1, description="row", continuous_update=False), "clipedu-row")
    loss_label = _classed(widgets.HTML(), "clipedu-loss")
    readout = _classed(widgets.HTML(), "clipedu-readout")
    plot = _classed(widgets.Output(), "clipedu-plot")

    def redraw(*_):
        i = row_slider.value
        view = temperature_view(sims, i, tau_slider.value, None if positives is None else positives[i])
        caption = f": {html.escape(_short(captions[i], 40, 2))}" if captions is not None else ""
        loss_label.value = f"<b>loss = {view['loss']:.4f}</b> (row {i}{caption})"
        negatives = view["grad_negatives"]
        strongest = view["negative_index"][int(negatives.argmax())] if len(negatives) else None
        readout.value = (
            f"scale 1/tau = {view['scale']:.2f} &middot; p(positive) = {view['p_positive']:.3f} &middot; "
            f"effective candidates exp(H) = {view['effective_candidates']:.2f} of {m}<br>"
            f"d loss/d sim on the positive = {view['grad_positive']:+.3f} &middot; on the negatives: sum "
            f"{float(negatives.sum()):+.3f}, largest {float(negatives.max()) if len(negatives) else 0:+.3f}"
            + (f" (text {strongest})" if strongest is not None else "")
            + f" &middot; d loss/d logit_scale = {view['grad_logit_scale']:+.3f}"
        )
        _show_png(plot, figure_png(plot_temperature_view(view)))

    tau_slider.observe(redraw, names="value")
    row_slider.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox([tau_slider, row_slider]), loss_label, readout, plot])
    i = row_slider.value
    first = temperature_view(sims, i, tau_slider.value, None if positives is None else positives[i])
    return show(box, plot_temperature_view(first), "temperature explorer")


def similarity_explorer(
    images: torch.Tensor,
    captions: Sequence[str],
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    k: int = 5,
    text_owner: Sequence[int] | torch.Tensor | None = None,
    relevant: torch.Tensor | None = None,
):
    """A widget with two panes: pick an image, see the captions ranked; pick a caption, see the
    images ranked.

    ``images`` uint8 (N, C, H, W) with ``image_embeds`` (N, E); ``captions`` (M) with ``text_embeds``
    (M, E). ``text_owner`` (M,): the image each caption was written for (default: caption j belongs
    to image j); ``relevant`` (N, M) booleans, optional: pairs that fit by attributes (marked too).
    """
    _check_pair(image_embeds, text_embeds)
    n, m = image_embeds.shape[0], text_embeds.shape[0]
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or len(images) != n:
        got = (images.dtype, tuple(images.shape)) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected uint8 images (N={n}, C, H, W) matching image_embeds, got {got}")
    if len(captions) != m:
        raise ValueError(f"expected {m} captions to match text_embeds, got {len(captions)}")
    owner = list(range(m)) if text_owner is None else [int(o) for o in text_owner]
    if len(owner) != m:
        raise ValueError(f"text_owner needs one image index per caption ({m}), got {len(owner)}")
    own_caption = {o: j for j, o in reversed(list(enumerate(owner)))}  # each image's first caption

    image_slider = _classed(widgets.IntSlider(value=0, min=0, max=n - 1, description="image",
                                              continuous_update=False), "clipedu-image")
    image_plot = _classed(widgets.Output(), "clipedu-image-plot")
    text_ranking = _classed(widgets.HTML(), "clipedu-text-ranking")
    caption_menu = _classed(widgets.Dropdown(options=[(f"{j}: {c}", j) for j, c in enumerate(captions)], value=0,
                                             description="caption", layout=widgets.Layout(width="560px")),
                            "clipedu-caption")
    images_plot = _classed(widgets.Output(), "clipedu-images-plot")

    def on_image(*_):
        i = image_slider.value
        ranking = rank_texts(image_embeds, text_embeds, i, k)
        fig, ax = plt.subplots(figsize=(1.6, 1.6))
        draw_image(ax, images[i], f"image {i}", fontsize=9)
        ax.axis("off")
        _show_png(image_plot, figure_png(fig))
        fitting = None if relevant is None else relevant[i]
        text_ranking.value = f"<b>top {len(ranking.indices)} of {m} captions for image {i}</b>" + ranking_html(
            ranking, captions, own=own_caption.get(i), fitting=fitting)

    def caption_figure(j):
        ranking = rank_images(image_embeds, text_embeds, j, k)
        fitting = None if relevant is None else relevant[:, j]
        return plot_image_ranking(images, ranking, own=owner[j], fitting=fitting,
                                  title=f"top {len(ranking.indices)} of {n} images for: {_short(captions[j], 60, 1)}")

    def on_caption(*_):
        _show_png(images_plot, figure_png(caption_figure(caption_menu.value)))

    image_slider.observe(on_image, names="value")
    caption_menu.observe(on_caption, names="value")
    on_image()
    on_caption()
    header = widgets.HTML
    box = widgets.VBox([
        header("<b>image &rarr; texts</b>: which captions does the model find closest to this image?"),
        image_slider,
        widgets.HBox([image_plot, text_ranking]),
        header("<b>text &rarr; images</b>: which images does the model find closest to this caption?"),
        caption_menu,
        images_plot,
    ])
    # a viewer without widgets shows the text -> images pane, the one that is a figure
    return show(box, caption_figure(caption_menu.value), "similarity explorer")
