"""Exercises of notebook 12 (real CLIP weights in our model)."""

from __future__ import annotations

import functools

import torch

from clipedu.clip import CLIP
from clipedu.config import preset
from clipedu.exercises import Exercise, as_number, close, prediction
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


# --- 3. a prediction: the position embedding's rows ---------------------------------------------------
predict_positions = prediction(
    "predict_positions",
    "ViT-B/32 cuts a 224 x 224 image into 32-pixel patches. How many rows does visual.positional_embedding have?",
    50,
    rel=0.005,
    wrong=(49, 7, 196, 224),
    why="224 / 32 = 7 patches a side, 7 x 7 = 49 patch tokens, plus one row for the CLS token, which gets a "
    "position of its own: 50 rows of width 768.",
    hint="One row per token the transformer reads. Which token is there besides the patches?",
)


# --- 4. the image tower's parameters, from its config (a derivation) ----------------------------------
_TOWERS = (  # (width, layers, patch_size, image_size, embed_dim)
    (768, 12, 32, 224, 512),  # ViT-B/32
    (64, 2, 8, 32, 32),
    (96, 3, 4, 32, 48),
    (1024, 24, 14, 224, 768),  # ViT-L/14
)


def _tower_parameters(width, layers, patch_size, image_size, embed_dim) -> int:
    from clipedu.config import VisionConfig
    from clipedu.vision import VisionTransformer

    cfg = VisionConfig(image_size=image_size, patch_size=patch_size, width=width, layers=layers, heads=width // 32)
    with torch.device("meta"):  # shapes only, no memory
        tower = VisionTransformer(cfg, embed_dim)
    return sum(p.numel() for p in tower.parameters())


def _ref_vision_parameters(width, layers, patch_size, image_size, embed_dim):
    d, n = width, (image_size // patch_size) ** 2
    embedding = 3 * patch_size**2 * d + d + (n + 1) * d  # patch projection (no bias), CLS, positions
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    return embedding + 2 * d + layers * block + 2 * d + d * embed_dim  # ln_pre, blocks, ln_post, proj


def _variant(change):
    def count(width, layers, patch_size, image_size, embed_dim):
        d, n = width, (image_size // patch_size) ** 2
        parts = {
            "embedding": 3 * patch_size**2 * d + d + (n + 1) * d,
            "norms": 4 * d,
            "blocks": layers * (12 * d * d + 13 * d),
            "proj": d * embed_dim,
        }
        return change(parts, d, n, layers, patch_size) if change else sum(parts.values())

    return count


_VARIANTS = {
    "no CLS position": lambda p, d, n, L, P: sum(p.values()) - d,
    "no biases": lambda p, d, n, L, P: sum(p.values()) - L * 9 * d,
    "mlp 1x": lambda p, d, n, L, P: sum(p.values()) - L * 6 * d * d - L * 3 * d,
    "no proj": lambda p, d, n, L, P: sum(p.values()) - p["proj"],
    "patch bias": lambda p, d, n, L, P: sum(p.values()) + d,
    "no layernorms": lambda p, d, n, L, P: sum(p.values()) - p["norms"] - L * 4 * d,
}
_VARIANT_ADVICE = {
    "no CLS position": "the position embedding has N + 1 rows: the CLS token gets a position too",
    "no biases": "the linear layers in each block have biases: qkv (3D), the output projection (D), and the "
    "MLP's two layers (4D and D)",
    "mlp 1x": "the MLP widens to 4D: fc1 is (4D, D) and fc2 (D, 4D), 8 D^2 weights per block",
    "no proj": "the tower ends with the projection into the shared space, a (D, E) matrix",
    "patch bias": "the patch projection has no bias in CLIP (the position embedding would absorb it)",
    "no layernorms": "every LayerNorm has a weight and a bias of D each: ln_pre, ln_post and two per block",
}


def _check_vision_parameters(fn) -> str | None:
    for tower in _TOWERS:
        call = "my_vision_parameters(width={}, layers={}, patch_size={}, image_size={}, embed_dim={})".format(*tower)
        expected = _tower_parameters(*tower)  # counted on the model itself
        got = as_number(fn(*tower))
        if got is None:
            return f"{call} should return one number, a count of parameters."
        if got == expected:
            continue
        for name, change in _VARIANTS.items():
            if got == _variant(change)(*tower):
                return f"{call} gave {got:,.0f}, the model has {expected:,}: {_VARIANT_ADVICE[name]}."
        return f"{call} gave {got:,.0f}; counting the parameters of clipedu's VisionTransformer gives {expected:,}."
    return None


vision_parameters = Exercise(
    name="vision_parameters",
    task="my_vision_parameters(width, layers, patch_size, image_size, embed_dim) -> the image tower's parameter "
    "count, in closed form",
    checker=_check_vision_parameters,
    hint_text="Go through the tower: patch projection 3 P^2 D (no bias), CLS D, positions (N + 1) D, ln_pre 2D; "
    "per block two LayerNorms (2D each), qkv (3D^2 + 3D), output projection (D^2 + D), MLP (4D^2 + 4D) and "
    "(4D^2 + D); then ln_post 2D and the projection D E.",
    solution_code="""
    def my_vision_parameters(width, layers, patch_size, image_size, embed_dim):
        d, n = width, (image_size // patch_size) ** 2  # n patches
        embedding = 3 * patch_size**2 * d + d + (n + 1) * d  # patch projection, CLS, positions
        block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
        return embedding + 2 * d + layers * block + 2 * d + d * embed_dim  # ln_pre, blocks, ln_post, proj
    """,
    reference=lambda: _ref_vision_parameters,
    mistakes=[
        (lambda: _variant(_VARIANTS["no CLS position"]), "N + 1 rows"),
        (lambda: _variant(_VARIANTS["no biases"]), "biases"),
        (lambda: _variant(_VARIANTS["mlp 1x"]), "4D"),
        (lambda: _variant(_VARIANTS["no proj"]), "projection into the shared space"),
        (lambda: _variant(_VARIANTS["patch bias"]), "no bias"),
    ],
    success="ViT-B/32's image tower: 87,849,216 parameters, almost all of them the 12 D^2 weights of each block.",
    kind="derive",
)


# --- 5. an experiment: the resize filter --------------------------------------------------------------
_FILTERS = ("bicubic", "bilinear", "nearest", "box", "hamming", "lanczos")


@functools.cache
def experiment_setup():
    """The first photo of the notebook (scikit-learn's 'china.jpg', 640 x 427) as a PIL image."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg"))


def _with_filter(photo, name: str) -> torch.Tensor:
    from PIL import Image

    from clipedu.preprocess import center_crop, normalize, to_tensor

    w, h = photo.size
    new_w, new_h = (224, int(224 * h / w)) if w <= h else (int(224 * w / h), 224)
    resized = photo.resize((new_w, new_h), getattr(Image.Resampling, name.upper()))
    return normalize(to_tensor(center_crop(resized, 224)))  # (3, 224, 224)


def _filter_difference(name: str, measure: str = "mean") -> float:
    from clipedu.preprocess import Preprocess

    photo = experiment_setup()
    diff = (_with_filter(photo, name) - Preprocess()(photo)).abs()
    return diff.mean().item() if measure == "mean" else diff.max().item()


def _check_filters(fn) -> str | None:
    measured = fn()
    if not isinstance(measured, dict):
        return f"return a dict {{filter name: mean |difference|}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} filter(s); compare at least 3, the baseline 'bicubic' among "
                "them (e.g. 'bicubic', 'bilinear', 'nearest').")
    for name in measured:
        if not isinstance(name, str) or name.lower() not in _FILTERS:
            return f"each key is a resize filter, one of {', '.join(_FILTERS)}; got {name!r}."
    if "bicubic" not in {n.lower() for n in measured}:
        return "include the baseline, 'bicubic' (OpenAI's filter), among your settings: its difference is 0."
    for name, value in measured.items():
        got = as_number(value)
        if got is None:
            return f"the difference for {name!r} should be one number, got {type(value).__name__}."
        expected = _filter_difference(name.lower())
        if close(got, expected, rel=1e-4, atol=1e-6):
            continue
        if close(got, _filter_difference(name.lower(), "max"), rel=1e-4, atol=1e-6):
            return (f"for {name!r} you reported {got:.4f}, the largest difference of one pixel; the question is "
                    f"the mean absolute difference over the whole (3, 224, 224) tensor ({expected:.4f}).")
        std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).mean().item()
        if expected > 0 and abs(got / expected - std) < 0.05 * std:
            return (f"for {name!r} you reported {got:.4f}, about the difference in [0, 1] pixel values; measure "
                    f"it on the normalised tensors the model reads ({expected:.4f}).")
        return (f"for {name!r} the checker measured a mean absolute difference of {expected:.4f} from Preprocess(), "
                f"you reported {got:.4f}.")
    return None


def _reference_filters():
    return {name: _filter_difference(name) for name in ("bicubic", "bilinear", "nearest")}


def _in_pixels():
    from clipedu.data import CLIP_STD

    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    photo = experiment_setup()
    from clipedu.preprocess import Preprocess

    base = Preprocess()(photo) * std
    return {n: (_with_filter(photo, n) * std - base).abs().mean().item() for n in ("bicubic", "bilinear", "nearest")}


resize_filter = Exercise(
    name="resize_filter",
    task="my_experiment() -> {filter: mean |x - Preprocess()(photo)|}: OpenAI's recipe with another resize filter, "
    "for at least 3 filters, 'bicubic' among them",
    checker=_check_filters,
    hint_text="photo = nb12.experiment_setup(); for each name, resize the shorter side to 224 with "
    "Image.Resampling[name.upper()], then center_crop(..., 224), to_tensor and normalize from "
    "clipedu.preprocess; compare with Preprocess()(photo): (x - reference).abs().mean().item().",
    solution_code="""
    from PIL import Image

    from clipedu.exercises import nb12
    from clipedu.preprocess import Preprocess, center_crop, normalize, to_tensor


    def my_experiment():
        photo = nb12.experiment_setup()
        reference = Preprocess()(photo)  # (3, 224, 224) OpenAI's recipe, bicubic
        w, h = photo.size
        size = (224, int(224 * h / w)) if w <= h else (int(224 * w / h), 224)  # shorter side -> 224
        difference = {}
        for name in ("bicubic", "bilinear", "nearest"):  # the one thing changed: the resize filter
            resized = photo.resize(size, Image.Resampling[name.upper()])
            x = normalize(to_tensor(center_crop(resized, 224)))
            difference[name] = (x - reference).abs().mean().item()
        return difference
    """,
    reference=lambda: _reference_filters,
    mistakes=[
        (lambda: lambda: {"bicubic": 0.0, "bilinear": 0.1, "nearest": 0.3}, "the checker measured"),
        (lambda: lambda: {"bicubic": 0.0}, "at least 3"),
        (lambda: lambda: {n: _filter_difference(n, "max") for n in ("bicubic", "bilinear", "nearest")},
         "largest difference"),
        (lambda: _in_pixels, "normalised"),
        (lambda: lambda: {n: _filter_difference(n) for n in ("bilinear", "nearest", "box")}, "baseline"),
    ],
    success="a photo that looks alike to us is another input to the model: match the recipe the weights "
    "were trained with.",
    kind="experiment",
)
