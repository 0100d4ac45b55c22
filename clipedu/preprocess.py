"""OpenAI's image preprocessing: any photo -> the (3, 224, 224) tensor CLIP was trained on (notebook 12).

A released CLIP only gives sensible answers for images prepared exactly as in training::

    photo (H, W), any size and mode
      -> resize_shorter_side   shorter side 224, bicubic, aspect ratio kept   (224, 335) for 427 x 640
      -> center_crop           the middle 224 x 224                          (224, 224)
      -> convert("RGB")        grey or RGBA photos get three channels
      -> to_tensor             (3, 224, 224) float in [0, 1]
      -> normalize             (x - mean) / std with OpenAI's per-channel statistics

The order and the rounding follow OpenAI's ``clip.load`` (torchvision's ``Resize``, ``CenterCrop``,
``ToTensor``, ``Normalize``) step for step, so :class:`Preprocess` gives the same tensor as
open_clip's validation transform, bit for bit (``tests/test_pretrained_loading.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from clipedu.data.base import CLIP_MEAN, CLIP_STD

__all__ = ["Preprocess", "center_crop", "normalize", "preprocess_batch", "resize_shorter_side", "to_pil",
           "to_tensor"]


def to_pil(image) -> Image.Image:
    """A PIL image from a PIL image, a NumPy array (H, W, C) or (H, W), or a uint8 tensor (C, H, W)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3:
            raise ValueError(
                f"a tensor image must be uint8 of shape (C, H, W), got {image.dtype} {tuple(image.shape)}"
            )
        image = image.permute(1, 2, 0).cpu().numpy()  # (H, W, C)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"an array image must be uint8 in [0, 255], got {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]  # one channel: a grey picture
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"an array image must be (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
        return Image.fromarray(image)
    raise ValueError(f"expected a PIL image, a uint8 array or a uint8 tensor, got {type(image).__name__}")


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is ``size`` pixels, keeping the aspect ratio (bicubic).

    The longer side is rounded down, as torchvision does: 427 x 640 -> 224 x int(224 * 640 / 427) = 224 x 335.
    """
    w, h = image.size  # PIL gives (width, height)
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The middle ``size`` x ``size`` square. Offsets are rounded, not floored: (335 - 224) / 2 = 55.5 -> 56."""
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"cannot crop {size} x {size} out of a {w} x {h} image; resize it first")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(C, H, W) float32 in [0, 1] from an 8-bit PIL image."""
    array = np.array(image, dtype=np.uint8, copy=True)  # (H, W, C) or (H, W)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255)  # (C, H, W)


def normalize(x: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """``(x - mean) / std`` per channel for (C, H, W) or (B, C, H, W) floats in [0, 1]."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)  # (C, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean_t) / std_t


class Preprocess:
    """OpenAI's evaluation preprocessing as one callable: ``Preprocess()(photo)`` -> (3, 224, 224).

    ``crop(photo)`` stops before the tensor steps and returns the PIL image the model looks at
    (handy for drawing attention maps over it).
    """

    def __init__(self, image_size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        if not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)

    def crop(self, image) -> Image.Image:
        image = center_crop(resize_shorter_side(to_pil(image), self.image_size), self.image_size)
        # OpenAI converts after cropping (fewer pixels to convert); the result is the same for RGB.
        return image.convert("RGB")

    def __call__(self, image) -> torch.Tensor:
        return normalize(to_tensor(self.crop(image)), self.mean, self.std)  # (3, S, S)

    def __repr__(self) -> str:
        return f"Preprocess(image_size={self.image_size}, bicubic resize + centre crop, OpenAI mean/std)"


def preprocess_batch(images, image_size: int = 224) -> torch.Tensor:
    """(B, 3, S, S) floats from a list of photos (PIL, arrays) or a uint8 tensor (B, C, H, W).

    Small pictures are scaled up the same way: a 32 x 32 CIFAR photo becomes 224 x 224 by bicubic
    interpolation, as in the CLIP paper's evaluation.
    """
    if isinstance(images, torch.Tensor) and images.dim() != 4:
        raise ValueError(f"expected a batch of images (B, C, H, W), got shape {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError("expected at least one image, got none")
    preprocess = Preprocess(image_size)
    return torch.stack([preprocess(image) for image in images])
