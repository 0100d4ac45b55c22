"""Exercises of notebook 01: patchify by hand, the sequence length of a config, conv weights as linear."""

from __future__ import annotations

import torch

from clipedu.config import VisionConfig, preset
from clipedu.exercises import Exercise, compare_tensors
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
