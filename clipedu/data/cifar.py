"""CIFAR-10 and CIFAR-100 with captions made from the CLIP paper's CIFAR prompt templates.

The files are read in the format torchvision downloads (Python pickles: ``b"data"`` a uint8
(N, 3072) array of 32x32 RGB pictures, channel by channel, and ``b"labels"`` or
``b"fine_labels"``), by our own small reader so that tests can write tiny files in the same
format. torchvision is used only to download them when they are missing.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from clipedu.data.base import CaptionedImages
from clipedu.runtime import data_dir

# The 18 prompt templates the CLIP paper used for CIFAR-10 and CIFAR-100.
CIFAR_TEMPLATES = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
]

# Where each dataset lives under the root, its files, and the pickle keys that hold its labels.
_LAYOUT = {
    "cifar10": {
        "title": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels": {"class": (b"labels", b"label_names")},
    },
    "cifar100": {
        "title": "CIFAR-100",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels": {"class": (b"fine_labels", b"fine_label_names"),
                   "superclass": (b"coarse_labels", b"coarse_label_names")},
    },
}


def cifar10(train: bool = True, root: str | Path | None = None, download: bool = True) -> CaptionedImages:
    """CIFAR-10 (50,000 train or 10,000 test photos, 10 classes) with templated captions."""
    return _load("cifar10", train, root, download)


def cifar100(train: bool = True, root: str | Path | None = None, download: bool = True) -> CaptionedImages:
    """CIFAR-100 (100 classes; labels ``class`` and, from the files, ``superclass``)."""
    return _load("cifar100", train, root, download)


def _load(kind: str, train: bool, root, download: bool) -> CaptionedImages:
    layout = _LAYOUT[kind]
    if root is None:
        root = data_dir()
    folder = Path(root) / layout["folder"]
    files = [folder / f for f in layout["train" if train else "test"]] + [folder / layout["meta"]]
    missing = [f for f in files if not f.is_file()]
    if missing:
        if not download:
            raise FileNotFoundError(_missing_message(layout, folder, missing, "download=False"))
        try:
            _download(kind, Path(root))
        except Exception as err:  # no network, a proxy, a full disk: all end the same way for a student
            raise RuntimeError(
                f"Downloading {layout['title']} failed ({type(err).__name__}: {err}). "
                + _missing_message(layout, folder, missing, "no download")
            ) from err
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(_missing_message(layout, folder, missing, "after downloading"))

    meta = _read_pickle(files[-1])
    parts = [_read_pickle(f) for f in files[:-1]]
    images = torch.cat([_images(p, f) for p, f in zip(parts, files)])  # (N, 3, 32, 32) uint8
    labels, class_names = {}, {}
    for attribute, (label_key, names_key) in layout["labels"].items():
        if names_key not in meta or not all(label_key in p for p in parts):
            if attribute == "class":
                raise ValueError(f"{files[0]} has no {label_key!r} entry; is it a {layout['title']} file?")
            continue
        names = [_decode(n).replace("_", " ") for n in meta[names_key]]  # "aquarium_fish" -> "aquarium fish"
        values = torch.cat([torch.as_tensor(np.asarray(p[label_key]), dtype=torch.long) for p in parts])
        if values.numel() != len(images):
            raise ValueError(f"{layout['title']}: {len(images)} images but {values.numel()} {label_key!r}")
        if values.numel() and not (0 <= int(values.min()) and int(values.max()) < len(names)):
            raise ValueError(f"{layout['title']}: a label in {label_key!r} is outside the {len(names)} classes")
        labels[attribute], class_names[attribute] = values, names

    # Every picture of a class shares one caption list: 50,000 x 18 strings would be 900,000 objects.
    per_class = [[t.format(name) for t in CIFAR_TEMPLATES] for name in class_names["class"]]
    captions = [per_class[i] for i in labels["class"].tolist()]
    templates = {attribute: list(CIFAR_TEMPLATES) for attribute in labels}
    return CaptionedImages(
        images=images,
        captions=captions,
        labels=labels,
        class_names=class_names,
        templates=templates,
        name=f"{kind}-{'train' if train else 'test'}",
        info={"root": str(root), "split": "train" if train else "test"},
    )


def _download(kind: str, root: Path) -> None:
    """Fetch the dataset with torchvision (which checks the archive's md5) into ``root``."""
    from torchvision import datasets  # imported here: torchvision takes seconds to load, for a download only

    root.mkdir(parents=True, exist_ok=True)
    maker = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    maker(str(root), train=True, download=True)


def _missing_message(layout: dict, folder: Path, missing: list[Path], why: str) -> str:
    names = ", ".join(f.name for f in missing)
    return (
        f"{layout['title']} files are missing from {folder} ({why}): {names}. "
        f"Connect to the internet and call again with download=True, or put the "
        f"'{layout['folder']}' folder from the official Python-version archive into {folder.parent}. "
        "Without a network, clipedu.data.ShapesWorld and clipedu.data.digits work offline."
    )


def _read_pickle(path: Path) -> dict:
    # These are pickles from the official archive, as torchvision reads them; only open trusted files.
    try:
        with open(path, "rb") as f:
            content = pickle.load(f, encoding="bytes")
    except Exception as err:
        raise ValueError(f"cannot read {path} as a CIFAR batch file: {type(err).__name__}: {err}") from err
    if not isinstance(content, dict):
        raise ValueError(f"{path} should hold a dict, got {type(content).__name__}")
    # Keys are bytes in the official files; accept str keys too (files written by Python 3 tools).
    return {k.encode() if isinstance(k, str) else k: v for k, v in content.items()}


def _images(part: dict, path: Path) -> torch.Tensor:
    if b"data" not in part:
        raise ValueError(f"{path} has no b'data' entry; keys are {sorted(part)}")
    data = np.asarray(part[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected data of shape (N, 3072), got {data.shape}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # rows are R plane, G plane, B plane


def _decode(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)
