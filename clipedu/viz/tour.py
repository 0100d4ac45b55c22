"""The course map and ShapesWorld's colour x shape grid (notebook 00).

``pipeline_layout()`` says what the map shows (boxes, the notebook that builds each, arrows);
``plot_pipeline()`` draws it. ``pair_images()`` renders every colour x shape pair once and
``heldout_matrix()`` marks the pairs a world keeps out of training; ``plot_pairs()`` draws both.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import FancyBboxPatch

from clipedu.data.drawing import compose, coverage
from clipedu.viz.images import draw_image


@dataclass(frozen=True)
class Box:
    key: str
    label: str
    notebook: str  # "01", or "02-03" for a piece two notebooks build
    x: float  # lower-left corner, in the map's units
    y: float
    w: float = 2.3
    h: float = 1.1
    kind: str = "model"  # "image", "text", "model", "loss" or "use" (only the colour depends on it)

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2


def pipeline_layout() -> tuple[list[Box], list[tuple[str, str]]]:
    """The boxes of the CLIP pipeline and the arrows between them (pairs of box keys).

    Top row: image -> patches -> Vision Transformer -> image embedding. Middle row: caption ->
    tokens -> text transformer -> text embedding. Both embeddings meet in the similarity matrix,
    which feeds the contrastive loss. The bottom row is what the later notebooks do with the model.
    """
    top, mid = 5.0, 2.9
    boxes = [
        Box("image", "image\n3 x H x W", "01", 0.0, top, kind="image"),
        Box("patches", "patches\nN x (3 P P)", "01", 2.9, top, kind="image"),
        Box("vit", "Vision Transformer\n(attention: 02)", "03", 5.8, top, w=2.7),
        Box("img_emb", "image embedding\nunit vector (E)", "03", 9.1, top, kind="image"),
        Box("caption", "caption\n\"a red circle ...\"", "04", 0.0, mid, kind="text"),
        Box("tokens", "tokens\n<sot> a red ... <eot>", "04", 2.9, mid, kind="text"),
        Box("text", "text transformer\n(causal attention: 02)", "04", 5.8, mid, w=2.7),
        Box("txt_emb", "text embedding\nunit vector (E)", "04", 9.1, mid, kind="text"),
        Box("sim", "similarity matrix\nB x B cosines,\ndivided by temperature", "05", 12.0, 3.8, w=2.9, h=1.4,
            kind="loss"),
        Box("loss", "contrastive loss\n(train it: 06)", "05", 12.3, 2.0, w=2.3, h=1.0, kind="loss"),
    ]
    uses = [
        ("zero_shot", "zero-shot &\nretrieval", "07"),
        ("attn_maps", "attention\nmaps", "08"),
        ("space", "embedding\nspace", "09"),
        ("probes", "linear\nprobes", "10"),
        ("blip2", "BLIP-2\nQ-Former", "11"),
        ("real", "real CLIP\nweights", "12"),
    ]
    for i, (key, label, nb) in enumerate(uses):
        boxes.append(Box(key, label, nb, 0.3 + 2.45 * i, 0.2, w=2.05, h=1.0, kind="use"))
    arrows = [
        ("image", "patches"), ("patches", "vit"), ("vit", "img_emb"),
        ("caption", "tokens"), ("tokens", "text"), ("text", "txt_emb"),
        ("img_emb", "sim"), ("txt_emb", "sim"), ("sim", "loss"),
    ]
    return boxes, arrows


_COLOURS = {"image": "#dbe9f6", "text": "#fde3c8", "model": "#e4e4f4", "loss": "#d9f0d3", "use": "#f2f2f2"}


def plot_pipeline(ax=None):
    """Draw :func:`pipeline_layout`: each box with the notebook that builds it in its corner."""
    boxes, arrows = pipeline_layout()
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 5))
    by_key = {b.key: b for b in boxes}
    for b in boxes:
        ax.add_patch(FancyBboxPatch((b.x, b.y), b.w, b.h, boxstyle="round,pad=0.05,rounding_size=0.15",
                                    fc=_COLOURS[b.kind], ec="#555555", lw=1))
        ax.text(*b.centre, b.label, ha="center", va="center", fontsize=8.5)
        ax.text(b.x + b.w - 0.05, b.y + b.h - 0.05, b.notebook, ha="right", va="top", fontsize=7.5,
                fontweight="bold", color="white",
                bbox=dict(boxstyle="round,pad=0.18", fc="#3b6ea5", ec="none"))
    for start, end in arrows:
        a, b = by_key[start], by_key[end]
        ax.annotate("", xy=_edge_point(b, a.centre), xytext=_edge_point(a, b.centre),
                    arrowprops=dict(arrowstyle="-|>", color="#333333", lw=1.2, shrinkA=2, shrinkB=2))
    ax.text(0.0, 1.45, "what the later notebooks do with the trained model:", fontsize=8.5, style="italic")
    ax.set_xlim(-0.2, 15.3)
    ax.set_ylim(0.0, 6.4)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("CLIP, piece by piece (the blue tag: the notebook that builds it)", fontsize=10)
    return ax.figure


def _edge_point(box: Box, towards: tuple[float, float]) -> tuple[float, float]:
    """Where the straight line from the box's centre towards a point leaves the box."""
    cx, cy = box.centre
    dx, dy = towards[0] - cx, towards[1] - cy
    if dx == 0 and dy == 0:
        return cx, cy
    scale = min(box.w / 2 / abs(dx) if dx else float("inf"), box.h / 2 / abs(dy) if dy else float("inf"))
    return cx + dx * scale, cy + dy * scale


