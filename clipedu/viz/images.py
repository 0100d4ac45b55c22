"""Pictures on screen: the one conversion every plot of an image uses, and grids of images.

:func:`to_display` turns an image as clipedu holds it (a uint8 tensor (C, H, W), a normalised
float tensor, a patch) into what ``imshow`` takes; :func:`draw_image` draws one on an axis;
:func:`gallery` and :func:`show_examples` draw many with their captions.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from clipedu.data import CaptionedImages, check_uint8_images


def to_display(image) -> np.ndarray:
    """One image as ``imshow`` takes it: float (H, W, 3) in [0, 1], or (H, W) for one channel.

    Takes a tensor (C, H, W), a PIL image or an (H, W[, C]) array. uint8 values are divided by
    255; floats already in [0, 1] are kept; other floats (a normalised image, a patch) are
    stretched from their minimum to their maximum.
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dim() != 3:
            raise ValueError(f"expected one image (C, H, W), got shape {tuple(image.shape)}")
        image = image.permute(1, 2, 0).numpy()  # (H, W, C)
    picture = np.asarray(image)
    if picture.dtype == np.uint8:
        picture = picture.astype(np.float32) / 255.0
    else:
        picture = picture.astype(np.float32)
        lo, hi = float(picture.min()), float(picture.max())
        if lo < 0.0 or hi > 1.0:
            picture = (picture - lo) / (hi - lo + 1e-8)
    if picture.ndim == 3 and picture.shape[-1] == 1:
        picture = picture[..., 0]
    return picture


def draw_image(ax, image, title: str = "", title_width: int = 26, fontsize: float = 8, **imshow) -> None:
    """Draw one image on ``ax`` without ticks (one channel in grey), under a wrapped title."""
    ax.imshow(to_display(image), cmap="gray", vmin=0.0, vmax=1.0, **imshow)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(textwrap.fill(title, title_width), fontsize=fontsize)


def image_grid(count: int, cols: int, cell_width: float, cell_height: float):
    """A figure of ``count`` cells in rows of ``cols``, every axis off: (figure, the ``count`` axes
    in reading order)."""
    cols = max(1, min(cols, count))
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cell_width * cols, cell_height * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, list(axes.flat)[:count]


def gallery(images: torch.Tensor, titles: Sequence[str] | None = None, cols: int = 8, width: float = 1.6):
    """Draw uint8 images (B, C, H, W) in a grid with wrapped titles; returns the figure."""
    check_uint8_images(images)
    images = images.detach().cpu()
    fig, axes = image_grid(len(images), cols, width, width * 1.25)
    for k, ax in enumerate(axes):
        draw_image(ax, images[k], titles[k] if titles is not None else "", title_width=22, fontsize=7)
    fig.tight_layout()
    return fig


def show_examples(data: CaptionedImages, n: int = 16, cols: int = 8, seed: int | None = None, which: int = 0):
    """A grid of ``n`` images of ``data`` with caption ``which`` of each as its title (the first
    ``n``, or a random ``n`` when ``seed`` is given)."""
    if seed is None:
        idx = list(range(min(n, len(data))))
    else:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data), generator=g)[:n].tolist()
    titles = [data.captions[i][min(which, len(data.captions[i]) - 1)] for i in idx]
    return gallery(data.images[idx], titles, cols=cols)
