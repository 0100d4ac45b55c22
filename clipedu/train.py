"""The training loop for a mini-CLIP (notebook 06).

One step:  batch -> model -> symmetric contrastive loss -> backward -> clip gradients -> AdamW
           -> learning-rate schedule -> clamp logit_scale to ln(100).

Around it: mixed precision where the hardware has it, a progress bar with the loss, the temperature
and images/s, a history of everything logged, checkpoints written atomically that resume the run
exactly, and two alarms: a non-finite loss stops training, and a *collapse* (every embedding the
same, the loss stuck at ln(batch)) is detected and explained.

Why collapse happens: at logit_scale = ln(1/0.07) the logits are 14x the cosines. Early in training
a large learning-rate step can push all embeddings of one tower towards one direction; then every
row of the logit matrix is constant, the softmax is uniform, the loss is exactly ln(B) and its
gradient carries almost no signal about *which* pair matches. A learning-rate warm-up long enough
for the towers to separate their inputs first (or a smaller initial scale) avoids it.
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from clipedu.clip import CLIP
from clipedu.config import CLIPConfig
from clipedu.data import CaptionedImages, DeviceLoader
from clipedu.distributed import (
    barrier,
    broadcast_object,
    check_batch_divides,
    current,
    distributed_clip_loss,
    global_mean,
    shard_batch,
)
from clipedu.losses import clip_loss
from clipedu.tokenizer import WordTokenizer

CHECKPOINT_FORMAT = "clipedu-checkpoint-1"
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50  # long enough that a logit_scale of ln(1/0.07) does not collapse
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 1.0
    precision: str = "auto"  # "auto", "fp32", "bf16" or "fp16"
    compile: bool = False
    augment: bool = False
    hard_negatives: bool = False  # NegCLIP: add each image's swapped caption as an extra negative
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end (when an eval_fn is given)
    checkpoint_every: int = 0  # 0: only at the end (when there is an out_dir)
    seed: int = 0
    # Micro-batches per step: the contrastive batch stays whole (batch_size pairs), only the memory
    # for activations shrinks; see Trainer._accumulate_gradients.
    accum_steps: int = 1

    def __post_init__(self):
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}), got {self.warmup_steps}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not isinstance(self.accum_steps, int) or self.accum_steps <= 0:
            raise ValueError(f"accum_steps must be a positive int, got {self.accum_steps!r}")
        if self.batch_size % self.accum_steps:
            raise ValueError(
                f"batch_size {self.batch_size} does not split into accum_steps={self.accum_steps} equal "
                "micro-batches; choose a batch size that is a multiple of accum_steps"
            )

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class History:
    """Everything logged during training; ``plot()`` draws it."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    logit_scale: list[float] = field(default_factory=list)  # the raw parameter; temperature = exp(-x)
    lr: list[float] = field(default_factory=list)
    image_similarity: list[float] = field(default_factory=list)  # mean cosine between different images
    text_similarity: list[float] = field(default_factory=list)
    images_per_s: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # {"step": s, metric: value, ...}
    seconds: float = 0.0
    batch_size: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**d)

    @property
    def temperature(self) -> list[float]:
        return [math.exp(-s) for s in self.logit_scale]

    def collapsed(self, min_steps: int = 25) -> bool:
        """True when every logged step of the last ``min_steps`` steps (at least three logs) looks
        collapsed (see :func:`looks_collapsed`). A step or two at ln(B) is normal just after the
        warm-up; a plateau that lasts is not."""
        if not self.step:
            return False
        recent = [i for i, s in enumerate(self.step) if s > self.step[-1] - min_steps]
        if len(recent) < 3 or self.step[-1] - self.step[recent[0]] < min_steps - max(1, min_steps // 5):
            return False
        return all(
            looks_collapsed(self.loss[i], self.image_similarity[i], self.text_similarity[i], self.batch_size)
            for i in recent
        )

    def plot(self, **kwargs):
        from clipedu.viz.training import plot_history

        return plot_history(self, **kwargs)


def looks_collapsed(loss: float, image_similarity: float, text_similarity: float, batch_size: int) -> bool:
    """Collapse: the loss within 2% of ln(B) and, in *both* towers, all embeddings nearly the same.

    (An untrained image tower already maps every picture to nearly one vector, so one tower alone
    says little; the text tower following it there is the sign of collapse.)
    """
    return (
        batch_size > 1
        and abs(loss - math.log(batch_size)) < 0.02 * math.log(batch_size)
        and min(image_similarity, text_similarity) > 0.9
    )


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint (if any) is kept."""


# --- pieces of the recipe -------------------------------------------------------------------------
def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: gains, biases, embeddings and logit_scale are left alone.

    Weight decay pulls weights towards zero; on a LayerNorm gain, a bias, a position table or the
    temperature that is a bias towards a particular value, not a regulariser.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = any(k in name for k in ("token_embed", "pos_embed", "cls_token"))
        (no_decay if p.ndim < 2 or is_embedding or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _WarmupThenCosine(torch.optim.lr_scheduler.SequentialLR):
    """SequentialLR without torch 2.3's false alarm: at the milestone it steps the cosine with an
    explicit epoch, its own deprecated form, and warns about that on every run (later releases don't)."""

    def step(self):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"The epoch parameter in `scheduler.step\(\)`", UserWarning)
            super().step()


def make_scheduler(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up, then cosine decay to zero, from torch.optim.lr_scheduler."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR

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


def mean_off_diagonal_cosine(embeds: torch.Tensor) -> float:
    """How alike a batch of unit vectors is: 1.0 means all the same (collapse), ~0 means spread."""
    b = embeds.shape[0]
    if b < 2:
        return 0.0
    e = embeds.detach().float()
    total = e.sum(0)  # sum_ij <e_i, e_j> = |sum_i e_i|^2, and the diagonal adds b
    return ((total @ total - b) / (b * (b - 1))).item()


# --- checkpoints ----------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write atomically: to a temporary file in the same folder, then rename over the old one, so
    an interruption mid-write never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code runs) and check its format."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise ValueError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a clipedu checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return state


def model_from_checkpoint(path: str | Path, device="cpu") -> tuple[CLIP, WordTokenizer, dict]:
    """Rebuild (model, tokenizer, checkpoint dict) from a checkpoint file or run folder."""
    state = load_checkpoint(path)
    model = CLIP(CLIPConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), WordTokenizer.from_dict(state["tokenizer"]), state


# --- the loop -------------------------------------------------------------------------------------
class Trainer:
    """Trains a CLIP on a CaptionedImages dataset.

    >>> trainer = Trainer(model, tokenizer, data, TrainConfig(steps=500), out_dir="runs/demo")
    >>> history = trainer.fit()          # or trainer.fit(resume=True) after an interruption

    Under ``torchrun`` (a process group initialised, e.g. by :func:`clipedu.distributed.init_from_env`)
    the model is wrapped in DistributedDataParallel. ``cfg.batch_size`` stays the *global* batch:
    every process draws the same shuffled batch and trains on its slice of it, the loss is the
    local-loss form of the global one (:func:`clipedu.distributed.distributed_clip_loss`), and
    rank 0 alone shows progress, logs, evaluates and writes checkpoints (of the unwrapped model, so
    a run saved by N processes resumes in one and the other way round). Hard negatives are gathered
    like the captions. ``cfg.accum_steps > 1`` keeps the whole contrastive batch with the memory of
    a micro-batch (see :meth:`_accumulate_gradients`).

    ``loss_fn(image_embeds, text_embeds, logit_scale)``, when given, replaces the CLIP loss (say, to
    compare with a weaker objective in a notebook); it gets this process's features.
    """

    def __init__(
        self,
        model: CLIP,
        tokenizer: WordTokenizer,
        data: CaptionedImages,
        cfg: TrainConfig | None = None,
        device: str | torch.device | None = None,
        out_dir: str | Path | None = None,
        eval_fn: Callable[[CLIP], dict] | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ):
        from clipedu.runtime import pick_device

        self.cfg = cfg or TrainConfig()
        self.dist = current()
        # The global batch must split evenly among processes, and each share into micro-batches.
        check_batch_divides(self.cfg.batch_size, self.dist.world_size, self.cfg.accum_steps)
        self.device = torch.device(device) if device is not None else pick_device()
        if self.dist.enabled and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", self.dist.local_rank)  # one GPU per process
        self.tokenizer = tokenizer
        if tokenizer.vocab_size > model.cfg.text.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} words but the model's vocabulary holds "
                f"{model.cfg.text.vocab_size}; build the config with vocab_size={tokenizer.vocab_size}"
            )
        if tokenizer.eot_id != model.cfg.text.eot_token_id:
            raise ValueError(
                f"the tokenizer's end-of-text id is {tokenizer.eot_id}, the model's is "
                f"{model.cfg.text.eot_token_id}"
            )
        if self.cfg.hard_negatives and data.hard_negatives is None:
            raise ValueError(f"hard_negatives=True needs data with swapped captions; {data.name!r} has none")
        if loss_fn is not None and self.cfg.hard_negatives:
            raise ValueError("a custom loss_fn takes no hard negatives; use hard_negatives=False with it")
        self.loss_fn = loss_fn
        self.model = model.to(self.device)
        self.data = data
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.eval_fn = eval_fn
        self.amp_dtype, use_scaler = resolve_precision(self.cfg.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.loader = DeviceLoader(
            data, lambda texts: tokenizer(texts, context_length=model.cfg.text.context_length, truncate=True),
            batch_size=self.cfg.batch_size, device=self.device, shuffle=True, augment=self.cfg.augment,
            seed=self.cfg.seed, expected_image_size=model.cfg.vision.image_size,
        )
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, self.cfg.weight_decay), lr=self.cfg.lr, betas=self.cfg.betas,
            eps=self.cfg.eps, fused=self.device.type == "cuda" or None,
        )
        self.scheduler = make_scheduler(self.optimizer, self.cfg.warmup_steps, self.cfg.steps)
        self.step = 0
        self.history = History(batch_size=self.cfg.batch_size)
        self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # DDP copies rank 0's weights to every process now, and averages gradients in backward.
            self.ddp = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        trained = self.ddp if self.ddp is not None else model
        self._forward = torch.compile(trained) if self.cfg.compile else trained
        self._shapes_checked = False

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.model.cfg.to_dict(),
            "train_config": asdict(self.cfg),
            "tokenizer": self.tokenizer.to_dict(),
            "dataset": self.data.name,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "step": self.step,
            "history": self.history.to_dict(),
            "loader": self.loader.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != self.model.cfg.to_dict():
            raise ValueError(
                "the checkpoint was trained with another model config:\n"
                f"  checkpoint: {state['config']}\n  this run:   {self.model.cfg.to_dict()}"
            )
        if state["tokenizer"] != self.tokenizer.to_dict():
            raise ValueError("the checkpoint's tokenizer vocabulary differs from this run's")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.history = History.from_dict(state["history"])
        self.loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self) -> Path | None:
        if self.out_dir is None:
            return None
        path = self.out_dir / CHECKPOINT_NAME
        if self.dist.is_main:  # one writer: every process holds the same weights
            save_checkpoint(path, self.state_dict())
        return path

    # -- one step -----------------------------------------------------------------------------
    def train_step(self, batch) -> dict:
        """One optimiser step on a batch from the loader (under DDP: the global batch; this
        process trains on its slice). Returns the loss and the batch's features."""
        out = self.compute_gradients(batch)
        model, cfg = self.model, self.cfg
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        model.clamp_logit_scale_()  # on every process: they all hold the same weights
        self.step += 1
        return out

    def compute_gradients(self, batch) -> dict:
        """Set ``.grad`` of every parameter to the gradient of the loss on ``batch`` (scaled by the
        GradScaler when there is one; averaged over processes under DDP), without a step.

        Returns {"loss": the batch's loss (under DDP: the mean over processes), "image_embeds",
        "text_embeds": this process's features}.
        """
        model, cfg = self.model, self.cfg
        model.train()
        if self.ddp is not None:
            batch = shard_batch(batch, self.dist)  # (b, ...) this process's rows of the global batch
        if cfg.accum_steps > 1:
            self.optimizer.zero_grad(set_to_none=True)
            loss, image_embeds, text_embeds = self._accumulate_gradients(batch)
        else:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self._forward(batch.images, batch.tokens)
                negatives = None
                if cfg.hard_negatives:
                    negatives = model.encode_text(batch.hard_negative_tokens)  # (B, E)
                loss = self._loss(out.image_embeds, out.text_embeds, out.logit_scale, negatives)
            image_embeds, text_embeds = out.image_embeds, out.text_embeds
            logged = self._checked(loss)
            self.optimizer.zero_grad(set_to_none=True)
            self._backward(loss)
            loss = logged
        return {"loss": loss, "image_embeds": image_embeds, "text_embeds": text_embeds}

    def _loss(self, image_embeds, text_embeds, logit_scale, negatives=None) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(image_embeds, text_embeds, logit_scale)
        if self.ddp is not None:
            check, self._shapes_checked = not self._shapes_checked, True  # once: shapes never change
            return distributed_clip_loss(image_embeds, text_embeds, logit_scale, hard_negatives=negatives,
                                         check_shapes=check)
        return clip_loss(image_embeds, text_embeds, logit_scale, hard_negatives=negatives)

    def _checked(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to log (under DDP the mean over processes, so all of them stop together on a
        non-finite value); raises TrainingDiverged when it is not finite."""
        value = global_mean(loss.detach()) if self.ddp is not None else loss
        if not torch.isfinite(value):
            raise TrainingDiverged(
                f"the loss became {value.item()} at step {self.step + 1} (lr {self.scheduler.get_last_lr()[0]:.2e}, "
                f"logit_scale {self.model.logit_scale.item():.3f}). Lower the learning rate or use fp32/bf16; "
                + (f"the last good checkpoint is kept in {self.out_dir}." if self.out_dir else "nothing was saved.")
            )
        return value

    def _backward(self, loss: torch.Tensor) -> None:
        if self.scaler:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _accumulate_gradients(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The gradient of the loss over the whole batch, with the memory of one micro-batch.

        A classification loss is a sum over examples, so its micro-batches can be backpropagated
        one by one. The contrastive loss is not: every row's softmax runs over every column, so
        the loss of a micro-batch against only itself is another objective (fewer negatives).
        What does split is the backward pass. With F_k the features of micro-batch k (K of them)
        and s the logit scale, the chain rule gives

            dL/dθ = Σ_k (∂F_k/∂θ)ᵀ ∂L/∂F_k  +  ∂L/∂s · ds/dθ

        1. Forward every micro-batch under no_grad and keep only its features: (b, E) numbers,
           no activations.
        2. For each k, forward micro-batch k again with gradients and splice its fresh F_k (the
           same values) in place of its cached copy; compute L on the whole batch; backward. Only
           F_k carries a graph, so the pass adds exactly (∂F_k/∂θ)ᵀ ∂L/∂F_k, with ∂L/∂F_k
           evaluated at the whole batch's features, to .grad. Summed over k: the first term.
        3. s enters every pass directly, so it carries a gradient in the last pass only (detached
           in the others); otherwise ∂L/∂s would be counted K times.

        Returns (the whole batch's loss, its image features, its text features). Costs one extra
        forward per micro-batch. Under DDP the loss is the local-loss form over all processes'
        features, and gradients are averaged only after the last micro-batch (``no_sync``).
        """
        import contextlib

        model, k_steps = self.model, self.cfg.accum_steps
        m = batch.images.shape[0] // k_steps
        parts = [slice(k * m, (k + 1) * m) for k in range(k_steps)]
        use_negatives = self.cfg.hard_negatives

        def autocast():
            return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

        with torch.no_grad(), autocast():  # 1. features of every micro-batch, no graph
            images = [model.encode_image(batch.images[p]) for p in parts]  # K x (m, E)
            texts = [model.encode_text(batch.tokens[p]) for p in parts]  # K x (m, E)
            negatives = [model.encode_text(batch.hard_negative_tokens[p]) for p in parts] if use_negatives else None

        def splice(cached, k, fresh):  # (b, E): the cached features with micro-batch k's fresh ones
            return torch.cat([*cached[:k], fresh, *cached[k + 1 :]])

        logged = None
        for k, p in enumerate(parts):  # 2. one micro-batch with gradients at a time
            last = k == k_steps - 1
            no_sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with no_sync:
                with autocast():
                    out = self._forward(batch.images[p], batch.tokens[p])
                    all_negatives = None
                    if use_negatives:
                        all_negatives = splice(negatives, k, model.encode_text(batch.hard_negative_tokens[p]))
                    scale = out.logit_scale if last else out.logit_scale.detach()  # 3.
                    loss = self._loss(splice(images, k, out.image_embeds), splice(texts, k, out.text_embeds),
                                      scale, all_negatives)
                if logged is None:
                    logged = self._checked(loss)  # before any backward: the same value in every pass
                self._backward(loss)
        return logged, torch.cat(images), torch.cat(texts)

    # -- the loop -----------------------------------------------------------------------------
    def fit(
        self,
        resume: bool = False,
        progress: bool = True,
        callback: Callable[[Trainer], None] | None = None,
        max_seconds: float | None = None,
    ) -> History:
        """Train until ``cfg.steps`` (or ``max_seconds`` of wall time; the schedule is unchanged).

        ``resume=True`` continues from ``out_dir``'s checkpoint exactly where it stopped.
        ``callback(trainer)`` runs after every logged step (a live plot, say).
        """
        from tqdm.auto import tqdm

        cfg = self.cfg
        if resume:
            if self.out_dir is None or not (self.out_dir / CHECKPOINT_NAME).exists():
                raise ValueError(f"nothing to resume: no {CHECKPOINT_NAME} in {self.out_dir}")
            self.load_state_dict(load_checkpoint(self.out_dir / CHECKPOINT_NAME))
        main = self.dist.is_main  # under DDP, rank 0 alone shows progress, logs, evaluates and saves
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (progress and main), desc="training", unit="step")
        start = time.perf_counter()
        seconds_before = self.history.seconds
        window_start, window_images = time.perf_counter(), 0
        warned_collapse = False
        batches = self.loader.forever()
        try:
            while self.step < cfg.steps:
                if max_seconds is not None:
                    stop = time.perf_counter() - start >= max_seconds
                    if self.ddp is not None:
                        stop = broadcast_object(stop)  # rank 0's clock decides for all
                    if stop:
                        break
                batch = next(batches)
                out = self.train_step(batch)
                window_images += batch.images.shape[0]
                last = self.step == cfg.steps
                if main and (self.step % cfg.log_every == 0 or last or self.step == 1):
                    now = time.perf_counter()
                    rate = window_images / max(now - window_start, 1e-9)
                    window_start, window_images = now, 0
                    self._log(out, rate)
                    bar.set_postfix(loss=f"{self.history.loss[-1]:.3f}",
                                    temp=f"{math.exp(-self.history.logit_scale[-1]):.4f}",
                                    img_s=f"{rate:.0f}")
                    if not warned_collapse and self.step > cfg.warmup_steps and self.history.collapsed():
                        warned_collapse = True
                        warnings.warn(collapse_message(self.history), stacklevel=2)
                    if callback is not None:
                        callback(self)
                if main and self.eval_fn is not None and (
                    (cfg.eval_every and self.step % cfg.eval_every == 0) or last
                ):
                    self.evaluate()  # the others wait for rank 0 in their next collective
                if self.out_dir is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.history.seconds = seconds_before + time.perf_counter() - start
                    self.save()
                    barrier()  # the checkpoint is whole before any process goes on
                bar.update(1)
        finally:
            bar.close()
        self.history.seconds = seconds_before + time.perf_counter() - start
        if self.out_dir is not None:
            self.save()
        barrier()  # no process returns (and reads the checkpoint, or exits) before rank 0 is done
        self.model.eval()
        return self.history

    def _log(self, out: dict, rate: float) -> None:
        h = self.history
        h.step.append(self.step)
        h.loss.append(out["loss"].item())
        h.logit_scale.append(self.model.logit_scale.item())
        h.lr.append(self.scheduler.get_last_lr()[0])
        h.image_similarity.append(mean_off_diagonal_cosine(out["image_embeds"]))
        h.text_similarity.append(mean_off_diagonal_cosine(out["text_embeds"]))
        h.images_per_s.append(rate)

    def evaluate(self) -> dict:
        self.model.eval()
        with torch.no_grad():
            metrics = dict(self.eval_fn(self.model))
        self.history.evals.append({"step": self.step, **metrics})
        return metrics


