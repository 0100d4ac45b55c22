"""Captioned images from other libraries: torchvision datasets and Hugging Face ``datasets``.

    data = from_torchvision(torchvision.datasets.CIFAR10(root, download=True))
    data = from_hf_dataset(datasets.load_dataset("some/captions", split="test"), caption_column="caption")

Each picture becomes a uint8 (3, S, S) square, its centre resized (bicubic) as for your own folder
(:mod:`clipedu.data.folder`). Captions come from the dataset (a string or a list of strings per
image), or, for a classification dataset, from prompt templates filled with the class name; the
classes also become ``labels["class"]`` and ``class_names["class"]``, ready for zero-shot evaluation.
Images whose captions are all empty are skipped, counted, and reported in one warning.

Nothing here imports torchvision or ``datasets``: the adapters read what any such dataset gives,
``dataset[i]`` or iteration.
"""

from __future__ import annotations

import io
import itertools
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from clipedu.data.base import CaptionedImages
from clipedu.data.folder import square_picture

DEFAULT_TEMPLATES = ("a photo of a {}.",)
# Column names Hugging Face datasets use for captions, tried in this order when none is given.
CAPTION_COLUMNS = ("caption", "captions", "text", "sentences", "title")


def from_torchvision(
    dataset,
    image_size: int | None = None,
    n: int | None = None,
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    name: str | None = None,
) -> CaptionedImages:
    """A torchvision dataset's first ``n`` items (all by default) as :class:`CaptionedImages`.

    Items are ``(image, target)`` pairs, as torchvision gives them. The image is a PIL image, an
    array or a tensor ((C, H, W) uint8, or float in [0, 1] after ``ToTensor()``); the target is a
    class index (CIFAR, MNIST, ImageFolder: names from ``dataset.classes`` or ``class_names``), a
    caption, or a list of captions (CocoCaptions, Flickr). ``image_size`` defaults to the first
    picture's shorter side.
    """
    count = _count(dataset, n)
    items = (dataset[i] for i in range(count))
    rows = []
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"expected (image, target) pairs from the dataset; item {i} is {type(item).__name__}")
        rows.append(item)
    names = class_names if class_names is not None else getattr(dataset, "classes", None)
    return _build(rows, image_size, names, templates, name or type(dataset).__name__, "target")


def from_hf_dataset(
    dataset,
    image_column: str = "image",
    caption_column: str | None = None,
    label_column: str | None = None,
    image_size: int | None = None,
    n: int | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    name: str | None = None,
) -> CaptionedImages:
    """A Hugging Face ``datasets`` dataset with an image column and a text or label column.

    ``caption_column`` defaults to the first of :data:`CAPTION_COLUMNS` the dataset has; each row
    holds one caption or a list of them. Without one, ``label_column`` (default ``"label"``) gives
    classes whose names come from its ``ClassLabel`` feature, and the captions are ``templates``
    filled with them; with both, the labels are kept beside the captions. Works with streamed
    (iterable) datasets too; ``n`` takes the first ``n`` rows.
    """
    columns = getattr(dataset, "column_names", None)
    if columns is None and hasattr(dataset, "features") and hasattr(dataset, "__iter__"):
        first = next(iter(dataset), None)  # a streamed dataset may not know its columns before reading
        columns = list(first) if isinstance(first, dict) else None
    if not columns:
        raise ValueError(f"expected a Hugging Face dataset with named columns, got {type(dataset).__name__}")
    columns = list(columns)
    for option, column in (("image_column", image_column), ("caption_column", caption_column),
                           ("label_column", label_column)):
        if column is not None and column not in columns:
            raise ValueError(f"the dataset has no column {column!r} ({option}); its columns are {columns}")
    if caption_column is None:
        caption_column = next((c for c in CAPTION_COLUMNS if c in columns), None)
    if label_column is None and "label" in columns:
        label_column = "label"
    if caption_column is None and label_column is None:
        raise ValueError(
            f"the dataset needs a caption column (one of {list(CAPTION_COLUMNS)}, or caption_column=) or a "
            f"label column (label_column=); its columns are {columns}"
        )
    names = None
    if label_column is not None:
        feature = (getattr(dataset, "features", None) or {}).get(label_column)
        names = getattr(feature, "names", None)  # a ClassLabel knows its class names
    _check_n(n)
    rows = []
    for row in itertools.islice(iter(dataset), n):
        target = row[caption_column] if caption_column is not None else row[label_column]
        rows.append((row[image_column], target, row[label_column] if caption_column and label_column else None))
    title = name or getattr(getattr(dataset, "info", None), "dataset_name", None) or "hf-dataset"
    what = f"column {caption_column!r}" if caption_column else f"column {label_column!r}"
    return _build(rows, image_size, names, templates, title, what)


