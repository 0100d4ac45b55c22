"""Datasets by name (for the command line and configs) and a tokenizer built from the data."""

from __future__ import annotations

from collections.abc import Sequence

from clipedu.data.base import CaptionedImages, mirror_caption, split_indices
from clipedu.data.cifar import cifar10, cifar100
from clipedu.data.digits import digits
from clipedu.data.folder import image_caption_folder
from clipedu.data.shapes import ShapesWorld
from clipedu.tokenizer import WordTokenizer, split_words

DATASET_NAMES = ("shapes", "shapes2", "cifar10", "cifar100", "digits", "folder:<path>")
_DEFAULT_SIZES = {"train": 20_000, "test": 2_000, "heldout": 2_000}


def get_dataset(name: str, split: str = "train", **options) -> CaptionedImages:
    """A dataset by name: "shapes", "shapes2" (two objects), "cifar10", "cifar100", "digits",
    or "folder:<path>".

    ``split`` is "train" or "test" (ShapesWorld also has "heldout"; digits and folders also
    "all"). ``options`` go to the source: ShapesWorld takes ``n``, ``image_size``, ``seed``,
    ``holdout``, ``captions_per_image``; CIFAR ``root`` and ``download``; digits and folders
    ``image_size`` (and ``seed``, ``test_fraction`` for their split); folders also ``image_key``,
    ``caption_key`` and ``separator`` for the columns of their captions file (open_clip's
    ``filepath``/``title`` CSV is recognised by itself). An option a source does not take, or of
    the wrong type, is a ValueError.
    """
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a str; valid names are {', '.join(DATASET_NAMES)}")
    _check_options(name, options)
    if name in ("shapes", "shapes2"):
        n = options.pop("n", _DEFAULT_SIZES.get(split, 2_000))
        world = ShapesWorld(num_objects=2 if name == "shapes2" else 1, **options)
        return world.generate(n, split)
    if name in ("cifar10", "cifar100"):
        if split not in ("train", "test"):
            raise ValueError(f"{name} has the splits 'train' and 'test', got {split!r}")
        return (cifar10 if name == "cifar10" else cifar100)(train=split == "train", **options)
    if name == "digits":
        return digits(split=split, **options)
    if name.startswith("folder:"):
        if not name[len("folder:"):].strip():
            raise ValueError("'folder:' needs a path after it: 'folder:/path/to/pictures' (or to its captions file)")

        seed, test_fraction = options.pop("seed", 0), options.pop("test_fraction", 0.1)
        data = image_caption_folder(name[len("folder:"):], **options)
        return data.subset(split_indices(len(data), split, test_fraction, seed))
    raise ValueError(f"unknown dataset {name!r}; valid names are {', '.join(DATASET_NAMES)}")


# The options each source takes, with the type each must have (checked before the source runs, so a
# misspelt or mistyped option is one clear line, not a TypeError from deep inside).
_INT, _NUMBER, _BOOL, _TEXT = (int,), (int, float), (bool,), (str, type(None))
_SHAPES_OPTIONS = {"n": _INT, "image_size": _INT, "seed": _INT, "holdout": None, "captions_per_image": _INT,
                   "noise": _NUMBER, "colour_jitter": _NUMBER}
_OPTIONS = {
    "shapes": _SHAPES_OPTIONS,
    "shapes2": _SHAPES_OPTIONS,
    "cifar10": {"root": None, "download": _BOOL},
    "cifar100": {"root": None, "download": _BOOL},
    "digits": {"image_size": _INT, "seed": _INT, "test_fraction": _NUMBER},
    "folder:": {"image_size": _INT, "name": _TEXT, "seed": _INT, "test_fraction": _NUMBER,
                "image_key": _TEXT, "caption_key": _TEXT, "separator": _TEXT},
}


def _check_options(name: str, options: dict) -> None:
    allowed = _OPTIONS.get("folder:" if name.startswith("folder:") else name)
    if allowed is None:
        return  # an unknown name: get_dataset says so
    for key, value in options.items():
        if key not in allowed:
            raise ValueError(f"unknown option {key!r} for dataset {name!r}; it takes {', '.join(allowed)}")
        types = allowed[key]
        if types is not None and (not isinstance(value, types) or (types != _BOOL and isinstance(value, bool))):
            expected = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"option {key!r} of dataset {name!r} must be {expected}, got {value!r}")


def tokenizer_corpus(datasets: CaptionedImages | Sequence[CaptionedImages]) -> list[str]:
    """Every text a model trained on ``datasets`` will read: the captions, their mirrored
    versions (flip augmentation), the hard negatives, and every prompt template filled with every
    class name (so zero-shot prompts never hit an unknown word)."""
    if isinstance(datasets, CaptionedImages):
        datasets = [datasets]
    corpus: list[str] = []
    for data in datasets:
        texts = set(data.all_captions())
        if data.hard_negatives is not None:
            texts.update(c for caps in data.hard_negatives for c in caps)
        corpus += sorted(texts | {mirror_caption(t) for t in texts})
        for attribute in data.class_names:
            corpus += [p for prompts in data.prompts(attribute) for p in prompts]
    return corpus


def build_tokenizer(
    datasets: CaptionedImages | Sequence[CaptionedImages], context_length: int = 24, min_count: int = 1
) -> WordTokenizer:
    """A :class:`~clipedu.tokenizer.WordTokenizer` whose vocabulary comes from the training data.

    Pass the training set only (words seen only in test captions then become ``<unk>``, as they
    would for a deployed model). Raises a ValueError when a caption would not fit in
    ``context_length`` tokens. Save ``tokenizer.to_dict()`` with the checkpoint.
    """
    corpus = tokenizer_corpus(datasets)
    longest = max(corpus, key=lambda text: len(split_words(text)))
    needed = len(split_words(longest)) + 2  # plus <sot> and <eot>
    if needed > context_length:
        raise ValueError(
            f"the longest caption needs {needed} tokens with <sot> and <eot>, more than "
            f"context_length={context_length}: {longest!r:.100}; raise the context length"
        )
    return WordTokenizer.build(corpus, context_length=context_length, min_count=min_count)
