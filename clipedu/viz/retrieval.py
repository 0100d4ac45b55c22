"""Retrieval and zero-shot results, drawn (notebook 07).

Pure functions compute what is shown; the tests call them directly:

- :func:`top_matches` -- for every query embedding, the ``k`` most similar gallery items (indices
  and cosines), best first: text -> image with captions as queries, image -> text the other way.
- :func:`match_marks` -- for each retrieved item: is it the query's own, another relevant one, or
  wrong?
- :func:`recall_curve` -- recall@K for every K, both directions (built on
  :func:`clipedu.evaluate.retrieval_recall`).

The swapped-caption margins drawn by :func:`plot_swap_margins` come from
:func:`clipedu.evaluate.swap_margins`.

Plots: :func:`plot_text_to_images` (a grid: one caption per row, its top images beside it),
:func:`plot_image_to_texts` (one image per row, its top captions beside it), :func:`plot_recall_curve`,
:func:`plot_swap_margins` (a histogram per model) and :func:`plot_swapped_examples`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import matplotlib.pyplot as plt
import torch

from clipedu.data import check_uint8_images
from clipedu.evaluate import retrieval_recall
from clipedu.viz.images import draw_image, image_grid

OWN, RELEVANT, WRONG = "own", "relevant", "wrong"
_COLOURS = {OWN: "#2a9d4b", RELEVANT: "#3b6ea5", WRONG: "#c0392b"}
_SYMBOLS = {OWN: "\u2605", RELEVANT: "\u2713", WRONG: "\u2717"}  # star, check mark, cross


class Matches(NamedTuple):
    """The top-k gallery items of every query, best first."""

    indices: torch.Tensor  # (Q, k) long
    scores: torch.Tensor  # (Q, k) cosines


def _check_embeds(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected {name} of shape (N, E) with N >= 1, got {got}")
    return x.detach().float().cpu()


def top_matches(query_embeds: torch.Tensor, gallery_embeds: torch.Tensor, k: int = 5) -> Matches:
    """The ``k`` gallery items most similar to each query (dot products of unit embeddings, i.e.
    cosines), best first. ``query_embeds`` (Q, E), ``gallery_embeds`` (N, E); ``k`` larger than N
    gives all N. Ties keep the lower index first."""
    queries = _check_embeds("query_embeds", query_embeds)
    gallery = _check_embeds("gallery_embeds", gallery_embeds)
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"queries and gallery must have the same embedding width, got {queries.shape[1]} and {gallery.shape[1]}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    sims = queries @ gallery.t()  # (Q, N)
    k = min(k, gallery.shape[0])
    # A stable sort (not topk) so that equal scores come out in index order on every machine.
    order = sims.argsort(dim=1, descending=True, stable=True)[:, :k]  # (Q, k)
    return Matches(order, sims.gather(1, order))


def match_marks(
    matches: Matches, own: Sequence[int] | torch.Tensor | None = None, relevant: torch.Tensor | None = None
) -> list[list[str]]:
    """For every retrieved item: ``"own"`` (the query's own pair, ``own[q]``), ``"relevant"``
    (``relevant[q, index]`` is True: it fits the query too) or ``"wrong"``.

    ``own`` (Q,) gallery indices, or None; ``relevant`` (Q, N) booleans, or None.
    """
    q = matches.indices.shape[0]
    if own is not None:
        own = [int(o) for o in own]
        if len(own) != q:
            raise ValueError(f"own needs one gallery index per query ({q}), got {len(own)}")
    if relevant is not None:
        relevant = torch.as_tensor(relevant)
        if relevant.dim() != 2 or relevant.shape[0] != q or relevant.dtype != torch.bool:
            raise ValueError(f"relevant must be (Q={q}, N) booleans, got {relevant.dtype} {tuple(relevant.shape)}")
        largest = int(matches.indices.max())
        if largest >= relevant.shape[1]:
            raise ValueError(f"relevant has {relevant.shape[1]} columns but a match has index {largest}")
    marks = []
    for row, indices in enumerate(matches.indices.tolist()):
        line = []
        for j in indices:
            if own is not None and j == own[row]:
                line.append(OWN)
            elif relevant is not None and bool(relevant[row, j]):
                line.append(RELEVANT)
            else:
                line.append(WRONG)
        marks.append(line)
    return marks


def recall_curve(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 2, 5, 10, 20, 50),
    relevant: torch.Tensor | None = None,
) -> dict[str, list[float]]:
    """{"image_to_text": [R@k for k in ks], "text_to_image": [...]}, from
    :func:`clipedu.evaluate.retrieval_recall` (``relevant`` counts every fitting pair as a hit)."""
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks}")
    recall = retrieval_recall(image_embeds, text_embeds, text_to_image, ks=ks, relevant=relevant)
    return {d: [recall[f"{d}_R@{k}"] for k in ks] for d in ("image_to_text", "text_to_image")}


# --- plots ------------------------------------------------------------------------------------------
def _frame(ax, colour: str | None, width: float = 3.0) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_color(colour)
            spine.set_linewidth(width)


def plot_text_to_images(
    images: torch.Tensor,
    queries: Sequence[str],
    matches: Matches,
    own: Sequence[int] | torch.Tensor | None = None,
    relevant: torch.Tensor | None = None,
    title: str | None = None,
):
    """Text -> image retrieval as a grid: one query caption per row, its top-k images to the right,
    each titled with its rank and cosine. Frames: green for the caption's own image, blue for another
    image it fits (``relevant``), red for a wrong one. Returns the figure."""
    check_uint8_images(images)
    q, k = matches.indices.shape
    if len(queries) != q:
        raise ValueError(f"{q} rows of matches but {len(queries)} query captions")
    marks = match_marks(matches, own, relevant)
    fig, axes = plt.subplots(q, k + 1, figsize=(1.35 * k + 2.6, 1.55 * q), squeeze=False,
                             gridspec_kw={"width_ratios": [2.0] + [1.0] * k})
    for row in range(q):
        text_ax = axes[row, 0]
        text_ax.axis("off")
        text_ax.text(0.0, 0.5, textwrap.fill(queries[row], 26), fontsize=8, va="center", ha="left",
                     transform=text_ax.transAxes)
        for col in range(k):
            ax = axes[row, col + 1]
            i = int(matches.indices[row, col])
            draw_image(ax, images[i])
            mark = marks[row][col]
            _frame(ax, _COLOURS[mark])
            ax.set_title(f"#{col + 1} {_SYMBOLS[mark]} {float(matches.scores[row, col]):+.2f}", fontsize=7,
                         color=_COLOURS[mark])
    fig.suptitle(title or "text -> image: the top images for each caption", fontsize=10)
    fig.tight_layout()
    return fig


def plot_image_to_texts(
    images: torch.Tensor,
    captions: Sequence[str],
    matches: Matches,
    own: Sequence[int] | torch.Tensor | None = None,
    relevant: torch.Tensor | None = None,
    title: str | None = None,
):
    """Image -> text retrieval: one query image per row (``images`` holds the Q query images), its
    top-k captions listed beside it with rank, cosine and a mark (star: its own caption, check: another
    caption that fits, cross: wrong). Returns the figure."""
    check_uint8_images(images)
    q, k = matches.indices.shape
    if len(images) != q:
        raise ValueError(f"{q} rows of matches but {len(images)} query images")
    marks = match_marks(matches, own, relevant)
    fig, axes = plt.subplots(q, 2, figsize=(8.5, max(1.3, 0.27 * k + 0.35) * q), squeeze=False,
                             gridspec_kw={"width_ratios": [1.0, 6.0]})
    for row in range(q):
        ax = axes[row, 0]
        draw_image(ax, images[row])
        _frame(ax, None)
        text_ax = axes[row, 1]
        text_ax.axis("off")
        for col in range(k):
            j = int(matches.indices[row, col])
            mark = marks[row][col]
            caption = textwrap.shorten(captions[j], 80, placeholder="...")
            line = f"#{col + 1} {_SYMBOLS[mark]} {float(matches.scores[row, col]):+.2f}  {caption}"
            text_ax.text(0.0, 1 - (col + 0.5) / k, line, fontsize=8, va="center", ha="left", color=_COLOURS[mark],
                         transform=text_ax.transAxes)
    fig.suptitle(title or "image -> text: the top captions for each image", fontsize=10)
    fig.tight_layout()
    return fig


def plot_recall_curve(curves: Mapping[str, Sequence[float]], ks: Sequence[int], ax=None, label: str = "",
                      title: str = "recall@K"):
    """Recall@K against K (log axis) for each direction in ``curves`` (from :func:`recall_curve`).
    Returns the axes; call again with the same ``ax`` and another ``label`` to compare settings."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.4))
    for direction, values in curves.items():
        if len(values) != len(ks):
            raise ValueError(f"{direction}: {len(values)} values for {len(ks)} values of K")
        name = direction.replace("_to_", " -> ").replace("_", " ")
        ax.plot(list(ks), list(values), marker="o", label=f"{label} {name}".strip(),
                ls="-" if direction.startswith("image") else "--")
    ax.set_xscale("log")
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def plot_swap_margins(margins: Mapping[str, torch.Tensor], ax=None, bins: int = 40,
                      title: str = "true caption minus swapped caption"):
    """One histogram per model of :func:`swap_margins`; the share above 0 (the swapped-caption
    accuracy) goes in the legend. Returns the axes."""
    if not margins:
        raise ValueError("margins needs at least one model")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.2))
    values = {name: torch.as_tensor(m).detach().float().cpu().flatten() for name, m in margins.items()}
    low = min(float(v.min()) for v in values.values())
    high = max(float(v.max()) for v in values.values())
    span = max(high - low, 1e-3)
    edges = torch.linspace(low - 0.02 * span, high + 0.02 * span, bins + 1).tolist()
    for name, v in values.items():
        ax.hist(v.numpy(), bins=edges, alpha=0.55, label=f"{name}: {float((v > 0).float().mean()):.0%} above 0")
    ax.axvline(0, color="black", lw=1)
    ax.set_xlabel("cos(image, true caption) - cos(image, swapped caption)")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def plot_swapped_examples(
    images: torch.Tensor,
    captions: Sequence[str],
    swapped: Sequence[str],
    margins: Mapping[str, torch.Tensor],
    cols: int = 4,
):
    """Two-object scenes with their true and swapped captions, and under each image every model's
    margin (green: the true caption wins, red: the swapped one does). Returns the figure."""
    check_uint8_images(images)
    n = len(images)
    if len(captions) != n or len(swapped) != n:
        raise ValueError(
            f"{n} images need {n} captions and {n} swapped captions, got {len(captions)} and {len(swapped)}"
        )
    for name, m in margins.items():
        if len(m) != n:
            raise ValueError(f"margins[{name!r}] has {len(m)} values for {n} images")
    fig, axes = image_grid(n, cols, 3.3, 3.3)
    for k, ax in enumerate(axes):
        draw_image(ax, images[k])
        ax.set_title(f"true: {textwrap.fill(captions[k], 34)}\nswapped: {textwrap.fill(swapped[k], 34)}",
                     fontsize=7, loc="left")
        lines = [(f"{name}: {float(m[k]):+.3f}", _COLOURS[OWN] if float(m[k]) > 0 else _COLOURS[WRONG])
                 for name, m in margins.items()]
        for line, (text, colour) in enumerate(lines):
            ax.text(0.0, -0.06 - 0.09 * line, text, transform=ax.transAxes, fontsize=8, color=colour,
                    va="top", ha="left")
    fig.suptitle("margin = cos(true) - cos(swapped); above 0 the model reads the order", fontsize=9)
    fig.tight_layout()
    return fig