def _check_n(n: int | None) -> None:
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n must be a positive int (or None for all), got {n!r}")


def _count(dataset, n: int | None) -> int:
    _check_n(n)
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise ValueError(f"expected a map-style dataset (len() and [i]), got {type(dataset).__name__}")
    total = len(dataset)
    if total == 0:
        raise ValueError("the dataset is empty")
    return total if n is None else min(n, total)


def _build(rows, image_size, class_names, templates, name, what) -> CaptionedImages:
    """rows: (image, caption(s) or class index[, extra class index]) -> CaptionedImages."""
    if not rows:
        raise ValueError("the dataset is empty")
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    templates = list(templates)
    bad = [t for t in templates if not isinstance(t, str) or "{}" not in t]
    if not templates or bad:
        raise ValueError(f"templates must be strings that each contain '{{}}', got {templates!r:.200}")
    by_class = _is_class(rows[0][1])
    pictures, captions, labels, kept, skipped = [], [], [], [], 0
    for i, row in enumerate(rows):
        image, target = row[0], row[1]
        if by_class:
            if not _is_class(target):
                raise ValueError(f"the {what} holds class indices, but item {i} has {type(target).__name__}")
            labels.append(int(target))
            text = None
        else:
            text = _captions(target, i, what)
            if not text:
                skipped += 1
                continue
            if len(row) > 2 and row[2] is not None:
                labels.append(int(row[2]))
        picture = _as_pil(image, i)
        if image_size is None:
            image_size = min(picture.size)
        pictures.append(square_picture(picture, image_size))
        captions.append(text)
        kept.append(i)
    if skipped:
        warnings.warn(f"skipped {skipped} images without a non-empty caption", stacklevel=3)
    if not pictures:
        raise ValueError("no image of the dataset has a non-empty caption")
    images = torch.from_numpy(np.stack(pictures).transpose(0, 3, 1, 2).copy())  # (N, 3, S, S)
    extra = {}
    if labels:
        label_tensor = torch.tensor(labels, dtype=torch.long)
        names = [str(c) for c in class_names] if class_names is not None else [
            str(k) for k in range(int(label_tensor.max()) + 1)]
        bad = ((label_tensor < 0) | (label_tensor >= len(names))).nonzero()
        if len(bad):
            k = int(bad[0])
            raise ValueError(
                f"item {kept[k]} has class {labels[k]}, outside the {len(names)} classes {names[:10]}"
                + (" (-1 marks an unlabelled row in Hugging Face datasets)" if labels[k] == -1 else "")
            )
        if by_class:  # one shared caption list per class, as for CIFAR
            per_class = [[t.format(c) for t in templates] for c in names]
            captions = [per_class[k] for k in labels]
        extra = {"labels": {"class": label_tensor}, "class_names": {"class": names},
                 "templates": {"class": templates}}
    return CaptionedImages(images=images, captions=captions, name=name, info={"skipped": skipped}, **extra)


def _is_class(target) -> bool:
    if isinstance(target, torch.Tensor):
        return target.dim() == 0 and not target.is_floating_point()
    return isinstance(target, (int, np.integer)) and not isinstance(target, bool)


def _captions(target, i: int, what: str) -> list[str]:
    texts = [target] if isinstance(target, str) else target
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"the {what} must hold a caption or a list of captions; item {i} has {target!r:.80}")
    return [t.strip() for t in texts if t.strip()]


def _as_pil(image, i: int):
    """A PIL image from what datasets hold: PIL, (H, W[, C]) arrays, (C, H, W) tensors, {"bytes"|"path"}."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict) and (image.get("bytes") or image.get("path")):  # datasets' Image(decode=False)
        return Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"])
    if isinstance(image, torch.Tensor):
        if image.dim() == 3:
            image = image.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        if image.is_floating_point():
            low, high = float(image.min()), float(image.max())
            if low < 0 or high > 1:
                raise ValueError(
                    f"item {i}'s image has values in [{low:.2f}, {high:.2f}]: expected uint8, or floats in [0, 1] "
                    "(build the dataset without Normalize; clipedu normalises when it feeds the model)"
                )
            image = (image * 255).round()
        image = image.to(torch.uint8).numpy()
    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        return Image.fromarray(image.astype(np.uint8))
    raise ValueError(f"item {i}'s image is a {type(image).__name__}; expected a PIL image, an array or a tensor")
