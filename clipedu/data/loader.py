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

from clipedu.data.base import CaptionedImages, apply_normalisation, mirror_caption, normalisation


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

    Memory on the device: the uint8 images once; with augmentation, a zero-padded copy instead,
    and with flips also its mirror image (about 2.5x the images), so a batch is read, cropped and
    flipped by one gather.

    A ``for`` loop runs the rest of the current epoch; the next loop starts the next epoch.
    ``state_dict()`` / ``load_state_dict()`` save and restore (epoch, position), which with the
    seed fixes every later batch; :meth:`forever` gives batches without end.
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
        self.scale, self.shift = normalisation(mean, std, data.channels, self.device)  # the same as to_float
        self.epoch = 0
        self.position = 0  # the next batch to make within the epoch

        images = data.images.to(self.device)  # (N, C, H, W) uint8, stays on the device
        self.crops = bool(self.crop_padding or self.flip)  # both are 0/False unless augment
        if self.crops:
            self.store = padded_store(images, self.crop_padding, mirrored=self.flip)  # (N or 2N, C, H+2p, W+2p)
        else:
            self.store = images
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

        if not self.crops:
            images = self.store.index_select(0, index)  # (B, C, H, W) uint8
        else:
            picture = index + flipped.long() * len(self.data)  # mirrored copies follow the originals
            height, width = self.data.images.shape[-2:]
            images = read_crops(self.store, picture, plan["offset"][positions], height, width)
        negatives = None
        if self.negative_ids is not None:
            negative = self.negative_ids[index, which]  # (B,)
            if self.flip:
                negative = torch.where(flipped, self.mirror_ids[negative], negative)
            negatives = self.tokens[negative]  # (B, L)
        return Batch(
            images=apply_normalisation(images, self.scale, self.shift),
            tokens=self.tokens[caption],  # (B, L)
            index=index,
            flipped=flipped,
            hard_negative_tokens=negatives,
        )


def padded_store(images: torch.Tensor, padding: int, mirrored: bool) -> torch.Tensor:
    """The images padded with ``padding`` zeros on every side, (N, C, H+2p, W+2p), followed by
    their mirror images when ``mirrored`` (2N pictures).

    Flipping a batch costs a pass over it every time; a mirrored copy made once turns a flip into
    reading from the second half of the store, for twice the memory.
    """
    padded = F.pad(images, (padding, padding, padding, padding))
    return torch.cat([padded, padded.flip(-1)]) if mirrored else padded.contiguous()


def read_crops(store: torch.Tensor, which: torch.Tensor, offsets: torch.Tensor, height: int, width: int):
    """Windows of ``height`` x ``width`` from pictures ``which`` (B,) of ``store`` (M, C, Hp, Wp),
    with top-left corners ``offsets`` (B, 2) as (y, x). Returns (B, C, height, width).

    Each output row is ``width`` consecutive values of the store. Seen through a view whose row k
    starts at element k, all B * C * height rows of the batch come out of one ``index_select``.
    """
    _, channels, padded_h, padded_w = store.shape
    flat = store.reshape(-1)  # a view: the store is contiguous
    rows = flat.as_strided((flat.numel() - width + 1, width), (1, 1))  # row k = flat[k : k + width]
    plane = padded_h * padded_w
    channel = torch.arange(channels, device=store.device).view(1, channels, 1) * plane  # (1, C, 1)
    line = torch.arange(height, device=store.device).view(1, 1, height) * padded_w  # (1, 1, H)
    corner = which * (channels * plane) + offsets[:, 0] * padded_w + offsets[:, 1]  # (B,)
    starts = corner.view(-1, 1, 1) + channel + line  # (B, C, H) where each output row begins
    return rows.index_select(0, starts.flatten()).view(-1, channels, height, width)


def _pad_rows(rows: list[list[int]]) -> torch.Tensor:
    """Lists of different lengths as an (N, K) LongTensor, short rows padded with their first id."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [r[0]] * (width - len(r)) for r in rows], dtype=torch.long)
