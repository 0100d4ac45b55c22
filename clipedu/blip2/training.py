"""Training BLIP-2's pieces: the tiny LM on captions, then stage 1, then stage 2.

Every stage is the same loop (AdamW on the trainable parameters only, warm-up then cosine decay,
gradient clipping, mixed precision where the hardware has it) around a different loss, so there
is one :func:`fit` and three small functions that say what a step computes.

The image encoder is frozen, so its tokens for the whole dataset are computed once
(:func:`encode_dataset`) and each step reads its batch from that table: training the Q-Former
then costs nothing for the encoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from clipedu.blip2.captioning import Blip2Captioner
from clipedu.blip2.frozen import FrozenImageEncoder
from clipedu.blip2.language_model import TinyLM, caption_labels, lm_loss, paired_captions, pretraining_offsets
from clipedu.blip2.objectives import Blip2Stage1, duplicate_caption_positives, positives_from_keys
from clipedu.data import CaptionedImages, DeviceLoader, to_float
from clipedu.train import TrainingDiverged, make_scheduler, parameter_groups, resolve_precision


@dataclass
class StageConfig:
    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05  # BLIP-2's
    warmup_steps: int | None = None  # None: the first 10% of the steps
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    precision: str = "auto"  # as clipedu.train: bf16/fp16 on GPUs, fp32 on the CPU
    log_every: int = 10
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.warmup_steps is None:
            self.warmup_steps = self.steps // 10
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}), got {self.warmup_steps}")


@dataclass
class StageHistory:
    """The losses logged during one stage: ``losses["loss"]``, and e.g. ``losses["itc"]`` ..."""

    name: str = ""
    step: list[int] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def last(self, key: str = "loss") -> float:
        return self.losses[key][-1]

    def plot(self, ax=None, **kwargs):
        from clipedu.viz.blip2_plots import plot_stage_history

        return plot_stage_history(self, ax=ax, **kwargs)


def fit(
    model: nn.Module,
    step_losses: Callable[[int], dict[str, torch.Tensor]],
    cfg: StageConfig,
    device: torch.device,
    name: str = "training",
    after_step: Callable[[], None] | None = None,
    progress: bool = True,
) -> StageHistory:
    """Optimise the parameters of ``model`` that require gradients for ``cfg.steps`` steps.

    ``step_losses(step)`` computes a batch's losses as a dict whose ``"loss"`` is minimised.
    """
    from tqdm.auto import tqdm

    params = parameter_groups(model, cfg.weight_decay)  # trainable parameters only
    if not any(group["params"] for group in params):
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda" or None)
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, cfg.steps)
    amp_dtype, use_scaler = resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    trainable = [p for group in params for p in group["params"]]
    history = StageHistory(name=name)
    start = time.perf_counter()
    model.train()
    with tqdm(range(cfg.steps), desc=name, disable=not progress, unit="step") as bar:
        for step in bar:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                losses = step_losses(step)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"{name}: the loss became {loss.item()} at step {step + 1}; lower the lr")
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step()
            if (step + 1) % cfg.log_every == 0 or step == 0 or step + 1 == cfg.steps:
                history.step.append(step + 1)
                for key, value in losses.items():
                    history.losses.setdefault(key, []).append(float(value.detach()))
                bar.set_postfix(loss=f"{history.losses['loss'][-1]:.3f}")
    history.seconds = time.perf_counter() - start
    model.eval()
    return history


# --- the data every stage reads -------------------------------------------------------------------------
@torch.no_grad()
def encode_dataset(encoder: FrozenImageEncoder, data: CaptionedImages, batch_size: int = 500) -> torch.Tensor:
    """The frozen encoder's tokens for every image, (N, N_tok, C), on the encoder's device."""
    device = next(encoder.parameters()).device
    out = []
    for start in range(0, len(data), batch_size):
        out.append(encoder(to_float(data.images[start : start + batch_size].to(device))))
    return torch.cat(out)


def attribute_keys(data: CaptionedImages) -> torch.Tensor:
    """(N,) one id per distinct description: images with the same labels (ShapesWorld: shape,
    colour, size and position) get the same id, so a caption of one is true of the other. Data
    without labels falls back to the first caption's text."""
    if not data.labels:
        index: dict[str, int] = {}
        return torch.tensor([index.setdefault(caps[0], len(index)) for caps in data.captions])
    keys = torch.zeros(len(data), dtype=torch.long)
    for name in sorted(data.labels):
        size = len(data.class_names.get(name, [])) or int(data.labels[name].max()) + 1
        keys = keys * size + data.labels[name].cpu()
    return keys


