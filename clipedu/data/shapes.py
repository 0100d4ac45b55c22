"""ShapesWorld: coloured shapes on a dark background, with captions, generated from a seed.

The course's default data. It needs no download, it is fast to make (50,000 images in a few
seconds on a laptop CPU), and we know the truth about every picture, so we can ask precise
questions: does the model know colours? positions? can it name a colour-shape pair it never saw
in training (the held-out split)? can it tell "a red circle left of a blue square" from the same
words swapped (two-object mode)?
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import torch

from clipedu.data import grammar
from clipedu.data.base import CaptionedImages
from clipedu.data.drawing import SHAPES, compose, coverage

SPLITS = ("train", "test", "heldout")

# Bright, saturated colours that stay distinct at 32x32 on a dark background.
RGB = {
    "red": (225, 35, 35),
    "orange": (255, 140, 0),
    "yellow": (245, 230, 40),
    "green": (40, 200, 50),
    "cyan": (0, 215, 225),
    "blue": (45, 85, 255),
    "purple": (150, 55, 230),
    "pink": (255, 110, 190),
}

# One held-out shape per colour and one colour per shape, so every colour and every shape is
# still seen in training, just never in these combinations.
DEFAULT_HOLDOUT = (
    ("red", "triangle"), ("orange", "ring"), ("yellow", "heart"), ("green", "star"),
    ("cyan", "square"), ("blue", "cross"), ("purple", "circle"), ("pink", "diamond"),
)

# Geometry as fractions of the image side, so 32 and 64 pixel worlds look alike.
CELL_CENTRES = (0.25, 0.5, 0.75)  # mirror-symmetric: a flip maps column 0 onto column 2
POSITION_JITTER = 0.02
SIZE_RADIUS = (0.12, 0.19)  # small, large
SIZE_JITTER = 0.06


class ShapesWorld:
    """A generator of captioned shape images.

    ``num_objects=1``: one object; labels ``shape``, ``colour``, ``size``, ``position`` (a 3x3 grid
    cell) and ``colour_shape`` (colour * 8 + shape, for zero-shot over pairs).
    ``num_objects=2``: two objects that differ in colour and shape, side by side or one above
    the other; labels for the first object as above, ``shape2`` ... ``position2`` for the second,
    and ``relation`` (where the first is relative to the second). Each caption comes with a
    swapped hard negative in ``hard_negatives``.

    ``holdout``: (colour, shape) pairs that never appear in the "train" or "test" split; the
    "heldout" split shows only them.
    """

    SHAPES = SHAPES
    COLOURS = grammar.COLOURS
    SIZES = grammar.SIZES
    POSITIONS = grammar.POSITIONS
    RELATIONS = grammar.RELATIONS
    RGB = RGB
    DEFAULT_HOLDOUT = DEFAULT_HOLDOUT

    def __init__(
        self,
        image_size: int = 32,
        num_objects: int = 1,
        holdout: Iterable[tuple[str, str]] = DEFAULT_HOLDOUT,
        captions_per_image: int = 5,
        seed: int = 0,
        noise: float = 6.0,
        colour_jitter: float = 12.0,
    ):
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an int of at least 16 (32 or 64 suit), got {image_size!r}")
        if num_objects not in (1, 2):
            raise ValueError(f"num_objects must be 1 or 2, got {num_objects!r}")
        if not isinstance(captions_per_image, int) or captions_per_image < 1:
            raise ValueError(f"captions_per_image must be a positive int, got {captions_per_image!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        for name, value in (("noise", noise), ("colour_jitter", colour_jitter)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a non-negative number of pixel levels, "
                                 f"got {value!r}")
        self.image_size = image_size
        self.num_objects = num_objects
        self.captions_per_image = captions_per_image
        self.seed = seed
        self.noise = float(noise)
        self.colour_jitter = float(colour_jitter)
        self.heldout_pairs = self._check_holdout(holdout)
        held = set(self.heldout_pairs)
        self.train_pairs = tuple((c, s) for c in self.COLOURS for s in self.SHAPES if (c, s) not in held)
        if not self.train_pairs:
            raise ValueError("holdout leaves no colour-shape pair for training")

    def __repr__(self) -> str:
        return (
            f"ShapesWorld(image_size={self.image_size}, num_objects={self.num_objects}, "
            f"{len(self.heldout_pairs)} held-out pairs, captions_per_image={self.captions_per_image}, "
            f"seed={self.seed})"
        )

    def _check_holdout(self, holdout) -> tuple[tuple[str, str], ...]:
        pairs = tuple(tuple(p) for p in holdout)
        for pair in pairs:
            if len(pair) != 2 or pair[0] not in self.COLOURS or pair[1] not in self.SHAPES:
                raise ValueError(
                    f"holdout pairs are (colour, shape) with colour in {self.COLOURS} and shape in "
                    f"{self.SHAPES}; got {pair!r}"
                )
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"holdout lists a pair twice: {pairs}")
        return pairs

    # -- zero-shot helpers -------------------------------------------------------------------

    @property
    def templates(self) -> dict[str, list[str]]:
        """Prompt templates per attribute: whole descriptions in the captions' canonical words.

        A prompt names every attribute, as a caption does ("a small red {} in the top left"), and an
        attribute's class vector averages its prompts over every value of the others (CLIP's prompt
        ensembling, here marginalising what the prompt does not ask about). Prompts that name only
        the attribute ("the {}") are shorter than any training caption and score worse: the text
        tower never saw a caption without a size, a shape and a place.
        """
        if self.num_objects == 2:
            return {}  # "the red circle" does not say which of two objects; use the swapped captions
        sizes, colours, shapes, places = self.SIZES, self.COLOURS, self.SHAPES, self.POSITIONS
        return {
            "shape": [f"a {z} {c} {{}} in the {p}" for z in sizes for c in colours for p in places],
            "colour": [f"a {z} {{}} {s} in the {p}" for z in sizes for s in shapes for p in places],
            "size": [f"a {{}} {c} {s} in the {p}" for c in colours for s in shapes for p in places],
            "position": [f"a {z} {c} {s} in the {{}}" for z in sizes for c in colours for s in shapes],
            "colour_shape": [f"a {z} {{}} in the {p}" for z in sizes for p in places],
        }

    def combination_prompts(self, template: str = "the {colour} {shape}") -> tuple[list[str], list[tuple]]:
        """A prompt for every colour x shape pair, in the order of the ``colour_shape`` label."""
        pairs = [(c, s) for c in self.COLOURS for s in self.SHAPES]
        return [template.format(colour=c, shape=s) for c, s in pairs], pairs

    def combination_index(self, colour: str, shape: str) -> int:
        """The ``colour_shape`` class of a pair: colour index * number of shapes + shape index."""
        return self.COLOURS.index(colour) * len(self.SHAPES) + self.SHAPES.index(shape)

    # -- generation ------------------------------------------------------------------------

    def generate(self, n: int, split: str = "train", seed: int | None = None,
                 geometry: bool = False) -> CaptionedImages:
        """``n`` captioned images of ``split`` ("train", "test" or "heldout").

        The same (seed, split) always gives the same images; different splits draw from
        different random streams even with the same seed. ``seed`` defaults to the world's.
        ``geometry=True`` also keeps where each object is (the same images either way):
        ``info["masks"]``, (n, objects, S, S) floats in [0, 1], how much of each pixel the object
        covers, and ``info["boxes"]``, (n, objects, 3): its centre x, centre y and radius in pixels.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        seed = self.seed if seed is None else seed
        stream = int(np.random.SeedSequence([seed, SPLITS.index(split), self.num_objects]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(stream)
        rng = random.Random(stream)  # caption wording
        pairs = self.heldout_pairs if split == "heldout" else self.train_pairs
        if not pairs:
            raise ValueError("the heldout split needs holdout pairs, but holdout is empty")
        combos = torch.tensor([self.combination_index(c, s) for c, s in pairs])  # (K,)

        if self.num_objects == 1:
            objects, relation = [self._sample_single(n, combos, gen)], None
        else:
            objects, relation = self._sample_pair(n, combos, gen, split)
        images, masks, boxes = self._render(objects, gen, geometry)
        labels, class_names = self._labels(objects, relation)
        captions, hard_negatives = self._captions(objects, relation, rng)
        return CaptionedImages(
            images=images,
            captions=captions,
            labels=labels,
            class_names=class_names,
            templates=self.templates,
            name=f"shapes{'2' if self.num_objects == 2 else ''}-{split}",
            hard_negatives=hard_negatives,
            flippable=True,  # every shape is mirror-symmetric; captions get left/right swapped
            info={"split": split, "seed": seed, "heldout_pairs": self.heldout_pairs,
                  "num_objects": self.num_objects, "image_size": self.image_size,
                  # A shift of more than about 1/16 of the side could carry an object across the
                  # border of its grid cell, and its position in the caption would be wrong.
                  "crop_padding": self.image_size // 16,
                  **({"masks": masks, "boxes": boxes} if geometry else {})},
        )

    def _sample_single(self, n, combos, gen) -> dict[str, torch.Tensor]:
        combo = combos[torch.randint(len(combos), (n,), generator=gen)]
        return {
            "colour": combo // len(self.SHAPES),
            "shape": combo % len(self.SHAPES),
            "size": torch.randint(2, (n,), generator=gen),
            "position": torch.randint(9, (n,), generator=gen),
        }

    def _sample_pair(self, n, combos, gen, split):
        first = combos[torch.randint(len(combos), (n,), generator=gen)]
        second = combos[torch.randint(len(combos), (n,), generator=gen)]
        shapes = len(self.SHAPES)
        # Two different objects: redraw the second until it differs in both colour and shape, so
        # the swapped caption is always false.
        for _ in range(1000):
            clash = (first // shapes == second // shapes) | (first % shapes == second % shapes)
            if not clash.any():
                break
            second[clash] = combos[torch.randint(len(combos), (int(clash.sum()),), generator=gen)]
        else:
            raise ValueError(
                f"the {split} split cannot hold two objects differing in colour and shape; "
                "hold out pairs that differ in both"
            )
        relation = torch.randint(4, (n,), generator=gen)  # index into RELATIONS
        line = torch.randint(3, (n,), generator=gen)  # which row (side by side) or column (stacked)
        # Objects sit in opposite cells (columns 0 and 2, or rows 0 and 2) so two large ones never touch.
        near, far = torch.zeros_like(line), torch.full_like(line, 2)
        horizontal = relation < 2
        first_before = (relation == 0) | (relation == 2)  # left of / above: first has the smaller coordinate
        first_end = torch.where(first_before, near, far)
        second_end = 2 - first_end
        pos1 = torch.where(horizontal, 3 * line + first_end, 3 * first_end + line)
        pos2 = torch.where(horizontal, 3 * line + second_end, 3 * second_end + line)
        objects = []
        for combo, pos in ((first, pos1), (second, pos2)):
            objects.append({
                "colour": combo // shapes,
                "shape": combo % shapes,
                "size": torch.randint(2, (n,), generator=gen),
                "position": pos,
            })
        return objects, relation

    def _render(self, objects, gen, geometry: bool = False):
        """The pictures (n, 3, S, S) uint8, and with ``geometry`` each object's coverage mask
        (n, objects, S, S) and box (n, objects, 3); otherwise None, None."""
        n, size = len(objects[0]["shape"]), self.image_size
        rgb = torch.tensor([RGB[c] for c in self.COLOURS], dtype=torch.float32)  # (8, 3)
        centres = torch.tensor(CELL_CENTRES) * size
        radii = torch.tensor(SIZE_RADIUS) * size
        layers = []
        for obj in objects:
            row, col = obj["position"] // 3, obj["position"] % 3
            jitter = (torch.rand(n, 2, generator=gen) * 2 - 1) * POSITION_JITTER * size  # (n, 2)
            cx, cy = centres[col] + jitter[:, 0], centres[row] + jitter[:, 1]
            radius = radii[obj["size"]] * (1 + (torch.rand(n, generator=gen) * 2 - 1) * SIZE_JITTER)
            colour = rgb[obj["colour"]] + (torch.rand(n, 3, generator=gen) * 2 - 1) * self.colour_jitter
            layers.append((obj["shape"], cx, cy, radius, colour.clamp(0, 255)))
        background = torch.rand(n, generator=gen) * 40  # a dark grey, different in each picture
        images = torch.empty(n, 3, size, size, dtype=torch.uint8)
        kept = torch.empty(n, len(layers), size, size) if geometry else None
        chunk = max(1, 2**22 // (size * size))  # bounds memory: about 16 MB of floats per mask
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            masks = [(coverage(s[sl], x[sl], y[sl], r[sl], size), c[sl]) for s, x, y, r, c in layers]
            noise = torch.randn(sl.stop - sl.start, 1, size, size, generator=gen) * self.noise
            images[sl] = compose(background[sl], masks, noise)  # (chunk, 3, S, S)
            if geometry:
                kept[sl] = torch.stack([m for m, _ in masks], dim=1)
        if not geometry:
            return images, None, None
        boxes = torch.stack([torch.stack([x, y, r], dim=-1) for _, x, y, r, _ in layers], dim=1)  # (n, objects, 3)
        return images, kept, boxes

    def _labels(self, objects, relation):
        names = {"shape": list(self.SHAPES), "colour": list(self.COLOURS), "size": list(self.SIZES),
                 "position": list(self.POSITIONS)}
        first = objects[0]
        labels = {k: first[k].long() for k in names}
        class_names = dict(names)
        if relation is None:
            labels["colour_shape"] = first["colour"] * len(self.SHAPES) + first["shape"]
            class_names["colour_shape"] = [f"{c} {s}" for c in self.COLOURS for s in self.SHAPES]
        else:
            for k in names:
                labels[k + "2"] = objects[1][k].long()
                class_names[k + "2"] = list(names[k])
            labels["relation"] = relation.long()
            class_names["relation"] = list(self.RELATIONS)
        return labels, class_names

    def _captions(self, objects, relation, rng):
        k = self.captions_per_image
        colour, shape, size = (self._named(objects[0], key) for key in ("colour", "shape", "size"))
        if relation is None:
            position = objects[0]["position"].tolist()
            captions = [
                [grammar.single_caption(rng, c, s, z, p) for _ in range(k)]
                for c, s, z, p in zip(colour, shape, size, position)
            ]
            return captions, None
        second = [self._named(objects[1], key) for key in ("colour", "shape", "size")]
        relations = [self.RELATIONS[i] for i in relation.tolist()]
        captions, negatives = [], []
        for c1, s1, z1, c2, s2, z2, rel in zip(colour, shape, size, *second, relations):
            made = [grammar.pair_caption(rng, (c1, s1, z1), (c2, s2, z2), rel) for _ in range(k)]
            captions.append([m[0] for m in made])
            negatives.append([m[1] for m in made])
        return captions, negatives

    def _named(self, obj: dict[str, torch.Tensor], key: str) -> list[str]:
        """Class indices of one attribute as names: [2, 0] -> ["triangle", "circle"]."""
        names = {"colour": self.COLOURS, "shape": self.SHAPES, "size": self.SIZES}[key]
        return [names[i] for i in obj[key].tolist()]
