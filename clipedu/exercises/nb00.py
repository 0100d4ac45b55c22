"""Exercises of notebook 00: counting the data, finding the held-out pairs, how the split size changes what is
missing, the untrained model's diagonal, the loss of a guess."""

from __future__ import annotations

import math
from functools import cache

import torch
import torch.nn.functional as F

from clipedu.data import ShapesWorld
from clipedu.exercises import Exercise, as_number, compare_tensors, prediction


@cache
def _world_data(n: int, split: str, holdout: tuple | None = None):
    world = ShapesWorld(seed=7) if holdout is None else ShapesWorld(seed=7, holdout=holdout)
    return world, world.generate(n, split)


# --- 1. images per class of an attribute ------------------------------------------------------------
def _count_cases():
    _, data = _world_data(400, "train")
    no_hearts = data.subset(data.labels["shape"] != data.class_names["shape"].index("heart"))
    return [(data, "colour", "the train split"), (data, "position", "the train split"),
            (no_hearts, "shape", "a set without a single heart")]


def _check_count_images(count_images) -> str | None:
    for data, attribute, where in _count_cases():
        names = data.class_names[attribute]
        expected = torch.bincount(data.labels[attribute], minlength=len(names))  # (classes,)
        got = count_images(data, attribute)
        if isinstance(got, torch.Tensor) and got.dim() == 1 and len(got) < len(names):
            return (
                f"count_images(data, {attribute!r}) on {where} should have shape ({len(names)},), one count "
                f"per class, got {tuple(got.shape)}: a class with no images must still get a 0 "
                "(torch.bincount's minlength)."
            )
        if isinstance(got, torch.Tensor) and got.numel() == len(names) and int(got.sum()) != len(data):
            total = int(got.sum())
            if total == sum(len(c) for c in data.captions):
                return (
                    f"your counts for {attribute!r} add up to {total}, but there are {len(data)} images: "
                    "count each image once, not each caption."
                )
            return f"your counts for {attribute!r} add up to {total}, but there are {len(data)} images."
        problem = compare_tensors(f"count_images(data, {attribute!r}) on {where}", got, expected, atol=0)
        if problem:
            return problem
    return None


def _count_reference():
    return lambda data, attribute: torch.bincount(
        data.labels[attribute], minlength=len(data.class_names[attribute])
    )


count_images = Exercise(
    name="count_images",
    task="count_images(data, attribute) -> LongTensor (classes,): how many images show each class",
    checker=_check_count_images,
    hint_text="data.labels[attribute] holds one class index per image; torch.bincount counts them. "
    "How many classes there are is len(data.class_names[attribute]), even if one never occurs.",
    solution_code="""
    import torch


    def count_images(data, attribute):
        labels = data.labels[attribute]  # (N,) one class index per image
        return torch.bincount(labels, minlength=len(data.class_names[attribute]))  # (classes,)
    """,
    reference=_count_reference,
    mistakes=[
        (lambda: lambda data, attribute: torch.bincount(data.labels[attribute]), "minlength"),
        (
            lambda: lambda data, attribute: torch.bincount(
                data.labels[attribute].repeat_interleave(len(data.captions[0])),
                minlength=len(data.class_names[attribute]),
            ),
            "not each caption",
        ),
        (lambda: lambda data, attribute: data.labels[attribute].tolist(), "torch.Tensor"),
    ],
)


# --- 2. the held-out pairs ------------------------------------------------------------------------
_CUSTOM_HOLDOUT = (("red", "circle"), ("blue", "star"), ("pink", "square"))


def _as_pair_set(got) -> set:
    if isinstance(got, dict):
        raise TypeError("a dict")
    return {tuple(p) for p in got}


def _check_missing_pairs(missing_pairs) -> str | None:
    for holdout in (None, _CUSTOM_HOLDOUT):
        world, data = _world_data(3000, "train", holdout)
        expected = set(world.heldout_pairs)
        got = missing_pairs(data)
        try:
            pairs = _as_pair_set(got)
        except TypeError:
            return f"missing_pairs should return a set (or list) of (colour, shape) tuples, got {type(got).__name__}."
        if pairs == expected:
            continue
        if pairs and all(isinstance(v, int) for p in pairs for v in p):
            return "return the pairs as names, ('red', 'triangle'), not class indices."
        if {(b, a) for a, b in pairs} == expected:
            return "your pairs are (shape, colour); write them (colour, shape), e.g. ('red', 'triangle')."
        if holdout is not None and pairs == set(type(world).DEFAULT_HOLDOUT):
            return (f"this world holds out {sorted(expected)}, but you returned the default pairs: compute "
                    "them from the labels, don't copy DEFAULT_HOLDOUT.")
        present = {(data.class_names["colour"][c], data.class_names["shape"][s])
                   for c, s in zip(data.labels["colour"].tolist(), data.labels["shape"].tolist())}
        if pairs and pairs <= present:
            return (f"you returned {len(pairs)} pairs that do occur in the data; the task asks for the pairs "
                    "that never do.")
        extra, lacking = sorted(pairs - expected), sorted(expected - pairs)
        return (f"expected the {len(expected)} pairs {sorted(expected)}; you have {len(extra)} too many "
                f"{extra[:4]} and lack {lacking[:4]}.")
    return None


