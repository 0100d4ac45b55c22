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
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clipedu.losses import check_embeddings, clip_loss, contrastive_logits, siglip_loss


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
    # Imported here: torch.distributed.nn loads only in a torch built with distributed support.
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # Newer PyTorch marks this public API deprecated in favour of a private one; it works in
        # every release clipedu supports (2.3 on).
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
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    scale: torch.Tensor | float,
    hard_negatives: torch.Tensor | None = None,
    check_shapes: bool = True,
) -> torch.Tensor:
    """This process's share of the global CLIP loss (the local-loss form).

    Its b images against all N*b texts, and its b texts against all N*b images; the right answers
    sit at columns rank*b ... rank*b + b - 1. The mean of this value over processes is the global
    loss, and the mean of the gradients (DDP) is the global gradient. Not distributed: plain
    :func:`clipedu.losses.clip_loss`.

    ``hard_negatives`` (b, E): this process's extra negative captions. They are gathered too, so
    every image is ranked against all N*b of them, the same columns as
    ``clip_loss(..., hard_negatives=)`` on the global batch. ``check_shapes=False`` skips the
    shape exchange (two small collectives) when the caller guarantees equal shapes.
    """
    check_embeddings(image_embeds, text_embeds)
    info = current()
    if not info.enabled:
        return clip_loss(image_embeds, text_embeds, scale, hard_negatives=hard_negatives)
    all_images, all_texts = gather_features(image_embeds, text_embeds, check_shapes=check_shapes)
    b = image_embeds.shape[0]
    columns = all_texts  # (N*b, E)
    if hard_negatives is not None:
        if hard_negatives.dim() != 2 or hard_negatives.shape[1] != text_embeds.shape[1]:
            raise ValueError(
                f"expected hard negatives of shape (H, {text_embeds.shape[1]}), got {tuple(hard_negatives.shape)}"
            )
        if check_shapes:
            _check_same_shape_everywhere(hard_negatives, "hard negative")
        columns = torch.cat([all_texts, *_all_gather_with_grad(hard_negatives)])  # (N*b + N*H, E)
    labels = torch.arange(b, device=image_embeds.device) + info.rank * b  # (b,)
    logits_per_image = contrastive_logits(image_embeds, columns, scale)  # (b, N*b [+ N*H])
    logits_per_text = contrastive_logits(text_embeds, all_images, scale)  # (b, N*b)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def per_device_clip_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor | float, chunks: int
) -> torch.Tensor:
    """What N devices would compute if each took the CLIP loss of its own b = B/N pairs only.

    Simulated on one device, for teaching: the batch is cut into ``chunks`` blocks, each block's
    loss is taken on its own b x b matrix, and the losses are averaged. Each row then has b - 1
    negatives instead of B - 1, the cross-block cells of the B x B matrix never enter the loss,
    and a random model scores ln(b), not ln(B). ``chunks=1`` is the real loss.
    """
    check_embeddings(image_embeds, text_embeds)
    batch = image_embeds.shape[0]
    if not isinstance(chunks, int) or chunks <= 0 or batch % chunks:
        raise ValueError(f"chunks must be a positive int that divides the batch ({batch}), got {chunks!r}")
    b = batch // chunks
    losses = [clip_loss(image_embeds[i : i + b], text_embeds[i : i + b], scale) for i in range(0, batch, b)]
    return torch.stack(losses).mean()


# --- what the training loop needs besides the loss --------------------------------------------------
def check_batch_divides(batch_size: int, world_size: int, accum_steps: int = 1) -> int:
    """The per-process batch b = batch_size / world_size, after checking that it splits evenly
    (into ``accum_steps`` micro-batches as well)."""
    if batch_size % world_size:
        raise ValueError(
            f"the global batch_size {batch_size} does not divide among world_size {world_size} processes; "
            f"choose a batch size that is a multiple of {world_size}"
        )
    local = batch_size // world_size
    if local % accum_steps:
        raise ValueError(
            f"each of the {world_size} processes holds {local} pairs of the batch of {batch_size}, which "
            f"does not split into accum_steps={accum_steps} equal micro-batches"
        )
    return local


