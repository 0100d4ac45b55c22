"""Plots for notebook 11 (BLIP-2): the three attention masks, training curves, captions, sweeps."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import torch

from clipedu.viz.images import draw_image, image_grid


def mask_labels(num_queries: int, text_words: list[str]) -> list[str]:
    """Axis labels for a mask: q1 .. qQ, then the text tokens."""
    return [f"q{i + 1}" for i in range(num_queries)] + list(text_words)


def plot_masks(masks: dict[str, torch.Tensor], num_queries: int, text_words: list[str], axes=None):
    """One panel per (Q+T, Q+T) bool mask: dark = may attend. Rows attend to columns."""
    if axes is None:
        fig, axes = plt.subplots(1, len(masks), figsize=(3.6 * len(masks), 3.6))
    else:
        fig = axes[0].figure
    labels = mask_labels(num_queries, text_words)
    n = len(labels)
    for ax, (title, mask) in zip(axes, masks.items()):
        if tuple(mask.shape) != (n, n):
            raise ValueError(f"mask {title!r} has shape {tuple(mask.shape)}, expected ({n}, {n})")
        ax.imshow(mask.float().cpu(), cmap="Blues", vmin=0, vmax=1.3)
        ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
        ax.axhline(num_queries - 0.5, color="crimson", lw=1)
        ax.axvline(num_queries - 0.5, color="crimson", lw=1)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query position (attending)")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_stage_history(history, ax=None, title: str | None = None, keys=("loss", "itc", "itm", "itg")):
    """The losses one stage logged (those of ``keys`` it has) against the step."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    for key in keys:
        if key in history.series:
            ax.plot(history.step, history.series[key], label=key, lw=2 if key == "loss" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or history.name)
    ax.legend(fontsize=8)
    return ax.figure


def show_captions(images: torch.Tensor, generated: list[str], truth: list[str], cols: int = 4,
                  marks: list[bool] | None = None):
    """A grid of uint8 images (N, C, H, W), each titled with its generated caption (and a tick or
    cross when ``marks`` says it named shape and colour right) above the true caption."""
    fig, axes = image_grid(len(images), cols, 3.3, 2.9)
    for i, ax in enumerate(axes):
        draw_image(ax, images[i])
        mark = "" if marks is None else ("✓ " if marks[i] else "✗ ")
        ax.set_title(f"{mark}{_wrap(generated[i])}\ntrue: {_wrap(truth[i])}", fontsize=7.5)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int = 34) -> str:
    return "\n".join(textwrap.wrap(text, width)) or "(empty)"


def plot_query_sweep(num_queries: list[int], metrics: dict[str, list[float]], ax=None,
                     title: str = "number of queries"):
    """Lines of each metric against the number of queries (log-2 axis)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, values in metrics.items():
        ax.plot(num_queries, values, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(num_queries, [str(q) for q in num_queries])
    ax.set_xlabel("queries")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy / recall")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax.figure
