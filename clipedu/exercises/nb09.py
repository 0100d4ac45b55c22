"""Exercises of notebook 09: the gap vector, shifting the gap, uniformity."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipedu.exercises import Exercise, compare_numbers, compare_tensors
from clipedu.geometry import gap_vector, shift_gap
from clipedu.geometry import uniformity as _uniformity


def _clouds(seed=0, n_image=40, n_text=50, width=6):
    """Two clouds of unit vectors with different centres and different sizes."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(width, generator=g)
    image = F.normalize(torch.randn(n_image, width, generator=g) + centre, dim=-1)
    text = F.normalize(torch.randn(n_text, width, generator=g) - 0.5 * centre, dim=-1)
    return image, text


# --- 1. the gap vector --------------------------------------------------------------------------------------
def _check_gap(fn) -> str | None:
    image, text = _clouds()
    expected = gap_vector(image, text)  # (E,)
    got = fn(image.clone(), text.clone())
    if isinstance(got, (float, int)) or (isinstance(got, torch.Tensor) and got.dim() == 0):
        return (f"return the vector (E,) = ({expected.shape[0]},), not its length; the length "
                f"{expected.norm():.3f} is the size of the gap.")
    if not isinstance(got, torch.Tensor):
        return f"the gap should be a tensor of shape ({expected.shape[0]},), got {type(got).__name__}."
    if got.shape != expected.shape:
        return (f"the gap should have shape ({expected.shape[0]},): average over the embeddings (dim=0), "
                f"one centroid per modality; got {tuple(got.shape)}.")
    if torch.allclose(got, -expected, atol=1e-6):
        return "the sign is reversed: the gap points from the text centroid to the image centroid, image minus text."
    unit_centres = F.normalize(image.mean(0), dim=0) - F.normalize(text.mean(0), dim=0)
    if torch.allclose(got, unit_centres, atol=1e-6):
        return ("you normalised the centroids. The gap is the difference of the plain means of the (unit) "
                "embeddings; a centroid inside the sphere is what shows how spread a cloud is.")
    return compare_tensors("the gap vector", got, expected)


gap = Exercise(
    name="gap",
    task="The gap vector: the centroid of the image embeddings minus the centroid of the text embeddings.",
    checker=_check_gap,
    hint_text="image_embeds.mean(dim=0) is the image centroid (E,); subtract the text centroid.",
    solution_code="""
    def my_gap(image_embeds, text_embeds):
        return image_embeds.mean(dim=0) - text_embeds.mean(dim=0)  # (E,)
    """,
    reference=lambda: lambda image, text: image.mean(0) - text.mean(0),
    mistakes=[
        (lambda: lambda image, text: text.mean(0) - image.mean(0), "sign is reversed"),
        (lambda: lambda image, text: (image.mean(0) - text.mean(0)).norm(), "not its length"),
        (lambda: lambda image, text: F.normalize(image.mean(0), dim=0) - F.normalize(text.mean(0), dim=0),
         "normalised the centroids"),
        (lambda: lambda image, text: image.mean(1) - text.mean(1)[: len(image)], "dim=0"),
    ],
    success="its length is the modality gap Liang et al. measure.",
)


# --- 2. shifting the gap ----------------------------------------------------------------------------------------
def _shift_variants(image, text, fraction, g):
    half = 0.5 * fraction * g
    return {
        "not renormalised": (image - half, text + half),
        "signs swapped": (F.normalize(image + half, dim=-1), F.normalize(text - half, dim=-1)),
        "whole gap each": (F.normalize(image - 2 * half, dim=-1), F.normalize(text + 2 * half, dim=-1)),
        "only images": (F.normalize(image - 2 * half, dim=-1), text),
    }


_SHIFT_ADVICE = {
    "not renormalised": "the shifted embeddings are no longer unit length: renormalise both with "
    "F.normalize(..., dim=-1), since CLIP compares directions.",
    "signs swapped": "your shift widens the gap: the gap points from texts to images, so images move by "
    "-fraction * gap / 2 and texts by +fraction * gap / 2.",
    "whole gap each": "each side moves by half of fraction * gap, so that together they cover fraction * gap.",
    "only images": "move both modalities, each by half: images by -fraction * gap / 2, texts by +fraction * gap / 2.",
}


def _check_shift(fn) -> str | None:
    image, text = _clouds(seed=1)
    g = gap_vector(image, text)
    for fraction in (1.0, 0.5, -0.5):
        expected = shift_gap(image, text, fraction, g)
        got = fn(image.clone(), text.clone(), fraction, g.clone())
        where = f"shift(fraction={fraction})"
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            return f"{where} should return two tensors, (images, texts); got {type(got).__name__}."
        if all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, expected)):
            continue
        for name, wrong in _shift_variants(image, text, fraction, g).items():
            if all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, wrong)):
                return _SHIFT_ADVICE[name]
        for label, a, b in (("images", got[0], expected[0]), ("texts", got[1], expected[1])):
            problem = compare_tensors(f"the shifted {label} of {where}", a, b)
            if problem:
                return problem
    return None