# --- ShapesWorld's colour x shape pairs -------------------------------------------------------------
def heldout_matrix(world) -> torch.Tensor:
    """(colours, shapes) bool: True where the pair is held out of the train and test splits."""
    held = torch.zeros(len(world.COLOURS), len(world.SHAPES), dtype=torch.bool)
    for colour, shape in world.heldout_pairs:
        held[world.COLOURS.index(colour), world.SHAPES.index(shape)] = True
    return held


def pair_images(world, size: int | None = None) -> torch.Tensor:
    """Every colour x shape pair drawn once, large and centred: uint8 (colours, shapes, 3, S, S)."""
    size = size or world.image_size
    n_colours, n_shapes = len(world.COLOURS), len(world.SHAPES)
    n = n_colours * n_shapes
    shape_ids = torch.arange(n_shapes).repeat(n_colours)  # (n,) row-major over (colour, shape)
    rgb = torch.tensor([world.RGB[c] for c in world.COLOURS], dtype=torch.float32)  # (colours, 3)
    colours = rgb.repeat_interleave(n_shapes, dim=0)  # (n, 3)
    centre = torch.full((n,), size / 2)
    radius = torch.full((n,), 0.32 * size)
    mask = coverage(shape_ids, centre, centre, radius, size)  # (n, S, S)
    images = compose(torch.full((n,), 20.0), [(mask, colours)], torch.zeros(n, 1, size, size))
    return images.view(n_colours, n_shapes, 3, size, size)


def plot_pairs(world, size: int | None = None):
    """The colour x shape grid, the held-out pairs framed in red. Returns the figure."""
    images = pair_images(world, size)  # (colours, shapes, 3, S, S)
    held = heldout_matrix(world)
    rows, cols = held.shape
    fig, axes = plt.subplots(rows, cols, figsize=(0.75 * cols + 0.8, 0.75 * rows + 0.6), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            draw_image(ax, images[i, j])
            for spine in ax.spines.values():
                spine.set_visible(bool(held[i, j]))
                spine.set_color("red")
                spine.set_linewidth(3)
            if i == 0:
                ax.set_title(world.SHAPES[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(world.COLOURS[i], fontsize=8)
    fig.suptitle(f"{int(held.sum())} held-out pairs (red frames) of {rows * cols}: never in train or test",
                 fontsize=10)
    fig.tight_layout()
    return fig