def collapse_message(history: History) -> str:
    return (
        f"training looks collapsed at step {history.step[-1]}: loss {history.loss[-1]:.3f} is "
        f"ln(batch) = {math.log(history.batch_size):.3f} and embeddings are all alike (mean cosine "
        f"{min(history.image_similarity[-1], history.text_similarity[-1]):.2f}). Every caption scores "
        "the same against every image, so the gradient says little about which pair matches. Use a "
        "longer warm-up, a lower learning rate, or a smaller initial logit_scale."
    )


# --- recipes: what the notebooks and the command line run -------------------------------------------
@dataclass
class Run:
    """A trained (or loaded) model with everything needed to use it."""

    model: CLIP
    tokenizer: WordTokenizer
    history: History
    train_config: TrainConfig
    out_dir: Path | None
    loaded: bool  # True when it came from an existing checkpoint instead of training


def default_train_config(preset_name: str = "tiny", fast: bool | None = None, **overrides) -> TrainConfig:
    """The recipe for a preset, shrunk in fast mode (CI and laptop CPUs).

    tiny: 1,500 steps of batch 128 (about 5 minutes on a 2-core CPU, under a minute on a GPU);
    fast mode: 150 steps. small: 4,000 steps of batch 256 on a GPU; fast mode: 40 steps.
    """
    from clipedu.runtime import is_fast

    fast = is_fast() if fast is None else fast
    if preset_name == "tiny":
        base = dict(steps=150, warmup_steps=30) if fast else dict(steps=1500, warmup_steps=75)
        base.update(batch_size=128, lr=2e-3)
    elif preset_name == "small":
        if fast:
            base = dict(steps=40, warmup_steps=8, batch_size=64)
        else:
            base = dict(steps=4000, warmup_steps=200, batch_size=256)
        base.update(lr=1e-3, augment=True)
    else:
        raise ValueError(f"no training recipe for preset {preset_name!r}; expected 'tiny' or 'small'")
    base.update(overrides)
    return TrainConfig(**base)