def _ref_shift(image, text, fraction, g):
    half = 0.5 * fraction * g  # (E,)
    return F.normalize(image - half, dim=-1), F.normalize(text + half, dim=-1)


shift = Exercise(
    name="shift",
    task="Shift both modalities towards each other along the gap, each by half of fraction * gap, and renormalise.",
    checker=_check_shift,
    hint_text="images - fraction * gap / 2 and texts + fraction * gap / 2, each through F.normalize(..., dim=-1).",
    solution_code="""
    import torch.nn.functional as F


    def my_shift(image_embeds, text_embeds, fraction, gap):
        half = 0.5 * fraction * gap  # (E,)
        return F.normalize(image_embeds - half, dim=-1), F.normalize(text_embeds + half, dim=-1)
    """,
    reference=lambda: _ref_shift,
    mistakes=[
        (lambda: lambda i, t, f, g: _shift_variants(i, t, f, g)["not renormalised"], "renormalise"),
        (lambda: lambda i, t, f, g: _shift_variants(i, t, f, g)["signs swapped"], "widens the gap"),
        (lambda: lambda i, t, f, g: _shift_variants(i, t, f, g)["whole gap each"], "half"),
        (lambda: lambda i, t, f, g: _shift_variants(i, t, f, g)["only images"], "move both"),
    ],
    success="with fraction = 1 the two centroids meet (before renormalising).",
)


# --- 3. uniformity -------------------------------------------------------------------------------------------
def _check_uniformity(fn) -> str | None:
    for seed, n in ((2, 30), (3, 7)):
        x, _ = _clouds(seed=seed, n_image=n)
        expected = _uniformity(x)
        got = fn(x.clone())
        if isinstance(got, torch.Tensor):
            if got.numel() != 1:
                return f"uniformity should be one number, got a tensor of shape {tuple(got.shape)}."
            got = got.item()
        sq = torch.cdist(x.double(), x.double()) ** 2
        off = ~torch.eye(n, dtype=torch.bool)
        variants = {
            "the diagonal": torch.log(torch.exp(-2 * sq).mean()).item(),
            "not squared": torch.log(torch.exp(-2 * sq.sqrt()[off]).mean()).item(),
            "no log": torch.exp(-2 * sq[off]).mean().item(),
            "mean of logs": (-2 * sq[off]).mean().item(),
        }
        if compare_numbers("uniformity", got, expected, rel=1e-4) is None:
            continue
        for name, value in variants.items():
            if compare_numbers("x", got, value, rel=1e-4) is None:
                return {
                    "the diagonal": "your mean includes each point with itself (distance 0, exp(0) = 1): average "
                    "over pairs i != j only.",
                    "not squared": "use squared distances: exp(-t * ||x_i - x_j||^2).",
                    "no log": "take the log of the mean: uniformity = log mean exp(-t ||x_i - x_j||^2).",
                    "mean of logs": "the log goes outside the mean (log of the mean of exp), not inside.",
                }[name]
        return compare_numbers(f"uniformity of {n} points", got, expected, rel=1e-4)
    return None


def _ref_uniformity(x, t=2.0):
    sq = torch.cdist(x, x) ** 2  # (N, N) squared distances
    off = ~torch.eye(len(x), dtype=torch.bool)  # pairs i != j
    return torch.log(torch.exp(-t * sq[off]).mean()).item()


uniformity = Exercise(
    name="uniformity",
    task="Wang and Isola's uniformity: log of the mean of exp(-2 ||x_i - x_j||^2) over pairs i != j.",
    checker=_check_uniformity,
    hint_text="torch.cdist(x, x) ** 2 gives the squared distances (N, N); leave out the diagonal with a mask "
    "~torch.eye(N, dtype=torch.bool); then log(mean(exp(-2 * d2))).",
    solution_code="""
    import torch


    def my_uniformity(x, t=2.0):
        sq = torch.cdist(x, x) ** 2  # (N, N)
        off = ~torch.eye(len(x), dtype=torch.bool)
        return torch.log(torch.exp(-t * sq[off]).mean()).item()
    """,
    reference=lambda: _ref_uniformity,
    mistakes=[
        (lambda: lambda x: torch.log(torch.exp(-2 * torch.cdist(x, x) ** 2).mean()).item(), "i != j"),
        (lambda: lambda x: torch.log(torch.exp(-2 * torch.cdist(x, x)[~torch.eye(len(x), dtype=torch.bool)]).mean()),
         "squared"),
        (lambda: lambda x: torch.exp(-2 * torch.cdist(x, x)[~torch.eye(len(x), dtype=torch.bool)] ** 2).mean(),
         "log of the mean"),
        (lambda: lambda x: (-2 * torch.cdist(x, x)[~torch.eye(len(x), dtype=torch.bool)] ** 2).mean(), "outside"),
    ],
    success="0 means every embedding is the same point; the more negative, the more evenly they cover the sphere.",
)
