"""Exercises of notebook 09: the gap vector, the cosine of random directions, shifting the gap and what it does
to the gap and to zero-shot accuracy, uniformity."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from clipedu.exercises import Exercise, as_number, compare_numbers, compare_tensors, prediction
from clipedu.geometry import gap_vector, modality_gap, shift_gap
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



# --- 4. a derivation: the cosine of two random directions ----------------------------------------------------
@functools.cache
def _sampled_cosines(d: int, n: int = 50_000) -> tuple[float, float]:
    """The mean and variance of the cosines of n pairs of independent uniform unit vectors in d dimensions."""
    g = torch.Generator().manual_seed(90 + d)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    cos = (x * y).sum(dim=-1)  # (n,)
    return cos.mean().item(), cos.var().item()


def _check_random_cosine(fn) -> str | None:
    for d in (2, 3, 10, 128):
        call = f"random_cosine(d={d})"
        got = fn(d)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            return f"{call} should return two numbers, (mean, variance); got {type(got).__name__}."
        mean, var = as_number(got[0]), as_number(got[1])
        if mean is None or var is None:
            return f"{call} should return two numbers, (mean, variance); got {got!r}."
        sampled_mean, sampled_var = _sampled_cosines(d)
        if abs(mean) > 0.01:
            return (f"{call}: the mean should be 0 (sampling gives {sampled_mean:+.4f}); y and -y are equally likely, "
                    "so every cosine c comes with a -c.")
        if abs(var - sampled_var) <= 0.03 * sampled_var:
            continue
        if abs(var - d ** -0.5) < 1e-9:
            return (f"{call}: 1/sqrt(d) = {var:.4g} is the standard deviation; the variance is its square "
                    f"(sampling gives {sampled_var:.4g}).")
        off_by_one = abs(var - 1 / (d - 1)) < 1e-9 and abs(as_number(fn(d + 1)[1]) - 1 / d) < 1e-9
        if off_by_one:
            return f"{call}: 1/(d - 1) is off by one: at d = 2 it says 1, yet cos^2 of a random angle averages 1/2."
        if abs(var - 1) < 1e-9 or abs(var) < 1e-9:
            return (f"{call}: the variance is neither 0 nor 1 (sampling gives {sampled_var:.4g}). Fix x; the cosine is "
                    "the first coordinate of a random unit vector y (by symmetry), and the d squared coordinates of "
                    "y sum to 1.")
        return (f"{call}: sampling 50,000 pairs of random unit vectors gives variance {sampled_var:.4g}, "
                f"you gave {var:.4g}.")
    return None


random_cosine = Exercise(
    name="random_cosine",
    task="random_cosine(d) -> (mean, variance) of the cosine between two independent random unit vectors in d "
    "dimensions, in closed form",
    checker=_check_random_cosine,
    hint_text="Rotate so that x is the first axis: the cosine is then y_1, the first coordinate of a random unit "
    "vector. By symmetry y_1 and -y_1 are equally likely (the mean), and every coordinate has the same E[y_i^2], "
    "while y_1^2 + ... + y_d^2 = 1 (the variance).",
    solution_code="""
    def random_cosine(d):
        return 0.0, 1.0 / d  # (mean, variance): E[y_1] = 0 by symmetry, E[y_1^2] = 1/d since the d squares sum to 1
    """,
    reference=lambda: lambda d: (0.0, 1.0 / d),
    mistakes=[
        (lambda: lambda d: (0.0, d ** -0.5), "standard deviation"),
        (lambda: lambda d: (0.0, 1 / (d - 1)), "off by one"),
        (lambda: lambda d: (0.0, 1.0), "neither 0 nor 1"),
        (lambda: lambda d: (0.5, 1 / d), "the mean should be 0"),
        (lambda: lambda d: 1 / d, "two numbers"),
    ],
    success="in 128 dimensions two random directions have cosine 0 +- 0.088: nearly orthogonal.",
    kind="derive",
)


# --- 5. an experiment: how much of the gap does a shift close? ------------------------------------------------
def experiment_setup():
    """Two clouds of unit vectors with a wide gap between them, the same on every call: (image_embeds (40, 6),
    text_embeds (50, 6))."""
    return _clouds(seed=4)


def _gap_after(image, text, fraction, renormalise=True):
    g = gap_vector(image, text)
    if renormalise:
        return modality_gap(*shift_gap(image, text, fraction, g))
    half = 0.5 * fraction * g
    return (image - half).mean(0).sub((text + half).mean(0)).norm().item()


def _check_gap_experiment(fn) -> str | None:
    image, text = experiment_setup()
    measured = fn(image.clone(), text.clone())
    if not isinstance(measured, dict):
        return f"return a dict {{fraction: the gap after the shift}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} setting(s); an experiment needs at least 3 fractions to show a trend "
                "(e.g. 0, 0.5, 1 and 2).")
    for f in measured:
        if not isinstance(f, (int, float)) or not -3 <= f <= 3:
            return f"each key is a fraction of the gap, a number from -3 to 3; got {f!r}."
    if 0 not in measured:
        return "include the baseline, fraction 0 (no shift): the gap the others are compared with."
    for f, value in sorted(measured.items()):
        got = as_number(value)
        if got is None:
            if isinstance(value, torch.Tensor):
                return (f"for fraction {f} you returned a tensor of shape {tuple(value.shape)}; the gap is one number, "
                        "the length of the gap vector (geo.modality_gap).")
            return f"the gap for fraction {f} should be one number, got {type(value).__name__}."
        expected = _gap_after(image, text, f)
        if abs(got - expected) < 1e-5:
            continue
        if abs(got - _gap_after(image, text, f, renormalise=False)) < 1e-5:
            return (f"for fraction {f} you measured the gap before renormalising, exactly |1 - fraction| times the "
                    f"original; the shifted embeddings go back onto the sphere (shift_gap does it), which gives "
                    f"{expected:.4f}.")
        return (f"for fraction {f} the checker measured a gap of {expected:.4f} on the same clouds, you reported "
                f"{got:.4f}: shift with geo.shift_gap(image_embeds, text_embeds, fraction, gap), the gap measured "
                "before the shift, then take geo.modality_gap of the two shifted clouds.")
    return None


def _reference_gap_experiment(image, text):
    return {f: _gap_after(image, text, f) for f in (0.0, 0.5, 1.0, 2.0)}


shift_experiment = Exercise(
    name="shift_experiment",
    task="my_experiment(image_embeds, text_embeds) -> {fraction: the modality gap after shifting by that fraction "
    "and renormalising}, for at least 3 fractions, 0 included",
    checker=_check_gap_experiment,
    hint_text="gap = geo.gap_vector(image_embeds, text_embeds); for each fraction: images, texts = "
    "geo.shift_gap(image_embeds, text_embeds, fraction, gap); then geo.modality_gap(images, texts).",
    solution_code="""
    from clipedu import geometry as geo


    def my_experiment(image_embeds, text_embeds):
        gap = geo.gap_vector(image_embeds, text_embeds)  # measured once, before any shift
        after = {}
        for fraction in (0.0, 0.5, 1.0, 2.0):  # the one thing changed: how far the clouds move
            images, texts = geo.shift_gap(image_embeds, text_embeds, fraction, gap)  # renormalised
            after[fraction] = geo.modality_gap(images, texts)
        return after
    """,
    reference=lambda: _reference_gap_experiment,
    mistakes=[
        (lambda: lambda i, t: {0.0: 1.0, 0.5: 0.5, 1.0: 0.0}, "the checker measured"),
        (lambda: lambda i, t: {f: _gap_after(i, t, f) for f in (0.0, 1.0)}, "at least 3"),
        (lambda: lambda i, t: {f: _gap_after(i, t, f) for f in (0.5, 1.0, 2.0)}, "baseline"),
        (lambda: lambda i, t: {f: _gap_after(i, t, f, renormalise=False) for f in (0.0, 0.5, 1.0, 2.0)},
         "before renormalising"),
        (lambda: lambda i, t: {f: gap_vector(*shift_gap(i, t, f)) for f in (0.0, 0.5, 1.0)}, "one number"),
    ],
    success="a measured curve: the gap left after each shift. Renormalising pulls each point back onto the sphere, "
    "so fraction 1 does not close a wide gap completely. The next cell runs the same on the notebook's embeddings.",
    kind="experiment",
)


# --- 6. a prediction: does shifting the gap change zero-shot accuracy? -------------------------------------------
predict_shift_accuracy = prediction(
    "predict_shift_accuracy",
    "Shifting the trained model's pictures and class texts along its gap, from fraction -2 to +2: by how much will "
    "zero-shot accuracy change at most: 'less than 2 points', 'about 10 points' or 'more than 20 points'?",
    "less than 2 points",
    choices=("less than 2 points", "about 10 points", "more than 20 points"),
    why="The trained gap is short, so even twice the gap moves each embedding only a little, and an image's "
    "ranking of the class texts depends on which is nearest, which such a small common offset rarely changes.",
    hint="How long is the trained model's gap (section 3)? Moving every picture by the same vector changes all of "
    "its class scores together; only the class texts' own shift and the renormalisation can reorder them.",
)
