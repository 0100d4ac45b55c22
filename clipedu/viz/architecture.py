"""Transformer architectures as pictures (notebooks 03 and 04).

Three families share the same block and differ in who may attend to whom:

- **encoder-only** (ViT, BERT, CLIP's image tower): every token sees every token;
- **decoder-only** (GPT, CLIP's text tower): token i sees tokens 0..i, the causal mask;
- **encoder-decoder** (the original Transformer, T5): a bidirectional encoder reads the source; a
  causal decoder writes the target and, through cross-attention, sees the whole source.

The pure functions (:func:`mask_patterns`, :func:`encoder_decoder_mask`, :func:`influence_matrix`)
compute what the plots draw, so tests and notebooks can check them.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import FancyBboxPatch

from clipedu.architectures import influence_matrix  # noqa: F401  (computed there, drawn here)
from clipedu.attention import causal_mask

MASK_COLOURS = ListedColormap(["#f2f2f2", "#3b6fb6"])  # blocked, may attend


# --- the masks ------------------------------------------------------------------------------------
def encoder_decoder_mask(n_source: int, n_target: int) -> torch.Tensor:
    """(S+T, S+T) boolean: who sees whom in an encoder-decoder, source tokens first.

    Rows are queries, columns keys. The four blocks:

    - source rows, source columns: the encoder's self-attention, all True (bidirectional);
    - source rows, target columns: all False (the encoder never reads the target);
    - target rows, source columns: cross-attention, all True (the decoder reads the whole source);
    - target rows, target columns: the decoder's self-attention, causal (lower triangular).

    (In a real encoder-decoder the decoder reads the encoder's *final* outputs, not the same
    layer's; the pattern of who can influence whom is the same.)
    """
    if n_source < 1 or n_target < 1:
        raise ValueError(f"need at least one source and one target token, got {n_source} and {n_target}")
    n = n_source + n_target
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[:n_source, :n_source] = True
    mask[n_source:, :n_source] = True
    mask[n_source:, n_source:] = causal_mask(n_target)
    return mask


def mask_patterns(n: int = 6, n_source: int | None = None, n_target: int | None = None) -> dict[str, torch.Tensor]:
    """The three attention patterns, True where query (row) may attend to key (column).

    ``encoder-only``: (n, n) all True. ``decoder-only``: (n, n) causal. ``encoder-decoder``:
    (S+T, S+T) from :func:`encoder_decoder_mask`, with S = ``n_source`` and T = ``n_target``
    (by default n // 2 and n - n // 2).
    """
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int of at least 2, got {n!r}")
    n_source = n // 2 if n_source is None else n_source
    n_target = n - n_source if n_target is None else n_target
    return {
        "encoder-only": torch.ones(n, n, dtype=torch.bool),
        "decoder-only": causal_mask(n),
        "encoder-decoder": encoder_decoder_mask(n_source, n_target),
    }


# --- drawing masks --------------------------------------------------------------------------------
def plot_mask(mask: torch.Tensor, ax=None, title: str = "", labels: Sequence[str] | None = None,
              split: int | None = None, annotate: bool = True):
    """Draw a boolean attention mask: rows are queries, columns keys, blue = may attend.

    ``labels`` names the tokens; ``split`` draws the source/target boundary of an
    encoder-decoder mask and names its four blocks.
    """
    mask = torch.as_tensor(mask).bool().cpu()
    if mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"expected a square (N, N) mask, got shape {tuple(mask.shape)}")
    n = mask.shape[0]
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    ax.imshow(mask.int().numpy(), cmap=MASK_COLOURS, vmin=0, vmax=1)
    ax.set_xticks(torch.arange(-0.5, n, 1).tolist(), minor=True)
    ax.set_yticks(torch.arange(-0.5, n, 1).tolist(), minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="minor", length=0)
    ticks = list(range(n))
    names = list(labels) if labels is not None else [str(i) for i in ticks]
    if len(names) != n:
        raise ValueError(f"{len(names)} labels for {n} tokens")
    ax.set_xticks(ticks, names, fontsize=7, rotation=90 if labels is not None else 0)
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("key: the token looked at")
    ax.set_ylabel("query: the token looking")
    if split is not None:
        for pos in (split - 0.5,):
            ax.axhline(pos, color="black", lw=1.5)
            ax.axvline(pos, color="black", lw=1.5)
        if annotate:
            s, t = split, n - split
            boxes = [((s - 1) / 2, (s - 1) / 2, "encoder\nself-attn", "white"),
                     ((s - 1) / 2, s + (t - 1) / 2, "cross-\nattention", "white"),
                     (s + (t - 1) / 2, (s - 1) / 2, "never", "grey"),
                     (s + (t - 0.2) / 2, s + (t - 2.2) / 2, "causal\nself-attn", "black")]
            for x, y, text, colour in boxes:
                ax.text(x, y, text, ha="center", va="center", fontsize=7, color=colour)
    ax.set_title(title, fontsize=10)
    return ax


def plot_mask_patterns(n: int = 6, patterns: dict[str, torch.Tensor] | None = None, axes=None):
    """The three patterns of :func:`mask_patterns` side by side; returns the figure."""
    patterns = mask_patterns(n) if patterns is None else patterns
    if axes is None:
        fig, axes = plt.subplots(1, len(patterns), figsize=(3.6 * len(patterns), 3.6))
    fig = axes[0].figure
    notes = {"encoder-only": "full, bidirectional\n(ViT, BERT)",
             "decoder-only": "causal: i sees 0..i\n(GPT, CLIP's text tower)",
             "encoder-decoder": "source | target\n(Transformer, T5)"}
    for ax, (name, mask) in zip(axes, patterns.items()):
        split = None
        if name == "encoder-decoder":
            split = int((~mask[0]).nonzero()[0]) if (~mask[0]).any() else None  # first target column
        plot_mask(mask, ax, f"{name}: {notes.get(name, '')}", split=split)
    fig.tight_layout()
    return fig


# --- block diagrams -------------------------------------------------------------------------------
_COLOURS = {"ln": "#f6e3b4", "attn": "#c9daf8", "cross": "#d9c8f0", "mlp": "#d5ecc2", "io": "#eeeeee",
            "add": "#ffffff", "stack": "#fafafa"}


def _box(ax, x, y, w, h, text, kind="io", fontsize=8, **kw):
    """A rounded box centred at (x, y)."""
    patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.04",
                           fc=_COLOURS.get(kind, kind), ec=kw.pop("ec", "#555555"), lw=kw.pop("lw", 1), **kw)
    ax.add_patch(patch)
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)
    return patch


def _arrow(ax, start, end, colour="#333333", style="-|>", **kw):
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle=style, color=colour, lw=1.2, shrinkA=0, shrinkB=0, **kw))


def _blank(ax, xlim=(0, 1), ylim=(0, 1)):
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.axis("off")


def plot_residual_blocks(axes=None):
    """Pre-LN (CLIP, GPT-2) next to post-LN (the original Transformer, BERT), bottom to top.

    In pre-LN the skip line on the left runs from input to output untouched: the residual stream.
    In post-LN every addition is followed by a LayerNorm, so the stream is renormalised twice
    per block. Returns the figure.
    """
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(7.5, 4.6))
    fig = axes[0].figure
    w, h = 0.42, 0.075
    pre = [("ln", "ln_1: LayerNorm"), ("attn", "multi-head attention"), ("add", "+"),
           ("ln", "ln_2: LayerNorm"), ("mlp", "MLP (D -> 4D -> D)"), ("add", "+")]
    post = [("attn", "multi-head attention"), ("add", "+"), ("ln", "LayerNorm"),
            ("mlp", "MLP (D -> 4D -> D)"), ("add", "+"), ("ln", "LayerNorm")]
    for ax, steps, title in ((axes[0], pre, "pre-LN (CLIP, GPT-2)"), (axes[1], post, "post-LN (Transformer, BERT)")):
        _blank(ax)
        ys = [0.17 + 0.115 * i for i in range(len(steps))]
        _box(ax, 0.55, 0.06, w, h, "x  (B, N, D)", "io")
        _box(ax, 0.55, 0.94, w, h, "output  (B, N, D)", "io")
        previous = 0.06 + h / 2
        branch_from = 0.06 + h / 2  # where the current skip line leaves the stream
        for (kind, text), y in zip(steps, ys):
            if kind == "add":
                ax.add_patch(plt.Circle((0.55, y), 0.03, fc="white", ec="#333333", lw=1.2))
                ax.text(0.55, y, "+", ha="center", va="center", fontsize=11)
                _arrow(ax, (0.55, previous), (0.55, y - 0.03))
                # the skip line: left, up, back in
                ax.plot([0.55, 0.12, 0.12], [branch_from + 0.01, branch_from + 0.01, y], color="#b03a2e", lw=1.6)
                _arrow(ax, (0.12, y), (0.52, y), colour="#b03a2e")
                previous, branch_from = y + 0.03, y + 0.03
            else:
                _box(ax, 0.55, y, w, h, text, kind)
                _arrow(ax, (0.55, previous), (0.55, y - h / 2))
                previous = y + h / 2
        _arrow(ax, (0.55, previous), (0.55, 0.94 - h / 2))
        ax.text(0.06, 0.5, "residual (skip) path", rotation=90, ha="center", va="center", fontsize=8,
                color="#b03a2e")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_flow(steps: Sequence[tuple[str, str]], title: str = "", ax=None, kinds: Sequence[str] | None = None):
    """A left-to-right chain of boxes, each ``(what, shape)``: a forward pass at a glance."""
    n = len(steps)
    if n == 0:
        raise ValueError("plot_flow needs at least one step")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.75 * n, 1.5))
    _blank(ax, (0, n), (0, 1))
    kinds = list(kinds) if kinds is not None else ["io"] * n
    for i, (what, shape) in enumerate(steps):
        _box(ax, i + 0.5, 0.55, 0.86, 0.5, f"{what}\n{shape}", kinds[i], fontsize=7.5)
        if i:
            _arrow(ax, (i + 0.07, 0.55), (i - 0.07 + 0.0, 0.55), style="<|-")
    ax.set_title(title, fontsize=10)
    ax.figure.tight_layout()
    return ax.figure


def plot_architectures(axes=None):
    """Encoder-only, decoder-only and encoder-decoder transformers, bottom to top; returns the figure."""
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), gridspec_kw={"width_ratios": [1, 1, 1.5]})
    fig = axes[0].figure
    h = 0.1

    def stack(ax, x, y, w, lines):
        """A dashed box for the repeated block, with one box per sub-layer inside."""
        _box(ax, x, y, w, 0.34, "", "stack", ec="#888888", ls="--")
        ax.text(x + w / 2 - 0.02, y + 0.13, "L x", fontsize=8, color="#666666", ha="right")
        for i, (text, kind) in enumerate(lines):
            _box(ax, x, y + 0.05 - 0.11 * i, w - 0.1, 0.075, text, kind, fontsize=7)

    # encoder-only
    ax = axes[0]
    _blank(ax)
    _box(ax, 0.5, 0.08, 0.8, h, "tokens: [CLS] + patches\n(all at once)", "io")
    stack(ax, 0.5, 0.45, 0.8, [("self-attention: full, bidirectional", "attn"), ("MLP", "mlp")])
    _box(ax, 0.5, 0.86, 0.8, h, "one output per token;\nread [CLS] as the summary", "io")
    _arrow(ax, (0.5, 0.13), (0.5, 0.28))
    _arrow(ax, (0.5, 0.62), (0.5, 0.81))
    ax.set_title("encoder-only\nViT, BERT, CLIP's image tower", fontsize=10)

    # decoder-only
    ax = axes[1]
    _blank(ax)
    _box(ax, 0.5, 0.08, 0.8, h, "tokens: <sot> a red circle <eot>", "io")
    stack(ax, 0.5, 0.45, 0.8, [("self-attention: causal (i sees 0..i)", "attn"), ("MLP", "mlp")])
    _box(ax, 0.5, 0.86, 0.8, h, "GPT: predict the next token\nCLIP: read <eot> as the summary", "io")
    _arrow(ax, (0.5, 0.13), (0.5, 0.28))
    _arrow(ax, (0.5, 0.62), (0.5, 0.81))
    ax.set_title("decoder-only\nGPT, CLIP's text tower", fontsize=10)

    # encoder-decoder
    ax = axes[2]
    _blank(ax)
    _box(ax, 0.26, 0.08, 0.44, h, "source: the whole input", "io")
    _box(ax, 0.74, 0.08, 0.44, h, "target so far: <sot> y1 y2", "io")
    _box(ax, 0.26, 0.45, 0.44, 0.34, "", "stack", ec="#888888", ls="--")
    ax.text(0.46, 0.59, "L x", fontsize=8, color="#666666", ha="right")
    _box(ax, 0.26, 0.50, 0.38, 0.07, "self-attention: full", "attn", fontsize=7)
    _box(ax, 0.26, 0.40, 0.38, 0.07, "MLP", "mlp", fontsize=7)
    _box(ax, 0.74, 0.45, 0.44, 0.34, "", "stack", ec="#888888", ls="--")
    ax.text(0.94, 0.59, "L x", fontsize=8, color="#666666", ha="right")
    _box(ax, 0.74, 0.53, 0.38, 0.065, "self-attention: causal", "attn", fontsize=7)
    _box(ax, 0.74, 0.44, 0.38, 0.065, "cross-attention to source", "cross", fontsize=7)
    _box(ax, 0.74, 0.35, 0.38, 0.065, "MLP", "mlp", fontsize=7)
    _box(ax, 0.74, 0.86, 0.44, h, "predict the next target token", "io")
    for x in (0.26, 0.74):
        _arrow(ax, (x, 0.13), (x, 0.28))
    _arrow(ax, (0.74, 0.62), (0.74, 0.81))
    # encoder output feeds every decoder layer's cross-attention
    ax.plot([0.26, 0.26, 0.5], [0.62, 0.70, 0.70], color="#6a3d9a", lw=1.4)
    ax.plot([0.5, 0.5], [0.70, 0.44], color="#6a3d9a", lw=1.4)
    _arrow(ax, (0.5, 0.44), (0.55, 0.44), colour="#6a3d9a")
    ax.text(0.5, 0.73, "encoder outputs (keys, values)", ha="center", fontsize=7, color="#6a3d9a")
    ax.set_title("encoder-decoder\nthe original Transformer, T5", fontsize=10)
    fig.tight_layout()
    return fig
