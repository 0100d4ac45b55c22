"""The contrastive loss across several processes (data parallel training, notebook 06).

With N processes each holding b pairs, the batch is B = N * b, and every image must be compared
with all B texts: a loss computed on each process's own b x b block would see only b - 1 negatives
per row instead of B - 1, which is a different (and weaker) objective. So each process gathers
everyone's features, keeps its own *rows* of the B x B matrix (its images against all texts, its
texts against all images), and uses labels offset by its rank: the "local loss" of open_clip.

The gather must carry gradients (``torch.distributed.nn.functional.all_gather``): the features a
process receives from the others are part of its loss, and their gradients flow back to the
process that made them. Averaged over processes (what DistributedDataParallel does with
gradients), the local losses give exactly the gradient of the loss over the whole global batch.

Starting processes is PyTorch's job: ``torchrun --nproc_per_node N -m clipedu train ...``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipedu.losses import check_embeddings, contrastive_logits


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, evaluates and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def current() -> DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device_type: str | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, ...).

    NCCL on GPUs (each process takes the GPU of its LOCAL_RANK), gloo on CPUs.
    """
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_initialized():
        use_cuda = (device_type or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return current()


def _check_same_shape_everywhere(x: torch.Tensor, name: str) -> None:
    """All ranks must hold the same (b, E); otherwise all_gather would hang or mix rows up."""
    shape = torch.tensor(list(x.shape), device=x.device, dtype=torch.long)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    found = [tuple(s.tolist()) for s in shapes]
    if len(set(found)) > 1:
        raise ValueError(
            f"{name} features differ in shape across processes: {found} (rank: shape). Every process "
            "must hold the same number of pairs with the same embedding width."
        )


def _all_gather_with_grad(x: torch.Tensor) -> list[torch.Tensor]:
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # Newer PyTorch marks this public API deprecated in favour of a private one; it still works
        # from 2.1 on, which is the range clipedu supports.
        warnings.simplefilter("ignore", FutureWarning)
        return list(all_gather(x))


def gather_features(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, check_shapes: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Everyone's features, in rank order, with gradients flowing back to their owners.

    (b, E) on each of N processes -> (N * b, E) on every process.
    """
    if check_shapes:
        _check_same_shape_everywhere(image_embeds, "image")
        _check_same_shape_everywhere(text_embeds, "text")
    return torch.cat(_all_gather_with_grad(image_embeds)), torch.cat(_all_gather_with_grad(text_embeds))


def distributed_clip_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """This process's share of the global CLIP loss (the local-loss form).

    Its b images against all N*b texts, and its b texts against all N*b images; the right answers
    sit at columns rank*b ... rank*b + b - 1. The mean of this value over processes is the global
    loss, and the mean of the gradients (DDP) is the global gradient. Not distributed: plain
    :func:`clipedu.losses.clip_loss`.
    """
    check_embeddings(image_embeds, text_embeds)
    info = current()
    if not info.enabled:
        from clipedu.losses import clip_loss

        return clip_loss(image_embeds, text_embeds, logit_scale)
    all_images, all_texts = gather_features(image_embeds, text_embeds)
    b = image_embeds.shape[0]
    labels = torch.arange(b, device=image_embeds.device) + info.rank * b  # (b,)
    logits_per_image = contrastive_logits(image_embeds, all_texts, logit_scale)  # (b, N*b)
    logits_per_text = contrastive_logits(text_embeds, all_images, logit_scale)  # (b, N*b)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def distributed_siglip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
) -> torch.Tensor:
    """This process's share of the global SigLIP loss: its images against every process's texts.

    Every (image, text) cell is its own binary question, so a process only needs the others'
    texts (the negatives), not their images. Divided by b, so the mean over processes equals
    :func:`clipedu.losses.siglip_loss` on the global batch.
    """
    check_embeddings(image_embeds, text_embeds)
    info = current()
    if not info.enabled:
        from clipedu.losses import siglip_loss

        return siglip_loss(image_embeds, text_embeds, logit_scale, logit_bias)
    _check_same_shape_everywhere(text_embeds, "text")
    all_texts = torch.cat(_all_gather_with_grad(text_embeds))  # (N*b, E)
    b = image_embeds.shape[0]
    logits = contrastive_logits(image_embeds, all_texts, logit_scale) + logit_bias  # (b, N*b)
    labels = -torch.ones_like(logits)
    labels[torch.arange(b), torch.arange(b) + info.rank * b] = 1.0
    return -F.logsigmoid(labels * logits).sum() / b