def trim_padding(tokens: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Drop the columns that are padding in every row: (B, L) -> (B, longest). Padding changes no
    real token's output (it is masked, or comes after it under a causal mask), so this only saves time."""
    longest = int((tokens != pad_token_id).sum(dim=1).max())
    return tokens[:, :longest]


def _loader(data, tokenizer, context_length, batch_size, device, seed) -> DeviceLoader:
    tokenize = lambda texts: tokenizer(texts, context_length=context_length, truncate=True)  # noqa: E731
    return DeviceLoader(data, tokenize, batch_size=batch_size, device=device, shuffle=True, seed=seed)


def _check_features(features: torch.Tensor, data: CaptionedImages) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 3 or features.shape[0] != len(data):
        got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"expected the encoder's tokens for all {len(data)} images, (N, N_tok, C); got {got}")


# --- the three stages -------------------------------------------------------------------------------------
def pretrain_language_model(
    lm: TinyLM, tokenizer, data: CaptionedImages, cfg: StageConfig, device=None, progress: bool = True,
) -> StageHistory:
    """Train the tiny LM on caption text alone: two captions of one picture in a row (see
    :func:`~clipedu.blip2.language_model.paired_captions`), starting at a random position."""
    device = torch.device(device) if device is not None else next(lm.parameters()).device
    lm.to(device)
    context_length = tokenizer.context_length
    pad = lm.cfg.pad_token_id
    loader = _loader(data, tokenizer, context_length, cfg.batch_size, device, cfg.seed)
    batches = loader.forever()
    gen = torch.Generator().manual_seed(cfg.seed)

    def step_losses(step):
        batch = next(batches)
        # A second caption of each picture, drawn from its list (the loader's table of caption ids).
        which = (torch.rand(len(batch.index), generator=gen).to(device) * loader.counts[batch.index]).long()
        second = loader.tokens[loader.caption_ids[batch.index, which]]  # (B, L)
        tokens = trim_padding(paired_captions(batch.tokens, second, pad), pad)  # (B, <= 2L)
        max_offset = lm.cfg.max_positions - tokens.shape[1]
        if max_offset < 0:
            raise ValueError(f"two captions of {tokens.shape[1]} tokens do not fit in the LM's "
                             f"{lm.cfg.max_positions} positions; raise max_positions")
        offset = pretraining_offsets(cfg.batch_size, max_offset, gen, device)
        logits = lm(tokens, position_offset=offset)
        return {"loss": lm_loss(logits, caption_labels(tokens, pad))}

    return fit(lm, step_losses, cfg, device, name="language model", progress=progress)


def train_stage1(
    model: Blip2Stage1, features: torch.Tensor, data: CaptionedImages, tokenizer, cfg: StageConfig,
    device=None, progress: bool = True,
) -> StageHistory:
    """Stage 1: ITC + ITM + ITG on (frozen image tokens, caption) pairs.

    Two images with the same attributes (or two identical captions) are positives for each other.
    """
    _check_features(features, data)
    device = torch.device(device) if device is not None else features.device
    model.to(device)
    features = features.to(device)
    keys = attribute_keys(data).to(device)
    batches = _loader(data, tokenizer, model.cfg.context_length, cfg.batch_size, device, cfg.seed).forever()
    gen = torch.Generator(device=device).manual_seed(cfg.seed)

    def step_losses(step):
        batch = next(batches)
        tokens = trim_padding(batch.tokens, model.cfg.pad_token_id)
        positives = positives_from_keys(keys[batch.index]) | duplicate_caption_positives(tokens)
        out = model(features[batch.index], tokens, positives, generator=gen)
        return {"loss": out.loss, "itc": out.loss_itc, "itm": out.loss_itm, "itg": out.loss_itg}

    return fit(model, step_losses, cfg, device, name="stage 1", after_step=model.clamp_logit_scale_,
               progress=progress)


