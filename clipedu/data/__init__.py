"""Data for the course: captioned images from every source behind one interface.

- :class:`CaptionedImages`: uint8 images (N, C, H, W), captions, labels, class names, templates.
- Sources: :class:`ShapesWorld` (generated, the default), :func:`cifar10`, :func:`cifar100`,
  :func:`digits`, :func:`image_caption_folder` (your own pictures, or open_clip's CSV), or
  :func:`get_dataset` by name; from other libraries :func:`from_torchvision` and
  :func:`from_hf_dataset` (Hugging Face ``datasets``).
- Feeding a model: :func:`build_tokenizer`, :class:`DeviceLoader` (the fast path), :func:`to_float`;
  a ``CaptionedImages`` is also a map-style dataset for ``torch.utils.data.DataLoader``.
"""

from clipedu.data.adapters import from_hf_dataset, from_torchvision
from clipedu.data.base import (
    CLIP_MEAN,
    CLIP_STD,
    CaptionedImages,
    check_uint8_images,
    mirror_caption,
    split_indices,
    to_float,
)
from clipedu.data.catalog import DATASET_NAMES, build_tokenizer, get_dataset, tokenizer_corpus
from clipedu.data.cifar import CIFAR_TEMPLATES, cifar10, cifar100
from clipedu.data.digits import digits
from clipedu.data.folder import ImageCaptionFolder, image_caption_folder
from clipedu.data.loader import Batch, DeviceLoader, padded_store, read_crops
from clipedu.data.shapes import ShapesWorld

__all__ = [
    "CIFAR_TEMPLATES",
    "CLIP_MEAN",
    "CLIP_STD",
    "DATASET_NAMES",
    "Batch",
    "CaptionedImages",
    "DeviceLoader",
    "ImageCaptionFolder",
    "ShapesWorld",
    "build_tokenizer",
    "check_uint8_images",
    "cifar10",
    "cifar100",
    "digits",
    "from_hf_dataset",
    "from_torchvision",
    "get_dataset",
    "image_caption_folder",
    "mirror_caption",
    "padded_store",
    "read_crops",
    "split_indices",
    "to_float",
    "tokenizer_corpus",
]
