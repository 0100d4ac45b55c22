"""Training BLIP-2's pieces: the tiny LM on captions, then stage 1, then stage 2.

Every stage is the course's loop (:class:`clipedu.loop.Loop`: AdamW on the trainable parameters
only, warm-up then cosine decay, gradient clipping, mixed precision where the hardware has it,
checkpoints that resume exactly) around a different loss, so each stage is a small class that
says what a step computes, and a function that runs it.

The image encoder is frozen, so its tokens for the whole dataset are computed once
(:func:`encode_dataset`) and each step reads its batch from that table: training the Q-Former
then costs nothing for the encoder.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from clipedu.blip2.captioning import Blip2Captioner
from clipedu.blip2.frozen import FrozenImageEncoder
from clipedu.blip2.language_model import (
    LMConfig,
    TinyLM,
    caption_labels,
    lm_loss,
    paired_captions,
    pretraining_offsets,
)
from clipedu.blip2.objectives import Blip2Stage1, duplicate_caption_positives, positives_from_keys
from clipedu.blip2.qformer import QFormer, QFormerConfig
from clipedu.data import CaptionedImages, DeviceLoader, to_float
from clipedu.loop import History, Loop, TrainConfig
from clipedu.runs import keyed_run_dir
from clipedu.runtime import pick_device


def stage_config(steps: int, batch_size: int = 64, lr: float = 1e-3, **overrides) -> TrainConfig:
    """A stage's recipe: BLIP-2's weight decay (0.05), a warm-up over the first tenth of the steps
    and AdamW's own eps (1e-8); ``overrides`` change any of it."""
    return TrainConfig(**{"steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": 0.05,
                          "warmup_steps": None, "eps": 1e-8, **overrides})


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


def _device(device, default: torch.Tensor) -> torch.device:
    return torch.device(device) if device is not None else default.device


# --- the three stages -------------------------------------------------------------------------------------
class LanguageModelPretraining(Loop):
    """The tiny LM on caption text alone: two captions of one picture in a row (see
    :func:`~clipedu.blip2.language_model.paired_captions`), starting at a random position."""

    def __init__(self, lm: TinyLM, tokenizer, data: CaptionedImages, cfg: TrainConfig, device: torch.device,
                 out_dir: str | Path | None = None):
        loader = _loader(data, tokenizer, tokenizer.context_length, cfg.batch_size, device, cfg.seed)
        super().__init__(lm, loader, cfg, device, out_dir=out_dir, name="language model")

    def losses(self, batch) -> dict[str, torch.Tensor]:
        lm, loader, pad = self.model, self.loader, self.model.cfg.pad_token_id
        # A second caption of each picture, drawn from its list (the loader's table of caption ids).
        draw = torch.rand(len(batch.index), generator=self.generator, device=self.device)  # (B,) in [0, 1)
        which = (draw * loader.counts[batch.index]).long()
        second = loader.tokens[loader.caption_ids[batch.index, which]]  # (B, L)
        tokens = trim_padding(paired_captions(batch.tokens, second, pad), pad)  # (B, <= 2L)
        max_offset = lm.cfg.max_positions - tokens.shape[1]
        if max_offset < 0:
            raise ValueError(f"two captions of {tokens.shape[1]} tokens do not fit in the LM's "
                             f"{lm.cfg.max_positions} positions; raise max_positions")
        offset = pretraining_offsets(len(batch.index), max_offset, self.generator)  # (B,)
        logits = lm(tokens, position_offset=offset)
        return {"loss": lm_loss(logits, caption_labels(tokens, pad))}


