"""Feeding the model from memory on the training device, without DataLoader workers.

Small datasets (ShapesWorld, CIFAR, digits) fit on the GPU as uint8 many times over. So instead
of decoding, augmenting and copying one picture at a time in worker processes, the loader keeps
all images on the device, tokenises every caption once up front, and makes each batch with a few
indexing operations on the whole batch: pick images, pick one caption each, crop, flip, convert
to float. On a GPU that is a handful of kernel launches per batch.

Flipping a picture left to right changes what "left" and "right" mean, so a flipped picture gets
its caption with the two words swapped (pre-tokenised too). Every random choice of an epoch is
drawn from a generator seeded by (seed, epoch), so the order is the same on any device, and a
run can stop and resume exactly: save :meth:`DeviceLoader.state_dict` with the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from clipedu.data.base import CaptionedImages, mirror_caption, to_float


class Batch(NamedTuple):
    images: torch.Tensor  # (B, C, H, W) float32, normalised
    tokens: torch.Tensor  # (B, L) long: one caption per image
    index: torch.Tensor  # (B,) long: which images of the dataset these are
    flipped: torch.Tensor  # (B,) bool: mirrored left to right (the caption was mirrored too)
    hard_negative_tokens: torch.Tensor | None = None  # (B, L): the swapped caption, when the data has one


class DeviceLoader:
    """Shuffled, augmented batches of (images, tokens) made on ``device``.

    ``tokenizer`` is any callable mapping a list of n strings to an (n, L) LongTensor.
    ``augment=True`` turns on a random crop after zero padding by ``crop_padding`` pixels
    (default: ``data.info["crop_padding"]`` when the data suggests one, else image size / 8)
    and, when ``flip`` is on (default: ``data.flippable``), a horizontal flip of half the
    images with "left" and "right" swapped in their captions. Images with several captions get
    one chosen at random each time they are drawn (``first_caption=True`` always takes the
    first, for evaluation).

    A ``for`` loop runs the rest of the current epoch; the next loop starts the next epoch.
    """

    def __init__(
        self,
        data: CaptionedImages,
        tokenizer: Callable[[list[str]], torch.Tensor],
        batch_size: int,
        device: str | torch.device = "cpu",
        shuffle: bool = True,
        drop_last: bool = True,
        augment: bool = False,
        crop_padding: int | None = None,
        flip: bool | None = None,
        seed: int = 0,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        expected_image_size: int | None = None,
        first_caption: bool = False,
    ):
        if not isinstance(data, CaptionedImages):
            raise ValueError(f"data must be a CaptionedImages, got {type(data).__name__}")
        n = len(data)
        if n == 0:
            raise ValueError("the dataset is empty: there is nothing to load")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if drop_last and batch_size > n:
            raise ValueError(
                f"batch_size ({batch_size}) is larger than the dataset ({n} images), so with "
                "drop_last=True there would be no batch at all; use a smaller batch or drop_last=False"
            )
        height, width = data.images.shape[-2:]
        if expected_image_size is not None and (height, width) != (expected_image_size, expected_image_size):
            raise ValueError(
                f"the model takes {expected_image_size}x{expected_image_size} images but the data "
                f"{data.name!r} has {height}x{width}; make the data with image_size={expected_image_size}"
            )
        if crop_padding is not None and (not isinstance(crop_padding, int) or crop_padding < 0):
            raise ValueError(f"crop_padding must be a non-negative int, got {crop_padding!r}")

        self.data = data
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        if crop_padding is None:  # the data may suggest a smaller shift (ShapesWorld: positions matter)
            crop_padding = data.info.get("crop_padding", height // 8)
        self.crop_padding = crop_padding if augment else 0
        self.flip = (data.flippable if flip is None else bool(flip)) and augment
        self.seed = seed
        self.first_caption = first_caption
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device)
        to_float(data.images[:1].to(self.device), self.mean, self.std)  # checks mean/std against the channels
        self.epoch = 0
        self.position = 0  # the next batch to make within the epoch

        self.images = data.images.to(self.device)  # (N, C, H, W) uint8, stays there
        self._tokenise(data, tokenizer)

    def _tokenise(self, data: CaptionedImages, tokenizer) -> None:
        """Tokenise each distinct caption once; images point into that table by caption id."""
        ids: dict[str, int] = {}
        memo: dict[int, list[int]] = {}  # CIFAR shares one caption list per class

        def caption_ids(caps: list[str]) -> list[int]:
            key = id(caps)
            if key not in memo:
                memo[key] = [ids.setdefault(c, len(ids)) for c in caps]
            return memo[key]

        per_image = [caption_ids(caps) for caps in data.captions]
        negatives = None if data.hard_negatives is None else [caption_ids(caps) for caps in data.hard_negatives]
        mirrored = list(range(len(ids)))  # caption id -> id of the caption of the flipped picture
        if self.flip:
            for text in list(ids):
                ids.setdefault(mirror_caption(text), len(ids))
            mirrored = [ids.get(mirror_caption(text), i) for i, text in enumerate(ids)]
        texts = list(ids)
        tokens = tokenizer(texts)
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[0] != len(texts):
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokenizer must map {len(texts)} texts to a ({len(texts)}, L) tensor, got {got}")
        if tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"tokenizer must return integer token ids, got {tokens.dtype}")

        self.num_texts = len(texts)
        self.tokens = tokens.long().to(self.device)  # (U, L): every distinct caption once
        self.mirror_ids = torch.tensor(mirrored, dtype=torch.long, device=self.device)  # (U,)
        self.counts = torch.tensor([len(c) for c in per_image], device=self.device)  # (N,)
        self.caption_ids = _pad_rows(per_image).to(self.device)  # (N, K)
        self.negative_ids = None if negatives is None else _pad_rows(negatives).to(self.device)  # (N, K)

    # -- epochs and resuming ---------------------------------------------------------------

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def state_dict(self) -> dict:
        """Where the loader is: save it with a checkpoint to resume at exactly the next batch."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_images": len(self.data), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("num_images", "batch_size"):
            ours = len(self.data) if key == "num_images" else self.batch_size
            if state.get(key, ours) != ours:
                raise ValueError(
                    f"cannot resume: the saved loader had {key}={state[key]}, this one has {ours}; "
                    "the batches would not be the same"
                )
        if not 0 <= state["position"] < len(self):
            raise ValueError(f"saved position {state['position']} is outside 0..{len(self) - 1}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.seed = state.get("seed", self.seed)

    def set_epoch(self, epoch: int) -> None:
        """Start over at the beginning of ``epoch``."""
        self.epoch, self.position = epoch, 0

    def _plan(self, epoch: int) -> dict[str, torch.Tensor]:
        """Every random choice of one epoch, drawn on the CPU so any device sees the same numbers."""
        n = len(self.data)
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        plan = {
            "order": order,  # (N,) image at each position of the epoch
            "choice": torch.rand(n, generator=gen),  # (N,) which caption, as a fraction of the count
            "flip": torch.rand(n, generator=gen) < 0.5,  # (N,)
            "offset": torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=gen),  # (N, 2) y, x
        }
        return {k: v.to(self.device) for k, v in plan.items()}

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        plan = self._plan(epoch)
        for b in range(self.position, len(self)):
            batch = self._make_batch(plan, slice(b * self.batch_size, (b + 1) * self.batch_size))
            # Move the bookmark before yielding, so a state_dict taken now points at the next batch.
            self.epoch, self.position = (epoch + 1, 0) if b + 1 == len(self) else (epoch, b + 1)
            yield batch

    def forever(self) -> Iterator[Batch]:
        """Batches without end, epoch after epoch (for step-based training loops)."""
        while True:
            yield from self

    # -- making one batch --------------------------------------------------------------------

    def _make_batch(self, plan: dict[str, torch.Tensor], positions: slice) -> Batch:
        index = plan["order"][positions]  # (B,)
        counts = self.counts[index]  # (B,)
        if self.first_caption:
            which = torch.zeros_like(index)
        else:
            which = (plan["choice"][positions] * counts).long().clamp_(max=counts - 1)  # (B,)
        caption = self.caption_ids[index, which]  # (B,)
        flipped = plan["flip"][positions] & self.flip  # (B,) all False when flips are off
        if self.flip:
            caption = torch.where(flipped, self.mirror_ids[caption], caption)

        images = self.images[index]  # (B, C, H, W) uint8
        if self.augment and (self.crop_padding or self.flip):
            images = crop_and_flip(images, plan["offset"][positions], flipped, self.crop_padding)
        negatives = None
        if self.negative_ids is not None:
            negative = self.negative_ids[index, which]  # (B,)
            if self.flip:
                negative = torch.where(flipped, self.mirror_ids[negative], negative)
            negatives = self.tokens[negative]  # (B, L)
        return Batch(
            images=to_float(images, self.mean, self.std),
            tokens=self.tokens[caption],  # (B, L)
            index=index,
            flipped=flipped,
            hard_negative_tokens=negatives,
        )