def shard_batch(batch, info: DistInfo | None = None):
    """This process's rows ``[rank*b : (rank+1)*b]`` of a global batch (any NamedTuple of tensors
    whose first dimension is the batch, ``None`` fields kept). Views, no copies.

    Every process makes the same global batch (same loader, same seed), so taking slices keeps the
    data order of a one-process run with the whole batch.
    """
    info = info or current()
    if not info.enabled:
        return batch
    size = batch[0].shape[0]
    b = check_batch_divides(size, info.world_size)
    rows = slice(info.rank * b, (info.rank + 1) * b)
    return type(batch)(*(None if x is None else x[rows] for x in batch))


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over processes (one all_reduce); ``x`` itself when not distributed."""
    if not current().enabled:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every process (a step count, a decision); ``obj`` when not distributed."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def first_problem(problem: str | None) -> str | None:
    """The lowest rank's ``problem`` that is not None, on every process (``problem`` when not
    distributed). Every process calls it after a step that may fail on some of them only (reading
    a file, say), so that all stop with the same message instead of the others waiting forever in
    their next collective for the one that stopped."""
    if not current().enabled:
        return problem
    problems = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    return next((p for p in problems if p is not None), None)


def barrier() -> None:
    """Wait for every process (nothing when not distributed)."""
    if current().enabled:
        dist.barrier()


def leave_group(together: bool = True) -> None:
    """Leave the process group (nothing when none was joined).

    When the processes leave ``together`` (a success, or an error all of them agreed on), they
    first meet at a barrier, so that no process tears its connections down while another still
    uses them. Then each gives gloo's worker threads a moment before tearing down: on torch 2.3 a
    worker thread that is still freeing a finished collective's tensors needs the GIL, which
    ``destroy_process_group`` holds while it waits for that thread (a deadlock seen in 1 run in 5
    on a busy machine). When they do not leave together (an unexpected error on one), each just
    leaves.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if together:
        dist.barrier()
        time.sleep(0.2)  # releases the GIL: gloo's threads finish freeing their work first
    dist.destroy_process_group()


def distributed_siglip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    scale: torch.Tensor | float,
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
        return siglip_loss(image_embeds, text_embeds, scale, logit_bias)
    _check_same_shape_everywhere(text_embeds, "text")
    all_texts = torch.cat(_all_gather_with_grad(text_embeds))  # (N*b, E)
    b = image_embeds.shape[0]
    logits = contrastive_logits(image_embeds, all_texts, scale) + logit_bias  # (b, N*b)
    labels = -torch.ones_like(logits)
    labels[torch.arange(b), torch.arange(b) + info.rank * b] = 1.0
    return -F.logsigmoid(labels * logits).sum() / b


# --- seeing it work: real processes on one machine (notebook 13, tests) ------------------------------
def _loss_worker(rank: int, world_size: int, port: int, folder: str, image_embeds, text_embeds, scale):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    finished = False
    try:
        b = image_embeds.shape[0] // world_size
        rows = slice(rank * b, (rank + 1) * b)
        img = image_embeds[rows].clone().requires_grad_()  # (b, E): only this process's pairs
        txt = text_embeds[rows].clone().requires_grad_()
        scale = torch.tensor(float(scale), requires_grad=True)
        loss = distributed_clip_loss(img, txt, scale)
        loss.backward()
        torch.save({"loss": loss.detach(), "image_grad": img.grad, "text_grad": txt.grad, "scale_grad": scale.grad},
                   f"{folder}/rank{rank}.pt")
        finished = True
    finally:
        leave_group(together=finished)


def loss_on_processes(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: float, world_size: int = 2
) -> list[dict]:
    """Start ``world_size`` CPU processes (gloo, as torchrun would) that each hold their slice of the
    batch and compute :func:`distributed_clip_loss` and its gradients. Returns one dict per rank:
    ``loss``, ``image_grad`` and ``text_grad`` (its (b, E) rows) and ``scale_grad``.

    A few seconds, most of it starting Python in each process. For notebooks and tests: the real
    collectives on one machine, without a GPU.
    """
    check_embeddings(image_embeds, text_embeds)
    check_batch_divides(image_embeds.shape[0], world_size)
    for attempt in range(2):  # a second try on a new port if the first set of processes died
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # a free port for the rendezvous
        with tempfile.TemporaryDirectory() as folder:
            args = (world_size, port, folder, image_embeds.detach().cpu(), text_embeds.detach().cpu(),
                    float(scale))
            try:
                mp.spawn(_loss_worker, args=args, nprocs=world_size, join=True)
            except mp.ProcessExitedException:
                if attempt == 1:
                    raise
                continue
            return [torch.load(f"{folder}/rank{r}.pt") for r in range(world_size)]
