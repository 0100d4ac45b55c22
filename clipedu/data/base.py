"""The one dataset interface: uint8 images with captions, labels and class names.

Every source in :mod:`clipedu.data` (ShapesWorld, CIFAR, digits, your own folder) returns a
:class:`CaptionedImages`, so the loader, the training loop and the evaluation code never need to
know where the pictures came from.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

# Mean and std that OpenAI's released CLIP models were trained with (notebook 12 uses them).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def mirror_caption(caption: str) -> str:
    """The caption of the horizontally flipped image: "left" and "right" swap places.

    >>> mirror_caption("a red circle to the left of a blue square, top-right")
    'a red circle to the right of a blue square, top-left'
    """

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, caption)


def to_float(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor = (0.5, 0.5, 0.5),
    std: Sequence[float] | torch.Tensor = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """uint8 images in [0, 255] to normalised float32: ``(x / 255 - mean) / std`` per channel.

    The loader and the evaluation code both use this, so a model always sees the same numbers.
    Takes (B, C, H, W) or one (C, H, W) image; ``mean`` and ``std`` have one value per channel
    (or a single value for all).
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"to_float expects a uint8 tensor of images, got {got}")
    if images.dim() not in (3, 4):
        raise ValueError(f"expected images (B, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
    scale, shift = normalisation(mean, std, images.shape[-3], images.device)
    return apply_normalisation(images, scale, shift)


def check_uint8_images(images, name: str = "images") -> None:
    """Raise a ValueError unless ``images`` is a uint8 batch (B, C, H, W), the way data holds pictures."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected {name} as uint8 (B, C, H, W), got {got}")


def normalisation(mean, std, channels: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (C, 1, 1), such that ``x * scale - shift == (x / 255 - mean) / std``."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device="cpu").flatten()
    std = torch.as_tensor(std, dtype=torch.float32, device="cpu").flatten()
    for name, value in (("mean", mean), ("std", std)):
        if value.numel() not in (1, channels):
            raise ValueError(f"{name} needs 1 or {channels} values (one per channel), got {value.numel()}")
    if (std <= 0).any():
        raise ValueError(f"std must be positive, got {std.tolist()}")
    scale = (1.0 / (255.0 * std)).expand(channels).reshape(channels, 1, 1)
    shift = (mean / std).expand(channels).reshape(channels, 1, 1)
    return scale.to(device), shift.to(device)


def apply_normalisation(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    # One multiply and one subtract on the float copy: two passes over the batch instead of four.
    return images.float().mul_(scale).sub_(shift)  # (B, C, H, W) float32


def split_indices(n: int, split: str, test_fraction: float = 0.2, seed: int = 0) -> torch.Tensor:
    """Indices of a deterministic train/test split of ``n`` items (``split="all"`` keeps all)."""
    if split == "all":
        return torch.arange(n)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(n * test_fraction)) if n > 1 else 0
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return chosen.sort().values  # keep the source order inside each split


@dataclass(repr=False)
class CaptionedImages:
    """Images with one or several captions each, plus labels where the source has them.

    - ``images``: uint8 (N, C, H, W), values 0..255.
    - ``captions``: N lists of strings; the loader samples one per image each time it is seen.
    - ``labels``: attribute name -> LongTensor (N,) of class indices (``"class"`` for CIFAR and
      digits; ``"shape"``, ``"colour"``, ``"size"``, ``"position"`` ... for ShapesWorld).
    - ``class_names``: attribute name -> the names of its classes, index-aligned with the labels.
    - ``templates``: attribute name -> prompt templates with ``{}`` for a class name
      (zero-shot classification fills them in).
    - ``hard_negatives``: None, or N lists aligned with ``captions``: ``hard_negatives[i][j]`` is a
      caption that is *wrong* for image i and differs from ``captions[i][j]`` in one detail.
    - ``flippable``: False when a mirrored image means something else (handwritten digits).
    - ``info``: anything else worth keeping (seed, split, skipped rows, held-out pairs).
    """

    images: torch.Tensor
    captions: list[list[str]]
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    class_names: dict[str, list[str]] = field(default_factory=dict)
    templates: dict[str, list[str]] = field(default_factory=dict)
    name: str = "images"
    hard_negatives: list[list[str]] | None = None
    flippable: bool = True
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        images = self.images
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (0..255), got {images.dtype}")
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        n = images.shape[0]
        _check_caption_lists("captions", self.captions, n)
        if self.hard_negatives is not None:
            _check_caption_lists("hard_negatives", self.hard_negatives, n)
            for i, (caps, negs) in enumerate(zip(self.captions, self.hard_negatives)):
                if len(caps) != len(negs):
                    raise ValueError(
                        f"image {i} has {len(caps)} captions but {len(negs)} hard negatives; "
                        "expected one hard negative per caption"
                    )
        for key, value in self.labels.items():
            if not isinstance(value, torch.Tensor) or value.dtype != torch.long or value.shape != (n,):
                got = (value.dtype, tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(f"labels[{key!r}] must be a LongTensor of shape ({n},), got {got}")
            names = self.class_names.get(key)
            if names is not None and n and not (0 <= int(value.min()) and int(value.max()) < len(names)):
                raise ValueError(
                    f"labels[{key!r}] must lie in [0, {len(names)}) to match class_names, got "
                    f"[{int(value.min())}, {int(value.max())}]"
                )
        for key, templates in self.templates.items():
            bad = [t for t in templates if "{}" not in t]
            if bad:
                raise ValueError(f"templates[{key!r}] must each contain '{{}}', got {bad[:3]}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, dict[str, torch.Tensor]]:
        """Image ``index`` as a PyTorch map-style dataset gives it: (uint8 image (C, H, W), its first
        caption, {attribute: label}).

        So ``torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)`` works, and yields uint8
        images (B, C, H, W), a list of B captions and {attribute: (B,) labels}: convert the images with
        :func:`to_float`, tokenise the captions. :class:`~clipedu.data.DeviceLoader` stays the fast
        path (all on the device, a random caption of several each time, flips with mirrored captions).
        """
        if isinstance(index, (slice, list, tuple)) or (isinstance(index, torch.Tensor) and index.dim() > 0):
            raise ValueError(
                f"index one image with an int, got {type(index).__name__}; for several use data.subset(...)"
            )
        try:
            i = operator.index(index)  # int, numpy integer, 0-dim integer tensor
        except TypeError:
            raise ValueError(f"index one image with an int, got {type(index).__name__} {index!r:.40}") from None
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {n} images")
        i %= n
        return self.images[i], self.captions[i][0], {k: v[i] for k, v in self.labels.items()}

    @property
    def image_size(self) -> int:
        """Height of the images (they are square in every source here)."""
        return self.images.shape[-2]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        per_image = sorted({len(c) for c in self.captions})
        caps = f"{per_image[0]}" if len(per_image) == 1 else f"{per_image[0]}-{per_image[-1]}"
        labels = ", ".join(f"{k}: {len(self.class_names.get(k, []))}" for k in self.labels) or "none"
        return (
            f"CaptionedImages({self.name!r}, {n} images {c}x{h}x{w} uint8, {caps} captions each, "
            f"labels ({labels}), hard negatives: {'yes' if self.hard_negatives else 'no'})"
        )

    def subset(self, index) -> CaptionedImages:
        """The images at ``index`` (a list, a LongTensor of indices or a bool mask)."""
        n = len(self)
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            if idx.shape != (n,):
                raise ValueError(f"a boolean mask must have shape ({n},), got {tuple(idx.shape)}")
            idx = idx.nonzero().flatten()
        if idx.numel() == 0:
            idx = idx.long()  # an empty list comes in as float
        if idx.dtype != torch.long or idx.dim() != 1:
            raise ValueError(f"index must be 1-D integer indices or a bool mask, got {idx.dtype} {tuple(idx.shape)}")
        if idx.numel() and not (-n <= int(idx.min()) and int(idx.max()) < n):
            raise IndexError(f"index out of range for {n} images: [{int(idx.min())}, {int(idx.max())}]")
        rows = idx.tolist()
        return CaptionedImages(
            images=self.images[idx.to(self.images.device)],
            captions=[self.captions[i] for i in rows],
            labels={k: v[idx.to(v.device)] for k, v in self.labels.items()},
            class_names=dict(self.class_names),
            templates=dict(self.templates),
            name=self.name,
            hard_negatives=None if self.hard_negatives is None else [self.hard_negatives[i] for i in rows],
            flippable=self.flippable,
            info=dict(self.info),
        )

    def sample(self, n: int, seed: int = 0) -> CaptionedImages:
        """At most ``n`` of the images, a fixed random choice for ``seed`` (all of them, as they are,
        when there are no more than ``n``): a smaller test split that is the same on every call."""
        if len(self) <= n:
            return self
        return self.subset(torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n])

    def all_captions(self) -> list[str]:
        """Every caption as one flat list (to build a tokenizer vocabulary)."""
        return [c for caps in self.captions for c in caps]

    def prompts(self, attribute: str) -> list[list[str]]:
        """For each class of ``attribute``, its name filled into every prompt template."""
        if attribute not in self.class_names:
            raise ValueError(f"no class names for {attribute!r}; this data has {sorted(self.class_names)}")
        templates = self.templates.get(attribute) or ["{}"]
        return [[t.format(name) for t in templates] for name in self.class_names[attribute]]


def _check_caption_lists(what: str, captions, n: int) -> None:
    if not isinstance(captions, list) or len(captions) != n:
        got = len(captions) if isinstance(captions, list) else type(captions).__name__
        raise ValueError(f"{what} must be a list with one list of strings per image ({n}), got {got}")
    seen: set[int] = set()  # CIFAR shares one list per class: check each list once
    for i, caps in enumerate(captions):
        if id(caps) in seen:
            continue
        seen.add(id(caps))
        if not isinstance(caps, (list, tuple)) or not caps:
            raise ValueError(f"{what}[{i}] must be a non-empty list of strings, got {caps!r:.80}")
        for c in caps:
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"{what}[{i}] holds an empty or non-text caption: {c!r:.80}")
