"""The supervised baseline: a classifier trained with labels (notebooks 03 and 10).

CLIP's image tower learns from captions. The classic way to train the same Vision Transformer is
with labels: a linear head on the CLS features (:class:`clipedu.vision.ViTClassifier`) and a
cross-entropy loss. :func:`train_classifier` does that with the recipe of :mod:`clipedu.train`
(AdamW, warm-up then cosine decay, clipping, mixed precision, on-device batches), so "a supervised
ViT of the same size and budget" is a fair baseline for CLIP.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from clipedu.data import CaptionedImages, DeviceLoader
from clipedu.train import TrainingDiverged, make_scheduler, parameter_groups, resolve_precision


@dataclass
class ClassifierHistory:
    """What :func:`train_classifier` logged: loss and accuracy on the training batches."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)  # on the batch just trained on
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0
    batch_size: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def train_classifier(
    model: nn.Module,
    data: CaptionedImages,
    attribute: str,
    steps: int = 300,
    batch_size: int = 128,
    lr: float = 1e-3,
    device: str | torch.device | None = None,
    warmup_steps: int | None = None,
    weight_decay: float = 0.05,
    grad_clip: float = 1.0,
    seed: int = 0,
    log_every: int = 10,
    progress: bool = True,
) -> ClassifierHistory:
    """Train ``model`` (images -> (B, K) logits) to predict ``data.labels[attribute]``.

    The same recipe as the CLIP loop, with labels instead of captions: AdamW with decay on
    matrices only, a linear warm-up (default: a tenth of the steps) then cosine decay, gradient
    clipping, mixed precision where the hardware has it, batches from a :class:`DeviceLoader`
    (whose ``batch.index`` says which labels to read). The model is left in eval mode.
    """
    from tqdm.auto import tqdm

    from clipedu.runtime import pick_device

    if attribute not in data.labels:
        raise ValueError(f"the data has no labels {attribute!r}; it has {sorted(data.labels)}")
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    warmup_steps = max(1, steps // 10) if warmup_steps is None else warmup_steps
    if not 0 <= warmup_steps < steps:
        raise ValueError(f"warmup_steps must be in [0, steps={steps}), got {warmup_steps}")
    device = torch.device(device) if device is not None else pick_device()
    num_classes = len(data.class_names.get(attribute, [])) or int(data.labels[attribute].max()) + 1
    model.to(device).train()
    labels = data.labels[attribute].to(device)  # (N,)
    loader = DeviceLoader(
        data, lambda texts: torch.zeros(len(texts), 1, dtype=torch.long),  # captions are not used
        batch_size=batch_size, device=device, shuffle=True, seed=seed,
    )
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = make_scheduler(optimizer, warmup_steps, steps)
    amp_dtype, use_scaler = resolve_precision("auto", device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    history = ClassifierHistory(batch_size=batch_size)
    batches = loader.forever()
    start = time.perf_counter()
    for step in tqdm(range(1, steps + 1), disable=not progress, desc="training", unit="step"):
        batch = next(batches)
        target = labels[batch.index]  # (B,)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(batch.images)  # (B, K)
        if logits.dim() != 2 or logits.shape[1] != num_classes:
            raise ValueError(
                f"the model returns logits of shape {tuple(logits.shape)}; {attribute!r} has "
                f"{num_classes} classes, so expected ({batch_size}, {num_classes})"
            )
        loss = nn.functional.cross_entropy(logits.float(), target)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        if step % log_every == 0 or step in (1, steps):
            history.step.append(step)
            history.loss.append(loss.item())
            history.accuracy.append((logits.argmax(1) == target).float().mean().item())
            history.lr.append(scheduler.get_last_lr()[0])
    history.seconds = time.perf_counter() - start
    model.eval()
    return history


@torch.no_grad()
def predict_classes(model: nn.Module, data: CaptionedImages | torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """(N,) predicted class of each image (uint8 images, as stored in the data), on the CPU."""
    from clipedu.data import to_float

    images = data.images if isinstance(data, CaptionedImages) else data
    model.eval()
    device = next(model.parameters()).device
    out = [model(to_float(images[i : i + batch_size].to(device))).argmax(1).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)
