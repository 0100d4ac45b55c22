"""What the text encoder's causal mask does, as numbers and pictures (notebook 04).

Change one word of a caption and compare every position's output before and after: with the causal
mask, the positions before the change do not move at all; without it, every position moves.
:func:`position_differences` computes that, :func:`plot_position_differences` draws it and
:func:`causal_widget` lets a reader pick the word to change.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from clipedu.text import TextTransformer, check_tokens
from clipedu.viz.explorers import show


@torch.no_grad()
def text_outputs(model: TextTransformer, tokens: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """(B, L, D): every position's output after ``ln_final``; ``causal=False`` runs the same
    weights without the mask (an experiment: CLIP never does this)."""
    check_tokens(tokens, model.cfg)
    x = model.token_embed(tokens) + model.pos_embed[: tokens.shape[1]]  # (B, L, D)
    return model.ln_final(model.transformer(x, is_causal=causal))  # (B, L, D)


def position_differences(model: TextTransformer, tokens_a: torch.Tensor, tokens_b: torch.Tensor,
                         causal: bool = True) -> torch.Tensor:
    """(L,): at each position, the largest absolute difference between the outputs for two texts."""
    tokens_a, tokens_b = torch.as_tensor(tokens_a), torch.as_tensor(tokens_b)
    if tokens_a.dim() == 1:
        tokens_a, tokens_b = tokens_a[None], tokens_b[None]
    if tokens_a.shape != tokens_b.shape or tokens_a.shape[0] != 1:
        raise ValueError(f"expected two rows of ids of the same length, got {tuple(tokens_a.shape)} "
                         f"and {tuple(tokens_b.shape)}")
    out = text_outputs(model, torch.cat([tokens_a, tokens_b]), causal)  # (2, L, D)
    return (out[0] - out[1]).abs().amax(dim=-1).float().cpu()  # (L,)


def replace_word(tokenizer, caption: str, position: int, word: str, context_length: int | None = None):
    """Two rows of ids (2, L): ``caption``, and ``caption`` with token ``position`` replaced by ``word``.

    Positions count tokens, so position 0 is ``<sot>`` and the caption's first word is at 1.
    """
    tokens = tokenizer([caption], context_length=context_length)  # (1, L)
    n_words = len(tokenizer.encode(caption)) - 2
    if not 1 <= position <= n_words:
        raise ValueError(f"position must be a word of the caption, 1..{n_words}, got {position}")
    if word not in tokenizer.index:
        raise ValueError(f"{word!r} is not in the vocabulary")
    changed = tokens.clone()
    changed[0, position] = tokenizer.index[word]
    return torch.cat([tokens, changed])  # (2, L)


def plot_position_differences(differences: dict[str, torch.Tensor], labels: Sequence[str],
                              changed: int | None = None, ax=None, title: str = ""):
    """Bars of :func:`position_differences` (one series per entry), a token label under each position,
    and a line where the input changed. Returns the axes."""
    if not differences:
        raise ValueError("nothing to plot: pass at least one series of differences")
    length = len(next(iter(differences.values())))
    if len(labels) != length:
        raise ValueError(f"{len(labels)} labels for {length} positions")
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3))
    width = 0.8 / len(differences)
    for k, (name, diff) in enumerate(differences.items()):
        positions = torch.arange(length) + (k - (len(differences) - 1) / 2) * width
        ax.bar(positions.numpy(), torch.as_tensor(diff).numpy(), width=width, label=name)
    if changed is not None:
        ax.axvline(changed - 0.5, color="black", ls="--", lw=1)
        ax.text(changed - 0.4, ax.get_ylim()[1] * 0.92, "input changed here", fontsize=8, va="top")
    ax.set_xticks(range(length), labels, rotation=60, fontsize=8)
    ax.set_xlabel("position (token)")
    ax.set_ylabel("largest change of the output")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return ax


def causal_demo(model: TextTransformer, tokenizer, caption: str, position: int, word: str, ax=None):
    """Replace one word and plot how far each position's output moves, with and without the mask.

    Returns ``(axes, differences)`` where ``differences`` maps "causal (CLIP)" and "no mask" to (L,)
    tensors."""
    tokens = replace_word(tokenizer, caption, position, word, context_length=model.cfg.context_length)
    n = min(len(tokenizer.encode(caption)) + 2, tokens.shape[1])  # the caption with <sot>, <eot>, two pads
    differences = {
        "causal (CLIP)": position_differences(model, tokens[:1], tokens[1:], causal=True)[:n],
        "no mask": position_differences(model, tokens[:1], tokens[1:], causal=False)[:n],
    }
    labels = [tokenizer.vocab[i] for i in tokens[0, :n].tolist()]
    labels[position] = f"{labels[position]}->{word}"
    ax = plot_position_differences(differences, labels, changed=position, ax=ax,
                                   title=f"{labels[position]}: outputs at each position, before vs after")
    return ax, differences


def causal_widget(model: TextTransformer, tokenizer, caption: str, words: Sequence[str], position: int = 3):
    """A slider for the position and a menu for the new word, redrawing :func:`causal_demo`."""
    n_words = len(tokenizer.encode(caption)) - 2
    slider = widgets.IntSlider(value=min(position, n_words), min=1, max=n_words, description="position",
                               continuous_update=False)
    menu = widgets.Dropdown(options=list(words), value=list(words)[0], description="new word")

    def figure(position, word):
        fig, ax = plt.subplots(figsize=(9, 3))
        _, diffs = causal_demo(model, tokenizer, caption, position, word, ax=ax)
        fig.tight_layout()
        return fig, diffs

    def draw(position, word):
        _, diffs = figure(position, word)
        plt.show()
        before = diffs["causal (CLIP)"][:position]
        print(f"causal: largest change before position {position}: {before.max().item():.1f}; "
              f"without the mask: {diffs['no mask'][:position].max().item():.3f}")

    out = widgets.interactive_output(draw, {"position": slider, "word": menu})
    box = widgets.VBox([widgets.HBox([slider, menu]), out])
    return show(box, figure(slider.value, menu.value)[0], "causal mask explorer")
