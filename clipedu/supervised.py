"""The supervised baseline: a classifier trained with labels (notebooks 03 and 10); probing and
fine-tuning a trained tower with labels (notebook 15).

CLIP's image tower learns from captions. The classic way to train the same Vision Transformer is
with labels: a linear head on the CLS features (:class:`clipedu.vision.ViTClassifier`) and a
cross-entropy loss. :func:`train_classifier` does that in the course's loop (:mod:`clipedu.loop`: AdamW, warm-up
then cosine decay, clipping, mixed precision, on-device batches, checkpoints), so "a supervised ViT
of the same size and budget" is a fair baseline for CLIP.

The same loop fine-tunes CLIP's own image tower: :class:`HeadOnTower` puts a linear head on any
tower's CLS features, :func:`fit_head` fits that head alone on frozen features (a linear probe in
torch, whose weights can then start a fine-tuning run: LP-FT).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from clipedu.data import CaptionedImages, DeviceLoader, to_float
from clipedu.loop import History, Loop, TrainConfig
from clipedu.runtime import pick_device


class HeadOnTower(nn.Module):
    """A linear head on a vision tower's CLS features (before the projection): images -> (B, K)
    logits. Trained with the tower frozen it is a linear probe; with the tower, fine-tuning."""

    def __init__(self, tower: nn.Module, num_classes: int, head: nn.Linear | None = None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        width = tower.cfg.width
        if head is not None and (head.in_features, head.out_features) != (width, num_classes):
            raise ValueError(f"the head should map {width} features to {num_classes} classes, "
                             f"got {head.in_features} -> {head.out_features}")
        self.tower = tower
        self.head = head if head is not None else nn.Linear(width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(images).features)  # (B, K)


def fit_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 300, lr: float = 1e-2,
             weight_decay: float = 1e-4, seed: int = 0) -> nn.Linear:
    """Multinomial logistic regression on frozen features (N, D), full batch, AdamW: the linear probe
    as an ``nn.Linear`` whose weights can start fine-tuning (LP-FT). Deterministic for a seed."""
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features (N, D) and labels (N,), got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():  # the usual nn.Linear initialisation, from the seed's generator
        bound = features.shape[1] ** -0.5
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    head = head.to(features.device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    x, y = features.detach().float(), labels.to(features.device)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(head(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval()


def classifier_config(**overrides) -> TrainConfig:
    """The classifier's recipe: 300 steps of 128 images, a peak learning rate of 1e-3 reached after
    a warm-up over the first tenth of the steps, weight decay 0.05; ``overrides`` change any of it."""
    return TrainConfig(**{"steps": 300, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.05,
                          "warmup_steps": None, **overrides})


class ClassifierLoop(Loop):
    """The course's loop with labels instead of captions: cross-entropy of the logits against
    ``data.labels[attribute]``, the batch's accuracy logged beside the loss."""

    def __init__(self, model: nn.Module, data: CaptionedImages, attribute: str, cfg: TrainConfig,
                 device: torch.device, out_dir: str | Path | None = None):
        if attribute not in data.labels:
            raise ValueError(f"the data has no labels {attribute!r}; it has {sorted(data.labels)}")
        loader = DeviceLoader(
            data, lambda texts: torch.zeros(len(texts), 1, dtype=torch.long),  # captions are not used
            batch_size=cfg.batch_size, device=device, shuffle=True, augment=cfg.augment, seed=cfg.seed,
        )
        super().__init__(model, loader, cfg, device, out_dir=out_dir, name=f"classifier ({attribute})")
        self.attribute = attribute
        self.labels = data.labels[attribute].to(self.device)  # (N,)
        self.num_classes = len(data.class_names.get(attribute, [])) or int(data.labels[attribute].max()) + 1

    def losses(self, batch) -> dict[str, torch.Tensor]:
        target = self.labels[batch.index]  # (B,) the batch's rows of the labels
        logits = self.model(batch.images)  # (B, K)
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the model returns logits of shape {tuple(logits.shape)}; {self.attribute!r} has "
                f"{self.num_classes} classes, so expected ({self.cfg.batch_size}, {self.num_classes})"
            )
        loss = nn.functional.cross_entropy(logits.float(), target)
        return {"loss": loss, "accuracy": (logits.detach().argmax(1) == target).float().mean()}


def train_classifier(
    model: nn.Module,
    data: CaptionedImages,
    attribute: str,
    cfg: TrainConfig | None = None,
    device: str | torch.device | None = None,
    out_dir: str | Path | None = None,
    resume: bool | str = False,
    progress: bool = True,
) -> History:
    """Train ``model`` (images -> (B, K) logits) to predict ``data.labels[attribute]``.

    The same recipe as the CLIP loop, with labels instead of captions: AdamW with decay on
    matrices only, a linear warm-up then cosine decay, gradient clipping, mixed precision where
    the hardware has it, batches from a :class:`DeviceLoader` (whose ``batch.index`` says which
    labels to read), checkpoints in ``out_dir`` (``resume="auto"``: a finished run there only loads,
    as notebook 15 keeps its fine-tuning runs). ``cfg`` defaults to :func:`classifier_config`.
    The history logs ``loss``, ``accuracy`` (on the batch just trained on) and ``lr``. The model is
    left in eval mode.
    """
    cfg = cfg or classifier_config()
    device = torch.device(device) if device is not None else pick_device()
    return ClassifierLoop(model, data, attribute, cfg, device, out_dir).fit(resume=resume, progress=progress)


@torch.no_grad()
def predict_classes(model: nn.Module, data: CaptionedImages | torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """(N,) predicted class of each image (uint8 images, as stored in the data), on the CPU."""
    images = data.images if isinstance(data, CaptionedImages) else data
    model.eval()
    device = next(model.parameters()).device
    out = [model(to_float(images[i : i + batch_size].to(device))).argmax(1).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)
