"""Your own pictures: a folder of images plus ``captions.csv`` or ``captions.jsonl``.

``captions.csv`` has a header with the columns ``image`` and ``caption``; an image may appear on
several rows, one caption each (the Flickr8k layout; its ``captions.txt`` is read the same way).
``captions.jsonl`` has one JSON object per line: ``{"image": "dog.jpg", "caption": "..."}`` or
``{"image": "dog.jpg", "captions": ["...", "..."]}``. Image paths are relative to the folder.

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

from clipedu.data.base import CaptionedImages

CAPTION_FILES = ("captions.csv", "captions.jsonl", "captions.txt")
COLUMNS = ("image", "caption")


def image_caption_folder(path: str | Path, image_size: int = 32, name: str | None = None) -> CaptionedImages:
    """Read a folder of images and captions; each image is centre-cropped and resized to a square.

    The returned data's ``info["skipped"]`` counts the skipped rows by reason.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist (or is not a folder)")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    found = [folder / f for f in CAPTION_FILES if (folder / f).is_file()]
    if not found:
        raise ValueError(f"{folder} has no captions file; expected one of {', '.join(CAPTION_FILES)}")
    caption_file = found[0]
    skipped: Counter[str] = Counter()
    reader = _read_jsonl if caption_file.suffix == ".jsonl" else _read_csv
    rows = reader(caption_file, skipped)

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


def _read_csv(path: Path, skipped: Counter) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        table = csv.DictReader(f)
        found = [c.strip() for c in (table.fieldnames or [])]
        if not set(COLUMNS) <= set(found):
            raise ValueError(f"{path} must have the columns {list(COLUMNS)}; found columns {found}")
        table.fieldnames = found  # tolerate spaces around header names
        rows = []
        for row in table:
            image, caption = row.get("image"), row.get("caption")
            rows.append(((image or "").strip(), caption))
        return rows


def _read_jsonl(path: Path, skipped: Counter) -> list[tuple[str, str]]:
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
            if not isinstance(record, dict) or not ({"caption", "captions"} & set(record)):
                if line_number == 1:
                    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                    raise ValueError(
                        f"{path} lines must be objects with 'image' and 'caption' (or 'captions'); "
                        f"line 1 has {keys}"
                    )
                skipped["no caption field"] += 1
                continue
            image = str(record.get("image") or "").strip()
            captions = record.get("captions", record.get("caption"))
            for caption in captions if isinstance(captions, list) else [captions]:
                rows.append((image, caption))
    return rows


def _load_image(file: Path, image_size: int) -> np.ndarray | None:
    """The picture as (S, S, 3) uint8, centre-cropped to a square and resized; None if unreadable."""
    from PIL import Image

    try:
        with Image.open(file) as picture:
            picture = picture.convert("RGB")
            width, height = picture.size
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            picture = picture.crop((left, top, left + side, top + side))
            picture = picture.resize((image_size, image_size), Image.Resampling.BICUBIC)
            return np.asarray(picture, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None  # PIL raises OSError (UnidentifiedImageError) for corrupt or truncated files
