"""The optimisation recipe every model of the course trains with (notebook 06).

    parameter groups -> AdamW -> linear warm-up, then cosine decay to zero
    each step: autocast forward -> (scaled) backward -> unscale -> clip the gradient norm
               -> optimiser step -> update the loss scale -> next learning rate

CLIP's loop (:mod:`clipedu.train`), BLIP-2's stages (:mod:`clipedu.blip2.training`) and the
supervised baseline (:mod:`clipedu.supervised`) all take these pieces from here, through
:class:`clipedu.loop.Loop`, so "the same recipe" means the same code.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

EMBEDDINGS = ("token_embed", "pos_embed", "cls_token")  # tables of vectors, not maps between spaces


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's parameter groups: weight decay on matrices only; gains, biases, embeddings and
    logit_scale are left alone. Frozen parameters (``requires_grad=False``) are in no group.

    Weight decay pulls weights towards zero; on a LayerNorm gain, a bias, a position table or the
    temperature that is a bias towards a particular value, not a regulariser. Each group is a
    dict of AdamW options, so a group with its own learning rate is one more entry in the list.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = any(k in name for k in EMBEDDINGS)
        (no_decay if p.ndim < 2 or is_embedding or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fused_adamw_on(device: torch.device) -> bool:
    """Whether AdamW has a fused kernel for ``device``: a GPU's always; a CPU's from torch 2.4 on."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], fused=True)
    except RuntimeError:  # torch < 2.4: "fused=True requires all the params to be ... CUDA"
        return False
    return True


def make_optimizer(groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
                   device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``groups``, with the fused kernel where there is one: one pass over all the
    weights instead of several per tensor (on a CPU, a small model's step takes a third of the time)."""
    if not any(group["params"] for group in groups):
        raise ValueError("the model has no trainable parameters (every one has requires_grad=False)")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused_adamw_on(device) or None)


class _WarmupThenCosine(SequentialLR):
    """SequentialLR without torch 2.3's false alarm: at the milestone it steps the cosine with an
    explicit epoch, its own deprecated form, and warns about that on every run (later releases don't)."""

    def step(self):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"The epoch parameter in `scheduler.step\(\)`", UserWarning)
            super().step()


def make_scheduler(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up, then cosine decay to zero, from torch.optim.lr_scheduler."""
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps == 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps)
    return _WarmupThenCosine(optimizer, [warmup, cosine], milestones=[warmup_steps])


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler?) for a precision setting on a device.

    "auto": bf16 on GPUs that have it (Ampere and newer), fp16 with loss scaling on older ones
    (Colab's T4), fp32 on the CPU and Apple's MPS.
    """
    if precision == "auto":
        if device.type != "cuda":
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return None, False
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"fp16 training needs a CUDA GPU; this run is on {device.type}")
    return (torch.bfloat16 if precision == "bf16" else torch.float16), precision == "fp16"


class Precision:
    """Mixed precision for one device: ``autocast()`` around the forward pass, ``backward(loss)``
    through the loss scaler when fp16 needs one (small fp16 gradients would round to zero)."""

    def __init__(self, precision: str, device: torch.device):
        self.device_type = device.type
        self.dtype, use_scaler = resolve_precision(precision, device)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()


def optimizer_step(optimizer, scheduler, parameters: Iterable[torch.Tensor], grad_clip: float,
                   scaler: torch.amp.GradScaler | None = None) -> None:
    """Everything after the backward pass: unscale (so the clip sees true gradients), clip the
    norm of all gradients together to ``grad_clip`` (0: no clipping), step (skipped by the scaler
    when a gradient is inf or nan), update the loss scale, move the learning rate on."""
    if scaler:
        scaler.unscale_(optimizer)
    if grad_clip:
        nn.utils.clip_grad_norm_(parameters, grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
