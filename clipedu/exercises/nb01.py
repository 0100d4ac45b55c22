"""Exercises of notebook 01: patchify by hand, the sequence length of a config, conv weights as linear, the number
of patches of ViT-B/32, the work of the patch embedding, how much position a shuffle needs to show."""

from __future__ import annotations

import torch

from clipedu.config import VisionConfig, preset
from clipedu.exercises import Exercise, as_number, compare_tensors, prediction
from clipedu.patches import PatchEmbedding
from clipedu.patches import patchify as _patchify


# --- 1. patchify by hand ------------------------------------------------------------------------------
def _patchify_cases():
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(2, 3, 32, 32, generator=g), 8),
        (torch.randn(1, 1, 12, 12, generator=g), 4),
        (torch.randn(2, 3, 16, 24, generator=g), 8),  # not square: 2 rows of 3 patches
    ]


def _check_patchify(my_patchify) -> str | None:
    for images, p in _patchify_cases():
        b, c, h, w = images.shape
        expected = _patchify(images, p)  # (B, N, C*P*P)
        got = my_patchify(images.clone(), p)
        where = f"my_patchify(images of shape {tuple(images.shape)}, {p})"
        if not isinstance(got, torch.Tensor):
            return f"{where} should return a torch.Tensor, got {type(got).__name__}."
        if tuple(got.shape) != tuple(expected.shape):
            return (f"{where} should have shape (B, N, C*P*P) = {tuple(expected.shape)}, got {tuple(got.shape)}"
                    + (": merge the grid dimensions into one sequence dimension N." if got.dim() > 3 else "."))
        if torch.allclose(got, expected):
            continue
        if torch.allclose(got, images.reshape(b, -1, c * p * p)):
            return (f"{where} has the right shape, but each 'patch' is a run of consecutive pixels of one row, not a "
                    f"{p}x{p} square: split H and W into (grid, P) with a reshape, then permute so the two grid "
                    "dimensions come first, before the final reshape.")
        column_order = expected.reshape(b, h // p, w // p, -1).transpose(1, 2).reshape(expected.shape)
        if torch.allclose(got, column_order):
            return f"{where} numbers the patches column by column; number them row by row, like reading text."
        if torch.allclose(got.sort(dim=-1).values, expected.sort(dim=-1).values):
            return (f"{where} puts the right numbers in each patch but in the wrong order: flatten each patch "
                    "channel first, as (C, P, P), the order a Conv2d weight of shape (D, C, P, P) has.")
        return compare_tensors(where, got, expected)
    return None


def _reference_patchify(images, p):
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)  # (B, C, gh, P, gw, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, P, P)
    return x.reshape(b, (h // p) * (w // p), c * p * p)  # (B, N, C*P*P)


def _channel_last(images, p):
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, P, P, C)
    return x.reshape(b, -1, c * p * p)


def _column_order(images, p):
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 4, 2, 1, 3, 5)  # (B, gw, gh, C, P, P)
    return x.reshape(b, -1, c * p * p)


patchify = Exercise(
    name="patchify",
    task="my_patchify(images (B, C, H, W), patch_size) -> (B, N, C*P*P), patches row by row, channel first",
    checker=_check_patchify,
    hint_text="Three steps: reshape (B, C, H, W) to (B, C, H/P, P, W/P, P); permute to "
    "(B, H/P, W/P, C, P, P); reshape to (B, N, C*P*P). A single reshape cannot do it: it would cut rows, "
    "not squares.",
    solution_code="""
    def my_patchify(images, patch_size):
        b, c, h, w = images.shape
        p = patch_size
        x = images.reshape(b, c, h // p, p, w // p, p)  # (B, C, gh, P, gw, P)
        x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, P, P)
        return x.reshape(b, (h // p) * (w // p), c * p * p)  # (B, N, C*P*P)
    """,
    reference=lambda: _reference_patchify,
    mistakes=[
        (lambda: lambda images, p: images.reshape(images.shape[0], -1, images.shape[1] * p * p), "not a"),
        (lambda: _channel_last, "channel first"),
        (lambda: _column_order, "column by column"),
        (
            lambda: lambda images, p: _reference_patchify(images, p).reshape(
                images.shape[0], images.shape[2] // p, images.shape[3] // p, -1
            ),
            "one sequence dimension",
        ),
    ],
)


# --- 2. how long is the sequence? -------------------------------------------------------------------
def _configs():
    return [("tiny", preset("tiny").vision), ("small", preset("small").vision), ("ViT-B/32", preset("ViT-B/32").vision),
            ("a 1-channel 96 px, patch 12 model", VisionConfig(image_size=96, patch_size=12, channels=1))]