def _missing_pairs_reference(data):
    colours, shapes = data.class_names["colour"], data.class_names["shape"]
    seen = set(zip(data.labels["colour"].tolist(), data.labels["shape"].tolist()))
    return {(colours[c], shapes[s]) for c in range(len(colours)) for s in range(len(shapes)) if (c, s) not in seen}


missing_pairs = Exercise(
    name="missing_pairs",
    task="missing_pairs(data) -> set of (colour, shape) names that never occur together in data",
    checker=_check_missing_pairs,
    hint_text="zip(data.labels['colour'].tolist(), data.labels['shape'].tolist()) gives each image's "
    "(colour, shape) indices; put them in a set and loop over all 8 x 8 combinations.",
    solution_code="""
    def missing_pairs(data):
        colours, shapes = data.class_names["colour"], data.class_names["shape"]
        seen = set(zip(data.labels["colour"].tolist(), data.labels["shape"].tolist()))  # (colour, shape) indices
        return {(colours[c], shapes[s]) for c in range(len(colours)) for s in range(len(shapes)) if (c, s) not in seen}
    """,
    reference=lambda: _missing_pairs_reference,
    mistakes=[
        (lambda: lambda data: {(s, c) for c, s in _missing_pairs_reference(data)}, "(shape, colour)"),
        (
            lambda: lambda data: {
                (data.class_names["colour"].index(c), data.class_names["shape"].index(s))
                for c, s in _missing_pairs_reference(data)
            },
            "not class indices",
        ),
        (
            lambda: lambda data: {
                (data.class_names["colour"][c], data.class_names["shape"][s])
                for c, s in zip(data.labels["colour"].tolist(), data.labels["shape"].tolist())
            },
            "never do",
        ),
        (lambda: lambda data: set(_default_holdout()), "from the labels"),
    ],
)


def _default_holdout():
    return ShapesWorld.DEFAULT_HOLDOUT


# --- 3. an experiment: how big must a split be to show every pair? ----------------------------------
_MAX_SIZE = 3000


def experiment_setup() -> ShapesWorld:
    """The world of the experiment, the same on every call: ShapesWorld(seed=7), the default holdout."""
    return ShapesWorld(seed=7)


@cache
def _missing_count(n: int) -> int:
    data = experiment_setup().generate(n, "train")
    return 64 - len(set(zip(data.labels["colour"].tolist(), data.labels["shape"].tolist())))


def _check_pairs_experiment(fn) -> str | None:
    measured = fn(experiment_setup())
    if not isinstance(measured, dict):
        return f"return a dict {{split size: number of missing pairs}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} size(s); an experiment needs at least 3 split sizes to show a trend "
                "(e.g. 25, 100, 400 and 1000).")
    for n in measured:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _MAX_SIZE:
            return f"each key is a split size, a whole number from 1 to {_MAX_SIZE:,}; got {n!r}."
    if max(measured) < 1000:
        return ("include a large split, 1,000 pictures or more: the baseline where only the held-out pairs are "
                "missing, which the smaller splits are compared with.")
    for n, value in sorted(measured.items()):
        if isinstance(value, (set, list, tuple, frozenset)):
            return (f"for n = {n} you returned a {type(value).__name__} of pairs; the measurement is one number, "
                    "how many pairs are missing (its len).")
        got = as_number(value)
        if got is None:
            return f"the measurement for n = {n} should be one number, got {type(value).__name__}."
        expected = _missing_count(n)
        if got == expected:
            continue
        if got == 64 - expected:
            return (f"for n = {n} you counted the {int(got)} pairs that do occur; the task asks for the pairs that "
                    f"never do ({expected} on the checker's run).")
        if got == len(ShapesWorld.DEFAULT_HOLDOUT):
            return (f"for n = {n} you reported {int(got)}, the number of pairs the world holds out by design; a split "
                    f"of {n} pictures misses {expected} pairs: measure it from the labels of world.generate({n}, "
                    "'train').")
        return (f"for n = {n} the checker generated world.generate({n}, 'train') and found {expected} missing pairs, "
                f"you reported {got:g}: count the (colour, shape) pairs of the 64 that no picture shows.")
    return None


def _reference_pairs_experiment(world, sizes=(25, 100, 400, 1000)):
    return {n: _missing_count(n) for n in sizes}


