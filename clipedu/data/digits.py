"""scikit-learn's handwritten digits: 1,797 real 8x8 scans that ship with scikit-learn.

A small real dataset that works offline. The grey 0..16 scans are scaled up smoothly to the
model's image size and copied into three channels, and each picture gets a few captions that
name the digit as a numeral and as a word.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipedu.data.base import CaptionedImages, split_indices

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# "{n}" is the numeral, "{w}" the word: both forms appear so the text side learns they agree.
_CAPTION_FORMS = [
    "a handwritten digit {n}",
    "the number {w}",
    "a handwritten {w}",
    "the digit {n}, written by hand",
    "a photo of the number {n}",
    "a scan of a handwritten {w}",
]
DIGIT_TEMPLATES = ["a handwritten {}", "the number {}", "a scan of a handwritten {}"]


def digits(
    image_size: int = 32, split: str = "train", seed: int = 0, test_fraction: float = 0.2
) -> CaptionedImages:
    """The digits as RGB uint8 images with captions; label ``"class"`` (0..9, names "zero"...).

    ``split`` is "train", "test" (a seeded ``test_fraction`` of the images) or "all".
    """
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes seconds to load

    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int of at least 8, got {image_size!r}")
    bunch = load_digits()
    pixels = torch.as_tensor(bunch.images, dtype=torch.float32)  # (N, 8, 8), ink 0..16
    grey = F.interpolate(pixels.unsqueeze(1), size=(image_size, image_size), mode="bilinear",
                         align_corners=False)  # (N, 1, S, S)
    grey = (grey * (255.0 / 16.0)).round_().clamp_(0, 255).to(torch.uint8)
    images = grey.expand(-1, 3, -1, -1).contiguous()  # (N, 3, S, S): the models take RGB
    labels = torch.as_tensor(bunch.target, dtype=torch.long)

    per_class = [[form.format(n=d, w=DIGIT_NAMES[d]) for form in _CAPTION_FORMS] for d in range(10)]
    data = CaptionedImages(
        images=images,
        captions=[per_class[d] for d in labels.tolist()],
        labels={"class": labels},
        class_names={"class": list(DIGIT_NAMES)},
        templates={"class": list(DIGIT_TEMPLATES)},
        name=f"digits-{split}",
        flippable=False,  # a mirrored 3 is not a 3
        info={"split": split, "seed": seed},
    )
    return data.subset(split_indices(len(data), split, test_fraction, seed))