def _sizes_reference(cfg: VisionConfig) -> tuple[int, int, int]:
    n = (cfg.image_size // cfg.patch_size) ** 2
    return n, n + 1, cfg.channels * cfg.patch_size**2


def _check_sizes(token_counts) -> str | None:
    labels = ("num_patches", "sequence_length", "patch_dim")
    for name, cfg in _configs():
        expected = _sizes_reference(cfg)
        got = token_counts(cfg)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            return f"token_counts should return three numbers (num_patches, sequence_length, patch_dim), got {got!r}."
        got = tuple(int(v) for v in got)
        if got == expected:
            continue
        n, seq, dim = expected
        grid = cfg.image_size // cfg.patch_size
        if got[0] == grid:
            return f"for {name}, {grid} is the side of the patch grid; there are {grid} x {grid} = {n} patches."
        if got[1] == n:
            return (f"for {name}, the sequence is {seq} tokens, not {n}: the ViT puts one CLS token in front of "
                    "the patches.")
        if got[2] == cfg.patch_size**2 and cfg.channels > 1:
            return (f"for {name}, a patch holds {dim} numbers, not {got[2]}: {cfg.patch_size} x {cfg.patch_size} "
                    f"pixels times {cfg.channels} channels.")
        wrong = [f"{label} should be {e}, got {g}" for label, e, g in zip(labels, expected, got) if e != g]
        return f"for {name}: " + "; ".join(wrong) + "."
    return None


token_counts = Exercise(
    name="token_counts",
    task="token_counts(vision_cfg) -> (num_patches, sequence_length, patch_dim)",
    checker=_check_sizes,
    hint_text="The grid is image_size // patch_size on each side; the sequence adds the CLS token; each patch "
    "holds channels * patch_size * patch_size numbers.",
    solution_code="""
    def token_counts(cfg):
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        sequence_length = num_patches + 1  # the CLS token in front
        patch_dim = cfg.channels * cfg.patch_size**2
        return num_patches, sequence_length, patch_dim
    """,
    reference=lambda: _sizes_reference,
    mistakes=[
        (lambda: lambda cfg: (cfg.image_size // cfg.patch_size, *_sizes_reference(cfg)[1:]), "patch grid"),
        (lambda: lambda cfg: (_sizes_reference(cfg)[0], _sizes_reference(cfg)[0], _sizes_reference(cfg)[2]), "CLS"),
        (lambda: lambda cfg: (*_sizes_reference(cfg)[:2], cfg.patch_size**2), "channels"),
        (lambda: lambda cfg: 49, "three numbers"),
    ],
)


# --- 3. the conv weight as a linear layer's ---------------------------------------------------------
def _conv_cases():
    g = torch.Generator().manual_seed(2)
    return [torch.randn(16, 3, 4, 4, generator=g), torch.randn(8, 2, 3, 3, generator=g)]


def _check_conv_to_linear(conv_to_linear) -> str | None:
    for weight in _conv_cases():
        d, c, p, _ = weight.shape
        expected = weight.reshape(d, c * p * p)  # (D, C*P*P)
        got = conv_to_linear(weight.clone())
        where = f"conv_to_linear(weight of shape {tuple(weight.shape)})"
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (c * p * p, d):
            return (f"{where} has shape {tuple(got.shape)}, the transpose: nn.Linear keeps its weight as "
                    f"(out_features, in_features) = ({d}, {c * p * p}).")
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.allclose(got, expected):
            if torch.allclose(got.sort(dim=1).values, expected.sort(dim=1).values):
                return (f"{where} has each output's weights in the wrong order: patchify flattens a patch "
                        "channel first (C, P, P), so keep the conv weight's (C, P, P) order.")
        problem = compare_tensors(where, got, expected)
        if problem:
            return problem
    return None


conv_to_linear = Exercise(
    name="conv_to_linear",
    task="conv_to_linear(weight (D, C, P, P)) -> (D, C*P*P), the weight of the equivalent nn.Linear",
    checker=_check_conv_to_linear,
    hint_text="Each of the D filters is one row of the linear layer's weight, flattened in the same (C, P, P) "
    "order patchify uses. One reshape does it.",
    solution_code="""
    def conv_to_linear(weight):
        return weight.reshape(weight.shape[0], -1)  # (D, C*P*P): one row per filter, in (C, P, P) order
    """,
    reference=lambda: lambda weight: weight.reshape(weight.shape[0], -1),
    mistakes=[
        (lambda: lambda weight: weight.reshape(weight.shape[0], -1).T, "the transpose"),
        (lambda: lambda weight: weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1), "wrong order"),
        (lambda: lambda weight: weight.flatten(), "should have shape"),
    ],
)


# --- 4. a prediction: how many patches does ViT-B/32 read? --------------------------------------------
predict_patch_count = prediction(
    "predict_patch_count",
    "ViT-B/32 cuts a 224 x 224 photo into 32 x 32 patches: how many patches (not counting the CLS token)?",
    49,
    rel=0.0,
    wrong=(7, 50, 196),
    why="224 / 32 = 7 patches along each side, and 7 x 7 = 49 in all (50 tokens with the CLS token, which is not "
    "a patch; 196 would be ViT-B/16's).",
    hint="How many patches fit along one side? The grid is square.",
)


# --- 5. a derivation: the work of the patch embedding ---------------------------------------------------
_MAC_CASES = ((32, 8, 3, 96), (224, 32, 3, 768), (224, 16, 3, 768), (48, 4, 1, 10), (30, 10, 2, 5))


def _measured_macs(image_size: int, patch_size: int, channels: int, width: int) -> int:
    """Multiply-adds of one image through PatchEmbedding, counted by PyTorch's FLOP counter (2 FLOPs each)."""
    from torch.utils.flop_counter import FlopCounterMode

    embed = PatchEmbedding(patch_size, width, channels)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        embed(torch.zeros(1, channels, image_size, image_size))
    return counter.get_total_flops() // 2


def _check_patch_embed_macs(fn) -> str | None:
    for size, p, c, d in _MAC_CASES:
        call = f"patch_embed_macs(image_size={size}, patch_size={p}, channels={c}, width={d})"
        got = as_number(fn(size, p, c, d))
        if got is None:
            return f"{call} should return one number, got {type(fn(size, p, c, d)).__name__}."
        expected = _measured_macs(size, p, c, d)
        if got == expected:
            continue
        n = (size // p) ** 2
        where = f"{call} = {got:,.0f}, but PyTorch's FLOP counter finds {expected:,} multiply-adds."
        if got == 2 * expected:
            return where + " You counted FLOPs (a multiply and an add each); count multiply-adds, one per weight use."
        if got == d * c * p * p:
            return where + f" That is the work for one patch; the image has {n} of them."
        if got == (n + 1) * d * c * p * p:
            return where + " The CLS token is not a patch: the embedding never sees it."
        if got == n * d * c * p:
            return where + " A patch holds C x P x P numbers: P squared, not P."
        return where + " Count the numbers in one patch, the outputs per patch, and the patches per image."
    return None


patch_embed_macs = Exercise(
    name="patch_embed_macs",
    task="patch_embed_macs(image_size, patch_size, channels, width) -> multiply-adds of the patch embedding for "
    "one image, in closed form",
    checker=_check_patch_embed_macs,
    hint_text="One token is W @ patch with W of shape (D, C*P*P): D * C * P * P multiply-adds. How many patches "
    "are there? Multiply, and see what happens to P.",
    solution_code="""
    def patch_embed_macs(image_size, patch_size, channels, width):
        num_patches = (image_size // patch_size) ** 2
        per_patch = width * channels * patch_size**2  # W (D, C*P*P) times one flattened patch
        return num_patches * per_patch  # = D * C * H * W when P divides the image: P cancels
    """,
    reference=lambda: lambda s, p, c, d: (s // p) ** 2 * d * c * p * p,
    mistakes=[
        (lambda: lambda s, p, c, d: 2 * (s // p) ** 2 * d * c * p * p, "multiply-adds"),
        (lambda: lambda s, p, c, d: d * c * p * p, "one patch"),
        (lambda: lambda s, p, c, d: ((s // p) ** 2 + 1) * d * c * p * p, "CLS"),
        (lambda: lambda s, p, c, d: (s // p) ** 2 * d * c * p, "P squared"),
    ],
    success="every pixel meets every one of the D filters exactly once, so the work is D x C x H x W whatever "
    "the patch size: smaller patches cost no more here; their price is paid in the transformer after it, whose "
    "sequence grows.",
    kind="derive",
)


# --- 6. an experiment: how much position does the model need to tell a shuffle apart? -------------------
def experiment_setup():
    """The untrained ViT of section 5 with its random position embeddings, one picture and the same picture
    with its 16 patches shuffled, the same on every call: (vit, original (1, 3, 32, 32), shuffled)."""
    from clipedu.data import ShapesWorld, to_float
    from clipedu.patches import unpatchify
    from clipedu.vision import VisionTransformer

    with torch.random.fork_rng():  # the notebook's random state is left alone
        torch.manual_seed(0)
        vit = VisionTransformer(VisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=4),
                                embed_dim=32).eval()
    original = to_float(ShapesWorld().generate(1, "train").images)  # (1, 3, 32, 32)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    shuffled = unpatchify(_patchify(original, 8)[:, perm], 8)
    return vit, original, shuffled


def _difference(vit, original, shuffled, scale, quantity="features", reduce="max"):
    a, b = vit(original), vit(shuffled)
    diff = (getattr(a, quantity) - getattr(b, quantity)).abs()
    return (diff.max() if reduce == "max" else diff.mean()).item()


def _run_scales(scales, cumulative=False, **kwargs):
    vit, original, shuffled = experiment_setup()
    positions = vit.pos_embed.detach().clone()
    out = {}
    with torch.no_grad():
        for s in scales:
            if cumulative:
                vit.pos_embed.mul_(s)
            else:
                vit.pos_embed.copy_(s * positions)
            out[s] = _difference(vit, original, shuffled, s, **kwargs)
    return out


def _close_to(got, expected):
    return abs(got - expected) <= 1e-5 + 1e-3 * abs(expected)


def _check_position_experiment(fn) -> str | None:
    measured = fn(*experiment_setup())
    if not isinstance(measured, dict):
        return f"return a dict {{scale: largest difference of the CLS features}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} scale(s); an experiment needs at least 3 to show a trend "
                "(e.g. 0, 0.1, 1 and 10).")
    for s in measured:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 100:
            return f"each key is a scale of the position embeddings, a number from 0 to 100; got {s!r}."
    if 1 not in measured:
        return "include the baseline, scale 1: the position embeddings as they are, the others are compared with."
    values = {}
    for s, value in measured.items():
        got = as_number(value)
        if got is None:
            return (f"for scale {s} you returned {type(value).__name__}; the measurement is one number, the largest "
                    "absolute difference between the two pictures' CLS features.")
        values[s] = got
    expected = _run_scales(list(measured))
    if all(_close_to(values[s], expected[s]) for s in measured):
        return None
    checks = [
        (_run_scales(list(measured), cumulative=True),
         "each setting multiplied the already-scaled position embeddings again: keep a copy of the original ones "
         "and set pos_embed to scale * original for every scale."),
        (_run_scales(list(measured), quantity="embedding"),
         "you compared the embeddings (after proj); the task measures the CLS features, vit(x).features."),
        (_run_scales(list(measured), reduce="mean"),
         "you took the mean absolute difference; the task measures the largest one (.abs().max())."),
    ]
    for wrong, advice in checks:
        if all(_close_to(values[s], wrong[s]) for s in measured):
            return advice
    s = next(s for s in measured if not _close_to(values[s], expected[s]))
    return (f"for scale {s} the checker measured a largest difference of {expected[s]:.4g} on the same ViT and "
            f"pictures, you reported {values[s]:.4g}: set vit.pos_embed to scale times the original position "
            "embeddings, then compare vit(original).features with vit(shuffled).features.")


def _reference_position_experiment(vit, original, shuffled, scales=(0.0, 0.1, 1.0, 10.0)):
    positions = vit.pos_embed.detach().clone()
    out = {}
    with torch.no_grad():
        for s in scales:
            vit.pos_embed.copy_(s * positions)
            out[s] = _difference(vit, original, shuffled, s)
    return out


position_experiment = Exercise(
    name="position_experiment",
    task="my_experiment(vit, original, shuffled) -> {scale of the position embeddings: largest difference between "
    "the CLS features of the picture and of its shuffled patches}, at least 3 scales, 1 included",
    checker=_check_position_experiment,
    hint_text="positions = vit.pos_embed.detach().clone() once; then for each scale, inside torch.no_grad(): "
    "vit.pos_embed.copy_(scale * positions) and (vit(original).features - vit(shuffled).features).abs().max().",
    solution_code="""
    import torch


    def my_experiment(vit, original, shuffled):
        positions = vit.pos_embed.detach().clone()  # (17, 64): the original position embeddings
        difference = {}
        with torch.no_grad():
            for scale in (0.0, 0.1, 1.0, 10.0):  # the one thing changed: how much position the tokens carry
                vit.pos_embed.copy_(scale * positions)
                a, b = vit(original).features, vit(shuffled).features  # (1, 64) each
                difference[scale] = (a - b).abs().max().item()
        return difference
    """,
    reference=lambda: _reference_position_experiment,
    mistakes=[
        (lambda: lambda vit, o, s: {0.0: 0.0, 1.0: 0.5, 10.0: 1.0}, "the checker measured"),
        (lambda: lambda vit, o, s: _reference_position_experiment(vit, o, s, (0.0, 1.0)), "at least 3"),
        (lambda: lambda vit, o, s: _reference_position_experiment(vit, o, s, (0.0, 0.1, 10.0)), "baseline"),
        (lambda: lambda vit, o, s: _run_scales((0.5, 1.0, 2.0, 4.0), cumulative=True), "already-scaled"),
        (lambda: lambda vit, o, s: _run_scales((0.0, 1.0, 10.0), quantity="embedding"), "features"),
        (lambda: lambda vit, o, s: _run_scales((0.0, 1.0, 10.0), reduce="mean"), "largest"),
    ],
    success="at scale 0 the shuffle is invisible (float rounding only); with position embeddings the summary "
    "depends on where each patch sits, more so as they grow, until the difference levels off.",
    kind="experiment",
)
