"""Exercises of notebook 12 (real CLIP weights in our model)."""

from __future__ import annotations

import functools

import torch

from clipedu.clip import CLIP
from clipedu.config import preset
from clipedu.exercises import Exercise
from clipedu.pretrained import to_openai_state_dict


# --- 1. the architecture from the tensor shapes ---------------------------------------------------
@functools.cache
def _vit(width: int, layers: int, patch: int, image: int):
    # The image tower as released; a one-block text tower keeps this quick (the answer reads visual.*).
    cfg = preset("ViT-B/32", vision_width=width, vision_layers=layers, vision_heads=max(1, width // 64),
                 patch_size=patch, image_size=image, text_layers=1, text_width=64, text_heads=1,
                 vocab_size=100, eot_token_id=99, context_length=8)
    with torch.device("meta"):  # names and shapes only: no memory, no time
        return to_openai_state_dict(CLIP(cfg))


# (what it is, width, layers, patch, image size)
_VIT_CASES = (("ViT-B/32", 768, 12, 32, 224), ("ViT-L/14", 1024, 24, 14, 224), ("a tiny ViT", 128, 2, 8, 32))


def _check_vision_config(fn) -> str | None:
    for what, width, layers, patch, image in _VIT_CASES:
        state_dict = dict(_vit(width, layers, patch, image))  # a copy: the answer may change it
        got = fn(state_dict)
        expected = {"width": width, "layers": layers, "patch_size": patch, "image_size": image}
        if not isinstance(got, dict):
            return f"read_vision_config should return a dict with keys {sorted(expected)}, got {type(got).__name__}."
        missing = sorted(set(expected) - set(got))
        if missing:
            return f"the dict is missing {missing}; it needs {sorted(expected)}."
        for key, value in expected.items():
            try:
                mine = int(got[key])
            except (TypeError, ValueError):
                return f"{key} should be a whole number, got {got[key]!r}."
            if mine == value:
                continue
            where = f"For {what} {key} is {value}, yours says {mine}."
            if key == "layers" and mine == value - 1:
                return where + " Blocks are numbered from 0, so the count is the largest index + 1."
            if key == "patch_size" and mine == 3:
                return where + (" visual.conv1.weight is (width, channels, P, P): 3 is the channels; the "
                                "patch size is the kernel's last dimension.")
            if key == "width" and mine == state_dict["visual.proj"].shape[1]:
                return where + (" That looks like the embedding width (visual.proj maps width -> embed_dim); "
                                "the transformer's width is visual.conv1.weight.shape[0].")
            if key == "image_size" and mine == image // patch:
                return where + " That is the grid (patches per side); the image is grid * patch_size pixels wide."
            return where
    return None


def _ref_read_vision_config(state_dict):
    conv = state_dict["visual.conv1.weight"]  # (D, 3, P, P)
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)  # N + 1 rows
    blocks = {int(k.split(".")[3]) for k in state_dict if k.startswith("visual.transformer.resblocks.")}
    return {"width": conv.shape[0], "patch_size": conv.shape[-1], "image_size": grid * conv.shape[-1],
            "layers": max(blocks) + 1}


def _mistake(change):
    def build():
        def answer(state_dict):
            d = _ref_read_vision_config(state_dict)
            change(d, state_dict)
            return d

        return answer

    return build