def crop_and_flip(images: torch.Tensor, offsets: torch.Tensor, flip: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop after zero padding, and a left-right flip where ``flip`` is True, in one gather.

    ``images`` (B, C, H, W) any dtype; ``offsets`` (B, 2) the crop's top-left corner (y, x) in
    the padded picture, each in 0..2*padding; ``flip`` (B,) bool. Returns (B, C, H, W).
    """
    b, c, h, w = images.shape
    if padding:
        images = F.pad(images, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    padded_w = w + 2 * padding
    rows = offsets[:, :1] + torch.arange(h, device=images.device)  # (B, H) source row of each output row
    across = torch.arange(w, device=images.device).expand(b, w)  # (B, W)
    cols = offsets[:, 1:] + torch.where(flip.view(b, 1), w - 1 - across, across)  # (B, W) reversed if flipped
    source = (rows.unsqueeze(2) * padded_w + cols.unsqueeze(1)).view(b, 1, h * w)  # (B, 1, H*W) flat pixel
    picked = images.flatten(2).gather(2, source.expand(b, c, h * w))  # (B, C, H*W)
    return picked.view(b, c, h, w)


def _pad_rows(rows: list[list[int]]) -> torch.Tensor:
    """Lists of different lengths as an (N, K) LongTensor, short rows padded with their first id."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [r[0]] * (width - len(r)) for r in rows], dtype=torch.long)