pairs_experiment = Exercise(
    name="pairs_experiment",
    task="my_experiment(world) -> {split size n: how many of the 64 (colour, shape) pairs never occur in "
    "world.generate(n, 'train')}, for at least 3 sizes, one of them 1,000 or more",
    checker=_check_pairs_experiment,
    hint_text="For each n: data = world.generate(n, 'train'); the pairs seen are set(zip(data.labels['colour']"
    ".tolist(), data.labels['shape'].tolist())); 64 minus their number are missing.",
    solution_code="""
    def my_experiment(world):
        missing = {}
        for n in (25, 100, 400, 1000):  # the one thing changed: the size of the split
            data = world.generate(n, "train")
            seen = set(zip(data.labels["colour"].tolist(), data.labels["shape"].tolist()))
            missing[n] = 8 * 8 - len(seen)  # pairs of the 64 that no picture shows
        return missing
    """,
    reference=lambda: _reference_pairs_experiment,
    mistakes=[
        (lambda: lambda world: {50: 40, 200: 20, 1000: 8}, "the checker generated"),
        (lambda: lambda world: _reference_pairs_experiment(world, (100, 1000)), "at least 3"),
        (lambda: lambda world: _reference_pairs_experiment(world, (25, 100, 400)), "large split"),
        (lambda: lambda world: {n: 64 - c for n, c in _reference_pairs_experiment(world).items()}, "do occur"),
        (lambda: lambda world: {n: 8 for n in (25, 100, 1000)}, "by design"),
        (lambda: lambda world: {n: set() for n in (25, 100, 1000)}, "one number"),
    ],
    success="small splits miss many pairs by chance (44 of 64 at 25 pictures); from a few hundred pictures on only "
    "the 8 held-out pairs stay missing, so missing_pairs needs a large enough split to find exactly them.",
    kind="experiment",
)


# --- 4. a prediction: does the untrained model know which caption is whose? ------------------------------
predict_untrained_diagonal = prediction(
    "predict_untrained_diagonal",
    "In the untrained model's 8 x 8 logit matrix, the mean logit on the diagonal (each picture with its own "
    "caption) compared with off the diagonal will be: 'clearly higher', 'about the same' or 'clearly lower'?",
    "about the same",
    choices=("clearly higher", "about the same", "clearly lower"),
    why="Random weights know nothing about which caption belongs to which picture, so a picture's own caption is "
    "just one of eight captions to it: the diagonal and the other entries differ only by chance.",
    hint="What would the model need to know to give a picture's own caption a higher score?",
)


# --- 5. a derivation: the loss of a guess ----------------------------------------------------------------
def _brute_chance_loss(k: int) -> float:
    logits = torch.full((k, k), 3.7, dtype=torch.float64)  # every score equal: no preference at all
    labels = torch.arange(k)
    return ((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2).item()


def _check_chance_loss(fn) -> str | None:
    for k in (8, 64, 2, 1000):
        got = as_number(fn(k))
        if got is None:
            return f"chance_loss({k}) should return one number, got {type(fn(k)).__name__}."
        expected = _brute_chance_loss(k)
        if abs(got - expected) <= 1e-6 * max(1.0, expected):
            continue
        where = f"chance_loss({k}) = {got:.6g}, but the cross-entropy of {k} equal logits is {expected:.6g}."
        if abs(got - math.log2(k)) < 1e-9:
            return where + " That is log2: PyTorch's cross-entropy uses the natural log (nats, not bits)."
        if abs(got + math.log(k)) < 1e-9:
            return where + " Check the sign: a loss is minus the log of a probability, and a probability below 1 " \
                           "has a negative log, so the loss is positive."
        if abs(got - 1 / k) < 1e-9:
            return where + " 1/K is the probability the model gives the right answer; the loss is -ln of it."
        if k > 2 and abs(got - math.log(k - 1)) < 1e-9:
            return where + " The softmax runs over all K entries, the right one included, not only the K - 1 others."
        return where + " Every entry of the softmax of K equal numbers is the same; the loss is -ln of the right one."
    return None


chance_loss = Exercise(
    name="chance_loss",
    task="chance_loss(k) -> the contrastive loss of a batch of k pairs when every logit is the same, in closed form",
    checker=_check_chance_loss,
    hint_text="With all k logits of a row equal, the softmax gives each entry exp(c) / (k exp(c)). The cross-entropy "
    "is minus the natural log of the right entry's probability, and both directions give the same.",
    solution_code="""
    import math


    def chance_loss(k):
        return math.log(k)  # -ln(1/k): the softmax of k equal logits gives the right caption 1/k
    """,
    reference=lambda: lambda k: math.log(k),
    mistakes=[
        (lambda: lambda k: math.log2(k), "natural log"),
        (lambda: lambda k: -math.log(k), "sign"),
        (lambda: lambda k: 1 / k, "probability"),
        (lambda: lambda k: math.log(k - 1), "K entries"),
    ],
    success="a model that cannot tell the pairs apart scores ln B on a batch of B; training must push the loss "
    "below it. The next cell compares the untrained model with ln 8.",
    kind="derive",
)
