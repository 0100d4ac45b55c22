"""Exercises of notebook 00: counting the data, finding the held-out pairs."""

from __future__ import annotations

from functools import cache

import torch

from clipedu.data import ShapesWorld
from clipedu.exercises import Exercise, compare_tensors


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