class Stage1Training(Loop):
    """Stage 1: ITC + ITM + ITG on (frozen image tokens, caption) pairs.

    Two images with the same attributes (or two identical captions) are positives for each other.

    Two options go beyond BLIP-2's recipe (both off by default): ``swapped_negatives`` adds each
    picture's swapped caption (data with ``hard_negatives``, such as ``shapes2``) as a fourth ITM
    pair, so that ITM must read word order; ``itm_weight`` scales the ITM loss in the sum.
    """

    def __init__(self, model: Blip2Stage1, features: torch.Tensor, data: CaptionedImages, tokenizer,
                 cfg: TrainConfig, device: torch.device, out_dir: str | Path | None = None,
                 swapped_negatives: bool = False, itm_weight: float = 1.0):
        _check_features(features, data)
        if swapped_negatives and data.hard_negatives is None:
            raise ValueError(f"swapped_negatives=True needs data with swapped captions (hard_negatives, "
                             f"as get_dataset('shapes2') has); {data.name!r} has none")
        number = isinstance(itm_weight, (int, float)) and not isinstance(itm_weight, bool)
        if not number or not 0 <= itm_weight < float("inf"):
            raise ValueError(f"itm_weight must be a finite number >= 0, got {itm_weight!r}")
        loader = _loader(data, tokenizer, model.cfg.context_length, cfg.batch_size, device, cfg.seed)
        super().__init__(model, loader, cfg, device, out_dir=out_dir, name="stage 1")
        self.features = features.to(self.device)  # (N, N_tok, C)
        self.keys = attribute_keys(data).to(self.device)  # (N,)
        self.swapped_negatives, self.itm_weight = swapped_negatives, float(itm_weight)

    def losses(self, batch) -> dict[str, torch.Tensor]:
        model, pad = self.model, self.model.cfg.pad_token_id
        swapped = None
        if self.swapped_negatives:  # captions and swaps trimmed to one length: ITM stacks them
            both = trim_padding(torch.cat([batch.tokens, batch.hard_negative_tokens]), pad)
            tokens, swapped = both.chunk(2)
        else:
            tokens = trim_padding(batch.tokens, pad)
        positives = positives_from_keys(self.keys[batch.index]) | duplicate_caption_positives(tokens)
        out = model(self.features[batch.index], tokens, positives, generator=self.generator, swapped=swapped)
        loss = out.loss_itc + self.itm_weight * out.loss_itm + out.loss_itg  # weight 1: BLIP-2's sum, bit for bit
        return {"loss": loss, "itc": out.loss_itc, "itm": out.loss_itm, "itg": out.loss_itg}

    def after_step(self) -> None:
        self.model.clamp_logit_scale_()

    def options(self) -> dict:
        return {"swapped_negatives": self.swapped_negatives, "itm_weight": self.itm_weight}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "stage1_options": self.options()}

    def load_state_dict(self, state: dict) -> None:
        """Resume only a run of the same recipe: a checkpoint written with other ``swapped_negatives``
        or ``itm_weight`` would mix two objectives in one run."""
        saved = state.get("stage1_options", {"swapped_negatives": False, "itm_weight": 1.0})  # older files
        if saved != self.options():
            raise ValueError(f"the checkpoint was trained with {saved}, but this run asks for {self.options()}; "
                             "resume with the same options, or start afresh in another folder")
        super().load_state_dict(state)


class Stage2Training(Loop):
    """Stage 2: the frozen LM's loss on captions after the projected query outputs."""

    def __init__(self, captioner: Blip2Captioner, features: torch.Tensor, data: CaptionedImages, tokenizer,
                 cfg: TrainConfig, device: torch.device, out_dir: str | Path | None = None):
        _check_features(features, data)
        context = captioner.language_model.cfg.max_positions - captioner.num_queries
        context = min(context, tokenizer.context_length)
        loader = _loader(data, tokenizer, context, cfg.batch_size, device, cfg.seed)
        super().__init__(captioner, loader, cfg, device, out_dir=out_dir, name="stage 2")
        self.features = features.to(self.device)  # (N, N_tok, C)

    def losses(self, batch) -> dict[str, torch.Tensor]:
        tokens = trim_padding(batch.tokens, self.model.language_model.cfg.pad_token_id)
        return {"loss": self.model(self.features[batch.index], tokens)}


def pretrain_language_model(lm: TinyLM, tokenizer, data: CaptionedImages, cfg: TrainConfig, device=None,
                            progress: bool = True, out_dir: str | Path | None = None,
                            resume: bool | str = False) -> History:
    """Train the tiny LM on caption text (:class:`LanguageModelPretraining`); returns its history."""
    loop = LanguageModelPretraining(lm, tokenizer, data, cfg, _device(device, next(lm.parameters())), out_dir)
    return loop.fit(resume=resume, progress=progress)


def train_stage1(model: Blip2Stage1, features: torch.Tensor, data: CaptionedImages, tokenizer, cfg: TrainConfig,
                 device=None, progress: bool = True, out_dir: str | Path | None = None,
                 resume: bool | str = False, swapped_negatives: bool = False, itm_weight: float = 1.0) -> History:
    """Stage 1 (:class:`Stage1Training`, where ``swapped_negatives`` and ``itm_weight`` are
    explained) on the frozen encoder's ``features`` of ``data``."""
    _check_features(features, data)
    loop = Stage1Training(model, features, data, tokenizer, cfg, _device(device, features), out_dir,
                          swapped_negatives=swapped_negatives, itm_weight=itm_weight)
    return loop.fit(resume=resume, progress=progress)


