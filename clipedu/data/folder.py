"""Your own pictures: a folder of images plus ``captions.csv`` or ``captions.jsonl``.

``captions.csv`` has a header with the columns ``image`` and ``caption``; an image may appear on
several rows, one caption each (the Flickr8k layout; its ``captions.txt`` is read the same way).
``captions.jsonl`` has one JSON object per line: ``{"image": "dog.jpg", "caption": "..."}`` or
``{"image": "dog.jpg", "captions": ["...", "..."]}``. Image paths are relative to the folder (or
absolute).

open_clip's CSV convention works as it is: a file with the columns ``filepath`` and ``title``,
separated by tabs (open_clip's default) or commas, passed as the path itself
(``image_caption_folder("train.csv")``, ``get_dataset("folder:train.csv")``). A relative image
path is looked for beside the file, then in the working directory (where open_clip looks). Other
column names are given with ``image_key`` and ``caption_key`` (open_clip's ``--csv-img-key`` and
``--csv-caption-key``), the separator with ``separator`` (``--csv-separator``); a missing column is
an error that lists the columns the file has.

Rows that cannot be used (a missing file, an unreadable image, an empty caption) are skipped,
counted, and reported in one warning; nothing is dropped silently.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipedu.data.base import CaptionedImages

CAPTION_FILES = ("captions.csv", "captions.jsonl", "captions.txt")
COLUMNS = ("image", "caption")
OPEN_CLIP_COLUMNS = ("filepath", "title")  # open_clip's --csv-img-key and --csv-caption-key defaults
# Looked for in this order when no key is given (JSON lines may also hold a list under "captions").
_IMAGE_KEYS = (COLUMNS[0], OPEN_CLIP_COLUMNS[0])
_CAPTION_KEYS = (COLUMNS[1], OPEN_CLIP_COLUMNS[1])


def image_caption_folder(
    path: str | Path,
    image_size: int = 32,
    name: str | None = None,
    image_key: str | None = None,
    caption_key: str | None = None,
    separator: str | None = None,
) -> CaptionedImages:
    """Read a folder of images and captions; each image is centre-cropped and resized to a square.

    ``path`` is the folder (with one of :data:`CAPTION_FILES`) or a captions file (``.csv``,
    ``.tsv``, ``.txt``, ``.jsonl``) whose image paths are relative to its own folder. ``image_key``
    and ``caption_key`` name the columns (default: ``image``/``caption``, else open_clip's
    ``filepath``/``title``); ``separator`` is the CSV's (default: a tab if the header has one,
    else a comma). The returned data's ``info["skipped"]`` counts the skipped rows by reason.
    """
    path = Path(path)
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    for option, value in (("image_key", image_key), ("caption_key", caption_key), ("separator", separator)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{option} must be a non-empty str, got {value!r}")
    if separator is not None and len(separator) != 1:
        raise ValueError(f"separator must be one character (',' or a tab), got {separator!r}")
    if path.is_file():
        folder, caption_file = path.parent, path
    elif path.is_dir():
        folder = path
        found = [folder / f for f in CAPTION_FILES if (folder / f).is_file()]
        if not found:
            raise ValueError(
                f"{folder} has no captions file; expected one of {', '.join(CAPTION_FILES)} (or pass the "
                "path of your captions file itself, e.g. open_clip's train.csv)"
            )
        caption_file = found[0]
    else:
        raise ValueError(f"image folder {path} does not exist (or is not a folder or a captions file)")
    skipped: Counter[str] = Counter()
    if caption_file.suffix == ".jsonl":
        rows = _read_jsonl(caption_file, skipped, image_key, caption_key)
    else:
        rows = _read_csv(caption_file, skipped, image_key, caption_key, separator)

    # Group captions by image, keeping the order in which images first appear.
    by_image: dict[str, list[str]] = {}
    for image, caption in rows:
        if not image:
            skipped["no image name"] += 1
        elif not isinstance(caption, str) or not caption.strip():
            skipped["empty caption"] += 1
        else:
            by_image.setdefault(image, []).append(caption.strip())

    pictures, captions = [], []
    for image, caps in by_image.items():
        file = folder / image
        if not file.is_file() and Path(image).is_file():
            file = Path(image)  # relative to the working directory, as open_clip reads its CSV's paths
        if not file.is_file():
            skipped["missing file"] += len(caps)
            continue
        picture = _load_image(file, image_size)
        if picture is None:
            skipped["unreadable image"] += len(caps)
            continue
        pictures.append(picture)
        captions.append(caps)

    total = sum(skipped.values())
    if total:
        reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.most_common())
        warnings.warn(f"{caption_file}: skipped {total} caption rows ({reasons})", stacklevel=2)
    if not pictures:
        raise ValueError(f"{caption_file} gave no usable image-caption pairs (skipped: {dict(skipped)})")
    images = torch.from_numpy(np.stack(pictures).transpose(0, 3, 1, 2).copy())  # (N, 3, S, S)
    return CaptionedImages(
        images=images,
        captions=captions,
        name=name or folder.name,
        info={"path": str(folder), "caption_file": caption_file.name, "skipped": dict(skipped)},
    )


ImageCaptionFolder = image_caption_folder  # the name data/README.md uses


def _read_csv(
    path: Path, skipped: Counter, image_key: str | None, caption_key: str | None, separator: str | None
) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        if separator is None:  # open_clip writes tab-separated files; most others use commas
            header = f.readline()
            f.seek(0)
            separator = "\t" if path.suffix == ".tsv" or "\t" in header else ","
        table = csv.DictReader(f, delimiter=separator)
        found = [c.strip() for c in (table.fieldnames or [])]
        image_column = _column(path, found, image_key, _IMAGE_KEYS, "image_key")
        caption_column = _column(path, found, caption_key, _CAPTION_KEYS, "caption_key")
        table.fieldnames = found  # tolerate spaces around header names
        rows = []
        for row in table:
            image, caption = row.get(image_column), row.get(caption_column)
            rows.append(((image or "").strip(), caption))
        return rows


def _column(path: Path, found: list[str], key: str | None, defaults: tuple[str, ...], option: str) -> str:
    """The column to read: ``key`` if given, else the first of ``defaults`` the file has."""
    if key is not None:
        if key not in found:
            raise ValueError(f"{path} has no column {key!r} ({option}); found columns {found}")
        return key
    for name in defaults:
        if name in found:
            return name
    raise ValueError(
        f"{path} must have the columns {list(COLUMNS)} (or open_clip's {list(OPEN_CLIP_COLUMNS)}, or name yours "
        f"with image_key= and caption_key=); found columns {found}"
    )


def _read_jsonl(path: Path, skipped: Counter, image_key: str | None, caption_key: str | None) -> list[tuple[str, str]]:
    image_keys = (image_key,) if image_key else _IMAGE_KEYS
    caption_keys = (caption_key,) if caption_key else ("captions",) + _CAPTION_KEYS
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped["unreadable line"] += 1
                continue
            caption_field = next((k for k in caption_keys if isinstance(record, dict) and k in record), None)
            if caption_field is None:
                if line_number == 1:
                    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                    wanted = f"{image_key!r} and {caption_key!r}" if image_key or caption_key else (
                        "'image' and 'caption' (or 'captions', or open_clip's 'filepath' and 'title')")
                    raise ValueError(f"{path} lines must be objects with {wanted}; line 1 has {keys}")
                skipped["no caption field"] += 1
                continue
            image = str(next((record[k] for k in image_keys if record.get(k)), "")).strip()
            captions = record[caption_field]
            for caption in captions if isinstance(captions, list) else [captions]:
                rows.append((image, caption))
    return rows


def _load_image(file: Path, image_size: int) -> np.ndarray | None:
    """The picture as (S, S, 3) uint8, centre-cropped to a square and resized; None if unreadable."""
    try:
        with Image.open(file) as picture:
            return square_picture(picture, image_size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None  # PIL raises OSError (UnidentifiedImageError) for corrupt or truncated files


def square_picture(picture, image_size: int) -> np.ndarray:
    """A PIL image as (S, S, 3) uint8 RGB: the centre square, resized (bicubic) to ``image_size``."""
    picture = picture.convert("RGB")
    width, height = picture.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    picture = picture.crop((left, top, left + side, top + side))
    picture = picture.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(picture, dtype=np.uint8)
