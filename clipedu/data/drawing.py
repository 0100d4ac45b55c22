"""Drawing many small shapes at once with signed distance functions.

Each shape is a function of a point (u, v) in the shape's own units (its centre at 0, its "radius"
at about 1, v pointing down) that is negative inside, zero on the outline and positive outside.
Evaluated over a whole batch of coordinate grids it gives every image's mask in a few tensor
operations; ``clamp(0.5 - distance_in_pixels, 0, 1)`` turns it into a mask with anti-aliased
edges. Every shape here is mirror-symmetric left to right, so flipping an image never changes
which shape it shows (the loader relies on that).
"""

from __future__ import annotations

import math

import torch

SHAPES = ("circle", "square", "triangle", "cross", "star", "diamond", "ring", "heart")


def _length(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(u * u + v * v)


def _circle(u, v):
    return _length(u, v) - 1.0


def _square(u, v):
    return torch.maximum(u.abs(), v.abs()) - 0.82  # same area feel as the unit circle


def _triangle(u, v):
    # An upward triangle is where three half-planes overlap: the bottom edge and two slanted ones.
    inradius = 0.52
    bottom = v
    slanted = u.abs() * math.cos(math.pi / 6) - v * 0.5
    return torch.maximum(bottom, slanted) - inradius


def _cross(u, v):
    arm, half_width = 0.95, 0.32
    horizontal = torch.maximum(u.abs() - arm, v.abs() - half_width)
    vertical = torch.maximum(u.abs() - half_width, v.abs() - arm)
    return torch.minimum(horizontal, vertical)  # union of two bars = the nearer one


def _star(u, v):
    # Fold the plane into one tenth of a turn around the nearest tip, then the star's edge there
    # is a single line from the tip (outer radius) to the notch (inner radius).
    outer, inner, points = 1.05, 0.45, 5
    sector = 2 * math.pi / points
    angle = torch.atan2(u, -v) % sector  # angle from straight up, folded into one sector
    angle = torch.minimum(angle, sector - angle)  # 0 at a tip, sector/2 at a notch
    r = _length(u, v)
    x, y = r * torch.cos(angle), r * torch.sin(angle)
    tip_x, tip_y = outer, 0.0
    notch_x, notch_y = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    edge_x, edge_y = notch_x - tip_x, notch_y - tip_y
    norm = math.hypot(edge_x, edge_y)
    # Outward normal of the tip-to-notch edge is (edge_y, -edge_x) / norm.
    return ((x - tip_x) * edge_y - (y - tip_y) * edge_x) / norm


def _diamond(u, v):
    # A rhombus a little taller than wide, as playing-card diamonds are.
    return (u.abs() / 0.8 + v.abs() / 1.05 - 1.0) * 0.62


def _ring(u, v):
    return (_length(u, v) - 0.7).abs() - 0.3


def _heart(u, v):
    # A square turned 45 degrees with a circle on each of its two upper sides.
    v = v + 0.17  # move the drawing's middle to the centre
    half_diagonal, lift = 0.75, 0.25
    body = (u.abs() + (v - lift).abs() - half_diagonal) / math.sqrt(2)
    lobe_x, lobe_y = half_diagonal / 2, lift - half_diagonal / 2
    lobe_r = half_diagonal / math.sqrt(2)
    lobes = _length(u.abs() - lobe_x, v - lobe_y) - lobe_r
    return torch.minimum(body, lobes)


DISTANCE = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "star": _star,
    "diamond": _diamond,
    "ring": _ring,
    "heart": _heart,
}
assert tuple(DISTANCE) == SHAPES


def coverage(
    shape_ids: torch.Tensor, centre_x: torch.Tensor, centre_y: torch.Tensor, radius: torch.Tensor, size: int
) -> torch.Tensor:
    """How much of each pixel every object covers: (n, size, size) floats in [0, 1].

    ``shape_ids`` index :data:`SHAPES`; centres and radius are in pixels, shape (n,).
    """
    n = shape_ids.shape[0]
    pixel = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    mask = torch.zeros(n, size, size)
    for shape_id, name in enumerate(SHAPES):
        rows = (shape_ids == shape_id).nonzero().flatten()
        if rows.numel() == 0:
            continue
        r = radius[rows].view(-1, 1, 1)  # (m, 1, 1)
        u = (pixel.view(1, 1, size) - centre_x[rows].view(-1, 1, 1)) / r  # (m, 1, S)
        v = (pixel.view(1, size, 1) - centre_y[rows].view(-1, 1, 1)) / r  # (m, S, 1)
        u, v = torch.broadcast_tensors(u, v)  # (m, S, S)
        distance_px = DISTANCE[name](u, v) * r  # back to pixels for a one-pixel soft edge
        mask[rows] = (0.5 - distance_px).clamp_(0.0, 1.0)
    return mask


def compose(
    background: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]], noise: torch.Tensor
) -> torch.Tensor:
    """Paint objects over a background and add noise; returns uint8 (n, 3, S, S).

    ``background`` (n,) grey level, each layer a (mask (n, S, S), colour (n, 3)) pair painted in
    order, ``noise`` (n, 1, S, S) added to every channel.
    """
    n, size = noise.shape[0], noise.shape[-1]
    canvas = background.view(n, 1, 1, 1).expand(n, 3, size, size).clone()  # (n, 3, S, S)
    for mask, colour in layers:
        alpha = mask.unsqueeze(1)  # (n, 1, S, S)
        canvas.mul_(1 - alpha).add_(alpha * colour.view(n, 3, 1, 1))
    canvas.add_(noise).add_(0.5).clamp_(0, 255)  # +0.5 so the cast rounds
    return canvas.to(torch.uint8)