def run_dir_name(dataset: str, preset_name: str, fast: bool) -> str:
    safe = lambda s: "".join(ch if ch.isalnum() else "-" for ch in s)  # noqa: E731
    return f"{safe(dataset)}-{safe(preset_name)}{'-fast' if fast else ''}"


def train_or_load(
    dataset: str = "shapes",
    preset_name: str = "tiny",
    train_config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    data: CaptionedImages | None = None,
    fast: bool | None = None,
    device: str | torch.device | None = None,
    retrain: bool = False,
    progress: bool = True,
    callback=None,
    eval_fn=None,
) -> Run:
    """Load the finished run in ``out_dir`` if there is one for this preset; otherwise train it.

    ``out_dir`` defaults to ``runs/<dataset>-<preset>[-fast]`` in :func:`clipedu.runtime.runs_dir`,
    so every notebook that needs the course's mini-CLIP finds the one notebook 06 trained.
    """
    from clipedu.config import preset
    from clipedu.data import build_tokenizer, get_dataset
    from clipedu.runtime import is_fast, pick_device, runs_dir

    fast = is_fast() if fast is None else fast
    device = torch.device(device) if device is not None else pick_device()
    train_config = train_config or default_train_config(preset_name, fast)
    out_dir = Path(out_dir) if out_dir is not None else runs_dir() / run_dir_name(dataset, preset_name, fast)
    checkpoint = out_dir / CHECKPOINT_NAME
    if checkpoint.exists() and not retrain:
        model, tokenizer, state = model_from_checkpoint(checkpoint, device)
        saved = TrainConfig.from_dict(state["train_config"])
        if state["step"] >= saved.steps:  # a finished run; an unfinished one is resumed below
            return Run(model, tokenizer, History.from_dict(state["history"]), saved, out_dir, loaded=True)
    if data is None:
        data = get_dataset(dataset, "train", **({"n": 4000} if fast and dataset.startswith("shapes") else {}))
    if checkpoint.exists() and not retrain:
        tokenizer = WordTokenizer.from_dict(load_checkpoint(checkpoint)["tokenizer"])
    else:
        tokenizer = build_tokenizer(data)
    cfg = preset(preset_name, vocab_size=max(tokenizer.vocab_size, 8), eot_token_id=tokenizer.eot_id,
                 pad_token_id=tokenizer.pad_id, context_length=tokenizer.context_length)
    from clipedu.runtime import seed_everything

    seed_everything(train_config.seed)
    model = CLIP(cfg)
    trainer = Trainer(model, tokenizer, data, train_config, device=device, out_dir=out_dir, eval_fn=eval_fn)
    resume = checkpoint.exists() and not retrain
    history = trainer.fit(resume=resume, progress=progress, callback=callback)
    return Run(trainer.model.eval(), tokenizer, history, train_config, out_dir, loaded=False)


def estimate_steps(model_cfg: CLIPConfig, tokenizer, data, cfg: TrainConfig, device, seconds: float) -> int:
    """How many steps fit in ``seconds``: time a few steps of a throwaway copy of the run."""
    from dataclasses import replace

    probe_cfg = replace(cfg, steps=12, warmup_steps=1)
    trainer = Trainer(CLIP(model_cfg), tokenizer, data, probe_cfg, device=device)
    batches = trainer.loader.forever()
    for _ in range(2):  # the first steps pay for allocation and kernel selection
        trainer.train_step(next(batches))
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(8):
        trainer.train_step(next(batches))
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / 8
    return max(10, int(seconds / per_step))
