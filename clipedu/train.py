"""Training a mini-CLIP (notebook 06).

One step:  batch -> model -> symmetric contrastive loss -> backward -> clip gradients -> AdamW
           -> learning-rate schedule -> clamp logit_scale to ln(100).

:class:`Trainer` is the course's :class:`~clipedu.loop.Loop` (recipe, history, checkpoints,
resume) for a CLIP on captioned images, with what only CLIP needs: the contrastive batch kept
whole across processes (DDP) and across micro-batches (accumulation), hard negatives, and an
alarm for *collapse* (every embedding the same, the loss stuck at ln(batch)).

Why collapse happens: at logit_scale = ln(1/0.07) the logits are 14x the cosines. Early in training
a large learning-rate step can push all embeddings of one tower towards one direction; then every
row of the logit matrix is constant, the softmax is uniform, the loss is exactly ln(B) and its
gradient carries almost no signal about *which* pair matches. A learning-rate warm-up long enough
for the towers to separate their inputs first (or a smaller initial scale) avoids it.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from clipedu.clip import CLIP
from clipedu.data import CaptionedImages, DeviceLoader
from clipedu.distributed import check_batch_divides, current, distributed_clip_loss, shard_batch
from clipedu.loop import History, Loop, TrainConfig
from clipedu.losses import clip_loss
from clipedu.runtime import pick_device
from clipedu.tokenizer import WordTokenizer


# --- collapse --------------------------------------------------------------------------------------
def mean_off_diagonal_cosine(embeds: torch.Tensor) -> float:
    """How alike a batch of unit vectors is: 1.0 means all the same (collapse), ~0 means spread."""
    b = embeds.shape[0]
    if b < 2:
        return 0.0
    e = embeds.detach().float()
    total = e.sum(0)  # sum_ij <e_i, e_j> = |sum_i e_i|^2, and the diagonal adds b
    return ((total @ total - b) / (b * (b - 1))).item()


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


def collapsed(history: History, min_steps: int = 25) -> bool:
    """True when every logged step of the last ``min_steps`` steps (at least three logs) looks
    collapsed (see :func:`looks_collapsed`). A step or two at ln(B) is normal just after the
    warm-up; a plateau that lasts is not."""
    if not history.step:
        return False
    steps = history.step
    recent = [i for i, s in enumerate(steps) if s > steps[-1] - min_steps]
    if len(recent) < 3 or steps[-1] - steps[recent[0]] < min_steps - max(1, min_steps // 5):
        return False
    return all(
        looks_collapsed(history.loss[i], history.image_similarity[i], history.text_similarity[i],
                        history.batch_size)
        for i in recent
    )


def collapse_message(history: History) -> str:
    return (
        f"training looks collapsed at step {history.step[-1]}: loss {history.loss[-1]:.3f} is "
        f"ln(batch) = {math.log(history.batch_size):.3f} and embeddings are all alike (mean cosine "
        f"{min(history.image_similarity[-1], history.text_similarity[-1]):.2f}). Every caption scores "
        "the same against every image, so the gradient says little about which pair matches. Use a "
        "longer warm-up, a lower learning rate, or a smaller initial logit_scale."
    )


# --- the loop ---------------------------------------------------------------------------------------
class Trainer(Loop):
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

    ``loss_fn(image_embeds, text_embeds, scale)``, when given, replaces the CLIP loss (say, to
    compare with a weaker objective in a notebook); it gets this process's features.
    """

    contrastive = True

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
        cfg = cfg or TrainConfig()
        dist = current()
        # The global batch must split evenly among processes, and each share into micro-batches.
        check_batch_divides(cfg.batch_size, dist.world_size, cfg.accum_steps)
        device = torch.device(device) if device is not None else pick_device()
        if dist.enabled and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", dist.local_rank)  # one GPU per process
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
        if isinstance(data, CaptionedImages) and cfg.batch_size > len(data):
            raise ValueError(
                f"batch_size {cfg.batch_size} is larger than the training data {data.name!r} ({len(data)} images): "
                f"a step would have no full batch; use TrainConfig(batch_size=...) of at most {len(data)}"
            )
        if cfg.hard_negatives and data.hard_negatives is None:
            raise ValueError(f"hard_negatives=True needs data with swapped captions; {data.name!r} has none")
        if loss_fn is not None and cfg.hard_negatives:
            raise ValueError("a custom loss_fn takes no hard negatives; use hard_negatives=False with it")
        loader = DeviceLoader(
            data, lambda texts: tokenizer(texts, context_length=model.cfg.text.context_length, truncate=True),
            batch_size=cfg.batch_size, device=device, shuffle=True, augment=cfg.augment,
            seed=cfg.seed, expected_image_size=model.cfg.vision.image_size,
        )
        super().__init__(model, loader, cfg, device, out_dir=out_dir, eval_fn=eval_fn)
        self.tokenizer = tokenizer
        self.data = data
        self.loss_fn = loss_fn
        if self.dist.enabled:
            # DDP copies rank 0's weights to every process now, and averages gradients in backward.
            self.ddp = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self._forward = self.ddp if self.ddp is not None else model
        self._shapes_checked = False
        self._warned_collapse = False

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {**super().state_dict(), "config": self.model.cfg.to_dict(), "tokenizer": self.tokenizer.to_dict(),
                 "dataset": self.data.name}
        if self.data.info.get("source") is not None:  # how to read data its name does not lead to (the CLI's folders)
            state["dataset_source"] = self.data.info["source"]
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != self.model.cfg.to_dict():
            raise ValueError(
                "the checkpoint was trained with another model config:\n"
                f"  checkpoint: {state['config']}\n  this run:   {self.model.cfg.to_dict()}"
            )
        if state["tokenizer"] != self.tokenizer.to_dict():
            raise ValueError("the checkpoint's tokenizer vocabulary differs from this run's")
        super().load_state_dict(state)

    # -- one step ---------------------------------------------------------------------------------
    def losses(self, batch) -> dict[str, torch.Tensor]:
        out = self._forward(batch.images, batch.tokens)
        negatives = None
        if self.cfg.hard_negatives:
            negatives = self.model.encode_text(batch.hard_negative_tokens)  # (B, E)
        loss = self._loss(out.image_embeds, out.text_embeds, out.scale, negatives)
        return {"loss": loss, "image_embeds": out.image_embeds, "text_embeds": out.text_embeds}

    def compute_gradients(self, batch) -> dict:
        """Set ``.grad`` of every parameter to the gradient of the loss on ``batch`` (scaled by the
        GradScaler when there is one; averaged over processes under DDP), without a step.

        Returns {"loss": the batch's loss (under DDP: the mean over processes), "image_embeds",
        "text_embeds": this process's features}.
        """
        if self.ddp is not None:
            batch = shard_batch(batch, self.dist)  # (b, ...) this process's rows of the global batch
        if self.cfg.accum_steps == 1:
            return super().compute_gradients(batch)
        self.train_mode()
        self.optimizer.zero_grad(set_to_none=True)
        loss, image_embeds, text_embeds = self._accumulate_gradients(batch)
        return {"loss": loss, "image_embeds": image_embeds, "text_embeds": text_embeds}

    def after_step(self) -> None:
        self.model.clamp_logit_scale_()

    def _loss(self, image_embeds, text_embeds, scale, negatives=None) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(image_embeds, text_embeds, scale)
        if self.ddp is not None:
            check, self._shapes_checked = not self._shapes_checked, True  # once: shapes never change
            return distributed_clip_loss(image_embeds, text_embeds, scale, hard_negatives=negatives,
                                         check_shapes=check)
        return clip_loss(image_embeds, text_embeds, scale, hard_negatives=negatives)

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
        model, k_steps = self.model, self.cfg.accum_steps
        m = batch.images.shape[0] // k_steps
        parts = [slice(k * m, (k + 1) * m) for k in range(k_steps)]
        use_negatives = self.cfg.hard_negatives

        with torch.no_grad(), self.precision.autocast():  # 1. features of every micro-batch, no graph
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
                with self.precision.autocast():
                    out = self._forward(batch.images[p], batch.tokens[p])
                    all_negatives = None
                    if use_negatives:
                        all_negatives = splice(negatives, k, model.encode_text(batch.hard_negative_tokens[p]))
                    scale = out.scale if last else out.scale.detach()  # 3.
                    loss = self._loss(splice(images, k, out.image_embeds), splice(texts, k, out.text_embeds),
                                      scale, all_negatives)
                if logged is None:
                    logged = self._checked(loss)  # before any backward: the same value in every pass
                self.precision.backward(loss)
        return logged, torch.cat(images), torch.cat(texts)

    # -- logging ----------------------------------------------------------------------------------
    def logged(self, out: dict) -> dict[str, float]:
        return {"logit_scale": self.model.logit_scale.item(),
                "image_similarity": mean_off_diagonal_cosine(out["image_embeds"]),
                "text_similarity": mean_off_diagonal_cosine(out["text_embeds"])}

    def postfix(self) -> dict[str, str]:
        return {"temp": f"{math.exp(-self.history.logit_scale[-1]):.4f}"}

    def after_log(self) -> None:
        if not self._warned_collapse and self.step > self.cfg.warmup_steps and collapsed(self.history):
            self._warned_collapse = True
            warnings.warn(collapse_message(self.history), stacklevel=3)  # points at the call of fit()

    def diagnosis(self) -> str:
        return f"{super().diagnosis()}, logit_scale {self.model.logit_scale.item():.3f}"