def train_stage2(captioner: Blip2Captioner, features: torch.Tensor, data: CaptionedImages, tokenizer,
                 cfg: TrainConfig, device=None, progress: bool = True, out_dir: str | Path | None = None,
                 resume: bool | str = False) -> History:
    """Stage 2 (:class:`Stage2Training`) on the frozen encoder's ``features`` of ``data``."""
    _check_features(features, data)
    loop = Stage2Training(captioner, features, data, tokenizer, cfg, _device(device, features), out_dir)
    return loop.fit(resume=resume, progress=progress)


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
    lm: TrainConfig = field(default_factory=lambda: stage_config(steps=3000, batch_size=128, lr=2e-3))
    stage1: TrainConfig = field(default_factory=lambda: stage_config(steps=3000, batch_size=128, lr=1e-3))
    stage2: TrainConfig = field(default_factory=lambda: stage_config(steps=2000, batch_size=128, lr=1e-3))
    sweep_queries: tuple[int, ...] = (1, 2, 4, 8, 16)
    sweep_stage1_steps: int = 1000  # each number of queries: a shorter stage 1, measured by ITC and ITG
    retrieval_k: int = 16

    @classmethod
    def for_mode(cls, mode: str | bool) -> Blip2Recipe:
        """``"full"`` (a GPU) gets the full recipe; ``"fast"`` and ``"cpu"`` (CI, a laptop) the CPU
        one, about a minute of training: the full recipe's 8,000 steps at width 128 are a GPU's work.
        A bool is the older fast flag (False means full)."""
        if isinstance(mode, bool):
            mode = "fast" if mode else "full"
        if mode not in ("fast", "cpu", "full"):
            raise ValueError(f"mode must be 'fast', 'cpu' or 'full', got {mode!r}")
        if mode == "full":
            return cls(train_images=20_000, test_images=1000)
        return cls(
            train_images=2000, test_images=100, qformer_width=64, qformer_layers=2, qformer_heads=2,
            lm_width=64, lm_layers=2, lm_heads=4,  # 2 heads of 32 needed 1,500 steps to read size words
            lm=stage_config(steps=1200, batch_size=64, lr=3e-3),  # 1,000 left them unread in 2 runs of 9
            stage1=stage_config(steps=300, batch_size=32, lr=2e-3),
            stage2=stage_config(steps=200, batch_size=32, lr=3e-3),
            sweep_queries=(1, 4, 16), sweep_stage1_steps=100, retrieval_k=8,
        )

    def qformer_config(self, tokenizer, image_width: int, num_queries: int | None = None) -> QFormerConfig:
        return QFormerConfig(
            vocab_size=tokenizer.vocab_size, image_width=image_width,
            num_queries=self.num_queries if num_queries is None else num_queries,
            width=self.qformer_width, layers=self.qformer_layers, heads=self.qformer_heads,
            context_length=tokenizer.context_length, pad_token_id=tokenizer.pad_id, sot_token_id=tokenizer.sot_id,
            eot_token_id=tokenizer.eot_id,
        )

    def lm_config(self, tokenizer) -> LMConfig:
        return LMConfig.for_tokenizer(tokenizer, width=self.lm_width, layers=self.lm_layers, heads=self.lm_heads)


# --- notebook 17's stage 1, kept for notebook 18 ------------------------------------------------------------
@dataclass
class WordOrderStage1:
    """Notebook 17's stage 1, as :func:`word_order_stage1` trained or loaded it."""

    model: Blip2Stage1  # after stage 1
    start_qformer: QFormer  # a copy of the Q-Former where stage 1 started (the text tower's weights)
    history: History
    train_config: TrainConfig
    options: dict  # the stage-1 options beside the config: the swaps as ITM's fourth pair, the ITM weight
    out_dir: Path


def word_order_stage1(encoder: FrozenImageEncoder, text_tower, tokenizer, data: CaptionedImages,
                      features: torch.Tensor, *, seed: int = 0, steps: int = 1500, mode: str | None = None,
                      device=None, progress: bool = False) -> WordOrderStage1:
    """Notebook 17's stage 1 (two-object scenes, the swaps as ITM's fourth pair, ITM weighted 3x),
    trained once and kept: notebook 18 loads the same run. Its Q-Former has notebook 11's fast-mode
    sizes in every mode, is drawn after ``torch.manual_seed(seed)`` (so the run does not depend on
    what ran before) and starts from ``text_tower``'s weights
    (:meth:`~clipedu.blip2.qformer.QFormer.init_from_text_encoder`); ``features`` are ``encoder``'s
    tokens for ``data``. The run folder is :func:`~clipedu.runs.keyed_run_dir` of everything the run
    depends on, so a second call with the same inputs only loads."""
    device = torch.device(device) if device is not None else pick_device()
    recipe = Blip2Recipe.for_mode("fast")
    torch.manual_seed(seed)
    model = Blip2Stage1(recipe.qformer_config(tokenizer, encoder.width), encoder).to(device).eval()
    model.qformer.init_from_text_encoder(text_tower)
    start_qformer = copy.deepcopy(model.qformer)
    train_config = replace(recipe.stage1, steps=steps, warmup_steps=None, seed=seed)
    options = dict(swapped_negatives=True, itm_weight=3.0)
    out_dir = keyed_run_dir("shapes2", "word-order-stage1", model, data.images, data.captions, data.hard_negatives,
                            train_config, options, mode=mode)
    history = train_stage1(model, features, data, tokenizer, train_config, device, progress=progress,
                           out_dir=out_dir, resume="auto", **options)
    return WordOrderStage1(model, start_qformer, history, train_config, options, out_dir)