def train_stage2(
    captioner: Blip2Captioner, features: torch.Tensor, data: CaptionedImages, tokenizer, cfg: StageConfig,
    device=None, progress: bool = True,
) -> StageHistory:
    """Stage 2: the frozen LM's loss on captions after the projected query outputs."""
    _check_features(features, data)
    device = torch.device(device) if device is not None else features.device
    captioner.to(device)
    features = features.to(device)
    context = captioner.language_model.cfg.max_positions - captioner.num_queries
    context = min(context, tokenizer.context_length)
    batches = _loader(data, tokenizer, context, cfg.batch_size, device, cfg.seed).forever()

    def step_losses(step):
        batch = next(batches)
        tokens = trim_padding(batch.tokens, captioner.language_model.cfg.pad_token_id)
        return {"loss": captioner(features[batch.index], tokens)}

    return fit(captioner, step_losses, cfg, device, name="stage 2", progress=progress)


# --- the recipe the notebook and the benchmark follow ---------------------------------------------------
@dataclass
class Blip2Recipe:
    """Sizes and step counts for the whole BLIP-2 run, in fast mode (a CPU in about a minute) or
    full mode (a Colab-class GPU in minutes). :meth:`for_mode` gives the course's two recipes."""

    train_images: int
    test_images: int
    num_queries: int = 8
    qformer_width: int = 128
    qformer_layers: int = 4
    qformer_heads: int = 4
    lm_width: int = 128
    lm_layers: int = 3
    lm_heads: int = 4
    lm: StageConfig = field(default_factory=lambda: StageConfig(steps=3000, batch_size=128, lr=2e-3))
    stage1: StageConfig = field(default_factory=lambda: StageConfig(steps=3000, batch_size=128, lr=1e-3))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(steps=2000, batch_size=128, lr=1e-3))
    sweep_queries: tuple[int, ...] = (1, 2, 4, 8, 16)
    sweep_stage1_steps: int = 1000  # each number of queries: a shorter stage 1, measured by ITC and ITG
    retrieval_k: int = 16

    @classmethod
    def for_mode(cls, fast: bool) -> Blip2Recipe:
        if not fast:
            return cls(train_images=20_000, test_images=1000)
        return cls(
            train_images=2000, test_images=100, qformer_width=64, qformer_layers=2, qformer_heads=2,
            lm_width=64, lm_layers=2, lm_heads=2,
            lm=StageConfig(steps=1500, batch_size=64, lr=2e-3),  # fewer steps leave size words unread
            stage1=StageConfig(steps=300, batch_size=32, lr=2e-3),
            stage2=StageConfig(steps=200, batch_size=32, lr=3e-3),
            sweep_queries=(1, 4, 16), sweep_stage1_steps=100, retrieval_k=8,
        )

    def qformer_config(self, tokenizer, image_width: int, num_queries: int | None = None):
        from clipedu.blip2.qformer import QFormerConfig

        return QFormerConfig(
            vocab_size=tokenizer.vocab_size, image_width=image_width,
            num_queries=self.num_queries if num_queries is None else num_queries,
            width=self.qformer_width, layers=self.qformer_layers, heads=self.qformer_heads,
            context_length=tokenizer.context_length, pad_token_id=tokenizer.pad_id, sot_token_id=tokenizer.sot_id,
            eot_token_id=tokenizer.eot_id,
        )

    def lm_config(self, tokenizer):
        from clipedu.blip2.language_model import LMConfig

        return LMConfig.for_tokenizer(tokenizer, width=self.lm_width, layers=self.lm_layers, heads=self.lm_heads)
