"""Pictures of patching (notebook 01): the patch grid, the patch sequence, position embeddings.

Pure functions compute what is drawn (``patch_grid_info``, ``patch_sequence``,
``position_similarity``); the plots and the patch-size widget only draw their results.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from clipedu.patches import patchify
from clipedu.viz.explorers import show
from clipedu.viz.images import draw_image


def patch_grid_info(image_size: int, patch_size: int, channels: int = 3) -> dict[str, int]:
    """What cutting a square image into patches gives: grid side, patches, numbers per patch.

    >>> patch_grid_info(224, 32)
    {'grid': 7, 'num_patches': 49, 'patch_dim': 3072, 'sequence_length': 50}

    ``sequence_length`` counts the CLS token a Vision Transformer adds in front (notebook 03).
    """
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
    grid = image_size // patch_size
    return {"grid": grid, "num_patches": grid * grid, "patch_dim": channels * patch_size * patch_size,
            "sequence_length": grid * grid + 1}


def patch_sizes(image_size: int, smallest: int = 4) -> list[int]:
    """Patch sizes that tile an image exactly, from ``smallest`` up to half the image: 224 -> 4 ... 112."""
    return [p for p in range(smallest, image_size // 2 + 1) if image_size % p == 0]


def patch_sequence(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """One (C, H, W) image as its sequence of patches, each still a little picture: (N, C, P, P).

    The order is :func:`clipedu.patches.patchify`'s: row by row, left to right.
    """
    if image.dim() != 3:
        raise ValueError(f"expected one image (C, H, W), got shape {tuple(image.shape)}")
    c, p = image.shape[0], patch_size
    return patchify(image.unsqueeze(0), p)[0].reshape(-1, c, p, p)  # (N, C, P, P)


def position_similarity(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Cosine similarity of every patch position's embedding with every other: (g, g, g, g).

    ``pos_embed`` is (N, D) or (N + 1, D) with the CLS position first (it is dropped). Entry
    [i, j, k, l] compares the patch in row i, column j with the patch in row k, column l.
    """
    pos = pos_embed.detach().float().cpu()
    n = grid * grid
    if pos.dim() != 2 or pos.shape[0] not in (n, n + 1):
        raise ValueError(f"expected ({n}, D) or ({n + 1}, D) position embeddings for a {grid}x{grid} grid, "
                         f"got {tuple(pos.shape)}")
    pos = F.normalize(pos[-n:], dim=-1)  # (N, D) unit rows, CLS dropped
    return (pos @ pos.T).reshape(grid, grid, grid, grid)


def neighbour_contrast(similarity: torch.Tensor) -> tuple[float, float]:
    """(mean cosine between grid neighbours, mean cosine between positions further apart).

    One number for "do nearby patches have similar position embeddings?": after training the
    first is clearly larger; for random embeddings both are near 0.
    """
    g = similarity.shape[0]
    rows = torch.arange(g).repeat_interleave(g)  # (N,)
    cols = torch.arange(g).repeat(g)
    distance = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()  # (N, N)
    flat = similarity.reshape(g * g, g * g)
    return flat[distance == 1].mean().item(), flat[distance > 1].mean().item()


# --- plots ------------------------------------------------------------------------------------------
def plot_patch_grid(image: torch.Tensor, patch_size: int, ax=None, numbers: bool = True, title: str | None = None):
    """The image with the patch grid drawn over it and each patch numbered in sequence order."""
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    size = image.shape[-1]
    info = patch_grid_info(size, patch_size, image.shape[0])
    draw_image(ax, image, extent=(0, size, size, 0))
    for k in range(1, info["grid"]):
        ax.axhline(k * patch_size, color="white", lw=0.8)
        ax.axvline(k * patch_size, color="white", lw=0.8)
    if numbers and info["grid"] <= 16:
        for index in range(info["num_patches"]):
            row, col = divmod(index, info["grid"])
            ax.text((col + 0.5) * patch_size, (row + 0.5) * patch_size, str(index), color="yellow",
                    ha="center", va="center", fontsize=max(5, 9 - info["grid"] // 3),
                    bbox=dict(boxstyle="round,pad=0.15", fc="black", ec="none", alpha=0.45))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{size}x{size}, patch {patch_size}: {info['grid']}x{info['grid']} = "
                 f"{info['num_patches']} patches", fontsize=9)
    return ax.figure


def plot_patch_sequence(image: torch.Tensor, patch_size: int, count: int | None = None, title: str | None = None):
    """The patches of one image side by side, in the order the transformer reads them."""
    patches = patch_sequence(image, patch_size)  # (N, C, P, P)
    count = min(count or len(patches), len(patches))
    fig, axes = plt.subplots(1, count, figsize=(0.55 * count, 0.9), squeeze=False)
    for index, ax in enumerate(axes[0]):
        draw_image(ax, patches[index])
        ax.set_xlabel(str(index), fontsize=7)
    fig.suptitle(title or f"the first {count} of {len(patches)} patches, as a sequence", fontsize=9, y=1.12)
    return fig


def plot_position_similarity(similarity: torch.Tensor, title: str = "", fig=None):
    """A g x g grid of panels: panel (i, j) shows how similar position (i, j) is to every position."""
    g = similarity.shape[0]
    if fig is None:
        fig = plt.figure(figsize=(0.75 * g + 0.9, 0.75 * g + 0.4))
    axes = fig.subplots(g, g, squeeze=False)
    for i in range(g):
        for j in range(g):
            shown = axes[i, j].imshow(similarity[i, j].numpy(), cmap="viridis", vmin=-1, vmax=1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(str(i), fontsize=7)
            if i == g - 1:
                axes[i, j].set_xlabel(str(j), fontsize=7)
    fig.colorbar(shown, ax=axes, shrink=0.8, label="cosine similarity")
    fig.supxlabel("column of the patch", fontsize=8)
    fig.supylabel("row of the patch", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def patch_size_widget(image: torch.Tensor, default: int | None = None):
    """A slider over the patch sizes that tile ``image``; redraws :func:`plot_patch_grid`."""
    size = image.shape[-1]
    sizes = patch_sizes(size, smallest=max(2, size // 56))
    default = default if default in sizes else sizes[len(sizes) // 2]
    slider = widgets.SelectionSlider(options=sizes, value=default, description="patch size",
                                     continuous_update=False)

    def figure(patch_size):
        info = patch_grid_info(size, patch_size, image.shape[0])
        fig, ax = plt.subplots(figsize=(3.6, 3.6))
        plot_patch_grid(image, patch_size, ax=ax, numbers=info["grid"] <= 8)
        return fig

    def draw(patch_size):
        info = patch_grid_info(size, patch_size, image.shape[0])
        figure(patch_size)
        plt.show()
        print(f"{info['num_patches']} patches of {info['patch_dim']} numbers; the transformer reads "
              f"{info['sequence_length']} tokens (with CLS); attention compares "
              f"{info['sequence_length'] ** 2:,} pairs")

    out = widgets.interactive_output(draw, {"patch_size": slider})
    box = widgets.VBox([slider, out])
    return show(box, figure(slider.value), "patch size explorer")