vision_config = Exercise(
    name="vision_config",
    task="Read the image tower's width, patch size, image size and number of layers off the tensor shapes.",
    checker=_check_vision_config,
    hint_text="visual.conv1.weight is (width, 3, P, P); visual.positional_embedding has one row per patch "
    "plus one for CLS; block i's weights are named visual.transformer.resblocks.<i>.*",
    solution_code="""
    def read_vision_config(state_dict):
        conv = state_dict["visual.conv1.weight"]  # (D, 3, P, P)
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        blocks = {int(k.split(".")[3]) for k in state_dict if k.startswith("visual.transformer.resblocks.")}
        return {"width": conv.shape[0], "patch_size": conv.shape[-1], "image_size": grid * conv.shape[-1],
                "layers": max(blocks) + 1}
    """,
    reference=lambda: _ref_read_vision_config,
    mistakes=[
        (_mistake(lambda d, sd: d.update(layers=d["layers"] - 1)), "largest index + 1"),
        (_mistake(lambda d, sd: d.update(patch_size=sd["visual.conv1.weight"].shape[1])), "channels"),
        (_mistake(lambda d, sd: d.update(width=sd["visual.proj"].shape[1])), "embedding width"),
        (_mistake(lambda d, sd: d.update(image_size=d["image_size"] // d["patch_size"])), "grid"),
    ],
    success="everything but the number of heads is in the shapes (heads are 64 wide in every CLIP).",
)


# --- 2. the centre crop -----------------------------------------------------------------------------
def _position_image(height: int, width: int) -> torch.Tensor:
    """(3, H, W) whose value at (c, y, x) is c * 1e6 + y * 1000 + x: a crop says where it came from."""
    y = torch.arange(height, dtype=torch.float64).view(-1, 1) * 1000
    x = torch.arange(width, dtype=torch.float64).view(1, -1)
    return torch.stack([c * 1e6 + y + x for c in range(3)])


# Offsets that round up (55.5 -> 56), round half to even (38.5 -> 38), or are whole.
_CROP_CASES = ((224, 335, 224), (301, 224, 224), (230, 240, 224), (9, 12, 5))


def _ref_center_crop(image, size):
    _, h, w = image.shape
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return image[:, top : top + size, left : left + size]


def _check_center_crop(fn) -> str | None:
    for h, w, size in _CROP_CASES:
        image = _position_image(h, w)
        got = fn(image.clone(), size)
        expected = _ref_center_crop(image, size)
        where = f"For a {h} x {w} image cropped to {size} x {size}"
        if not isinstance(got, torch.Tensor):
            return f"{where} the answer should be a tensor, got {type(got).__name__}."
        if tuple(got.shape) != tuple(expected.shape):
            return f"{where} the crop should have shape {tuple(expected.shape)}, got {tuple(got.shape)}."
        if torch.equal(got.double(), expected):
            continue
        corner = int(got[0, 0, 0].item())
        top, left = corner // 1000, corner % 1000
        want_top, want_left = int(round((h - size) / 2)), int(round((w - size) / 2))
        if (top, left) != (want_top, want_left):
            return (f"{where} your crop starts at row {top}, column {left}; OpenAI's starts at row {want_top}, "
                    f"column {want_left}: round((H - S) / 2) = round({(h - size) / 2}) = {want_top} and "
                    f"round((W - S) / 2) = round({(w - size) / 2}) = {want_left} (Python's round, as torchvision).")
        return f"{where} the crop starts in the right place but its pixels differ (keep all channels, in order)."
    return None


def _swapped_crop(image, size):  # a typical slip: height and width mixed up
    _, h, w = image.shape
    top, left = int(round((w - size) / 2)), int(round((h - size) / 2))
    return image[:, top : top + size, left : left + size]


center_crop = Exercise(
    name="center_crop",
    task="Cut the middle size x size square out of a (C, H, W) image, offsets rounded as torchvision does.",
    checker=_check_center_crop,
    hint_text="top = int(round((H - size) / 2)), left = int(round((W - size) / 2)); then slice rows and "
    "columns. Flooring with // starts half a pixel too early when H - size is odd.",
    solution_code="""
    def my_center_crop(image, size):
        _, h, w = image.shape
        top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
        return image[:, top : top + size, left : left + size]
    """,
    reference=lambda: _ref_center_crop,
    mistakes=[
        (lambda: lambda im, s: im[:, (im.shape[1] - s) // 2 : (im.shape[1] - s) // 2 + s,
                                  (im.shape[2] - s) // 2 : (im.shape[2] - s) // 2 + s], "column 56"),
        (lambda: lambda im, s: _swapped_crop(im, s), "shape"),
        (lambda: lambda im, s: im[:, :s, :s], "starts at row 0, column 0"),
        (lambda: lambda im, s: _ref_center_crop(im, s)[:1], "shape"),
    ],
    success="this is exactly the crop that OpenAI's preprocessing makes.",
)
