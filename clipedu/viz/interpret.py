"""Where a Vision Transformer looks, drawn (notebooks 08 and 12): a map over its image, a grid
of maps, every layer and head, and an explorer widget.

The maps come from :mod:`clipedu.interpret`; these functions only draw them, and
:func:`attention_explorer` is a thin widget over :func:`clipedu.interpret.attention_map`.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from clipedu.data import check_uint8_images, to_float
from clipedu.interpret import METHODS, attention_map, cls_attention, stack_attentions, vision_attentions, vision_tower
from clipedu.viz.explorers import show
from clipedu.viz.images import draw_image, to_display

METHOD_TITLES = {"attention": "CLS attention", "rollout": "attention rollout", "relevancy": "relevancy"}


def plot_map(image, values: torch.Tensor, ax=None, title: str = "", alpha: float = 0.6, cmap: str = "inferno",
             smooth: bool = False, colorbar: bool = False):
    """A (g, g) map drawn over the image, each cell over its patch. Returns the axes.

    ``smooth=False`` shows the patches as squares (what the model has); ``smooth=True``
    interpolates, as papers usually draw it.
    """
    values = torch.as_tensor(values).detach().float().cpu()
    if values.dim() != 2:
        raise ValueError(f"expected one map (g, g), got shape {tuple(values.shape)}")
    h, w = to_display(image).shape[:2]
    if ax is None:
        _, ax = plt.subplots(figsize=(2.6, 2.6))
    draw_image(ax, image, title, title_width=30, extent=(0, w, h, 0))
    shown = ax.imshow(values.numpy(), cmap=cmap, alpha=alpha, extent=(0, w, h, 0),
                      interpolation="bilinear" if smooth else "nearest")
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_layers_and_heads(image, attentions, index: int = 0, cell: float = 1.5, **kwargs):
    """CLS attention of one image, one row per layer, one column per head plus their mean."""
    a = stack_attentions(attentions)
    layers, heads = a.shape[0], a.shape[2]
    fig, axes = plt.subplots(layers, heads + 1, figsize=(cell * (heads + 1), cell * layers), squeeze=False)
    for layer in range(layers):
        for col, head in enumerate([*range(heads), "mean"]):
            values = cls_attention(a[:, index : index + 1], layer, head)[0]
            plot_map(image, values, axes[layer, col], **kwargs)
            if layer == 0:
                axes[layer, col].set_title(f"head {head}" if head != "mean" else "mean of heads", fontsize=9)
        axes[layer, 0].set_ylabel(f"layer {layer}", fontsize=9)
    fig.suptitle("where the CLS token reads from, per layer and head", fontsize=10)
    fig.tight_layout()
    return fig


def plot_maps(images, maps: dict[str, torch.Tensor], titles: Sequence[str] | None = None, cell: float = 1.8,
              show_image: bool = True, **kwargs):
    """A grid: one row per image (the picture first), one column per named map (each (B, g, g))."""
    count = len(images)
    for name, m in maps.items():
        if m.shape[0] != count:
            raise ValueError(f"map {name!r} has {m.shape[0]} rows for {count} images")
    cols = len(maps) + int(show_image)
    fig, axes = plt.subplots(count, cols, figsize=(cell * cols, cell * count), squeeze=False)
    for i in range(count):
        if show_image:
            draw_image(axes[i, 0], images[i], titles[i] if titles else "image")
        for j, (name, m) in enumerate(maps.items(), start=int(show_image)):
            plot_map(images[i], m[i], axes[i, j], title=name if i == 0 else "", **kwargs)
    fig.tight_layout()
    return fig


# --- the explorer widget ----------------------------------------------------------------------------------
def attention_explorer(model, images: torch.Tensor, tokenizer, captions: Sequence[str],
                       mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                       method: str = "relevancy", smooth: bool = False):
    """A widget over :func:`attention_map`: image, method, layer, head and caption -> a map over the image.

    ``images``: uint8 (B, C, H, W); ``captions``: suggestions for the caption box (any text may be
    typed; words the tokenizer does not know become its unknown token). The caption is used by
    relevancy only; layer and head by CLS attention (rollout uses every layer, ``head`` fuses them).
    """
    check_uint8_images(images)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not captions:
        raise ValueError("give at least one caption to suggest")
    tower = vision_tower(model)
    device = next(tower.parameters()).device
    floats = to_float(images, mean, std)  # (B, C, H, W)
    attentions = vision_attentions(model, floats.to(device))  # computed once: (L, B, H, T, T)
    layers, heads = attentions.shape[0], attentions.shape[2]
    context = model.cfg.text.context_length

    picker = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image", continuous_update=False)
    chooser = widgets.Dropdown(options=[(METHOD_TITLES[m], m) for m in METHODS], value=method, description="method")
    layer = widgets.IntSlider(value=layers - 1, min=0, max=layers - 1, description="layer", continuous_update=False)
    head = widgets.Dropdown(options=["mean", *range(heads)], value="mean", description="head")
    caption = widgets.Combobox(value=captions[0], options=list(captions), description="caption",
                               ensure_option=False, continuous_update=False)

    def figure(index, method, layer, head, caption):
        kwargs = {}
        if method == "relevancy":
            kwargs["texts"] = tokenizer([caption], context_length=context, truncate=True)
        values = attention_map(model, floats[index : index + 1].to(device), method, layer, head,
                               attentions=attentions[:, index : index + 1], **kwargs)[0]
        fig, axes = plt.subplots(1, 2, figsize=(5.4, 2.8))
        draw_image(axes[0], images[index], f"image {index}")
        if method == "attention":
            title = f"CLS attention, layer {layer}, head {head}"
        elif method == "rollout":
            title = f"rollout, heads: {head}"
        else:
            title = f"relevancy: {caption!r}"
        plot_map(images[index], values, axes[1], title=title, smooth=smooth, colorbar=True)
        fig.tight_layout()
        return fig

    def draw(**values):
        figure(**values)
        plt.show()

    controls = {"index": picker, "method": chooser, "layer": layer, "head": head, "caption": caption}
    out = widgets.interactive_output(draw, controls)
    box = widgets.VBox([widgets.HBox([picker, chooser]), widgets.HBox([layer, head]), caption, out])
    return show(box, figure(**{k: c.value for k, c in controls.items()}), "attention explorer")
