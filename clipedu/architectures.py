"""Encoder-only, decoder-only, prefix-LM and encoder-decoder transformers, side by side (notebook 16).

All four read a picture and a question and are built from the same pre-LN block
(:mod:`clipedu.transformer`); they differ in who may attend to whom and in how the answer comes out:

- **encoder-only** (ViT, BERT, CLIP's image tower): ``[CLS, patches, question]``, every token sees
  every token; a linear head on the CLS output picks one answer word. One pass, one word.
- **decoder-only** (GPT): ``[patches, question, answer so far]`` under the causal mask, even over
  the picture; the answer is generated a word at a time.
- **prefix-LM** (PaLI's and many VLMs' decoders, BLIP-2 with a T5 "prefix"): the same sequence,
  bidirectional over the prefix (patches and question), causal over the answer.
- **encoder-decoder** (the original Transformer, T5): an encoder reads patches and question both
  ways; a separate decoder writes the answer causally and, in every one of its blocks, reads the
  encoder's *final* outputs through cross-attention with that block's own weights.

The tasks (:func:`make_tasks`) come from ShapesWorld: **classify** (name the shape), **caption**
(describe size, colour, shape and place) and **vqa** (two objects; "what colour is the square?").
Every model returns logits ``(B, T, V)`` for the answer positions, so one loss, one training loop
and one evaluation serve all four.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipedu.attention import prefix_mask
from clipedu.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    keyed_folder,
    load_checkpoint,
    run_lock,
    save_checkpoint,
)
from clipedu.data.base import to_float
from clipedu.data.shapes import ShapesWorld
from clipedu.patches import PatchEmbedding
from clipedu.recipe import make_optimizer, make_scheduler, parameter_groups
from clipedu.tokenizer import SPECIALS, WordTokenizer
from clipedu.transformer import DecoderBlock, Transformer

ARCHITECTURES = ("encoder-only", "decoder-only", "prefix-LM", "encoder-decoder")
TASKS = ("classify", "caption", "vqa")
PROMPTS = {
    "classify": "what shape is this object ?",
    "caption": "describe this picture in words .",
    "vqa": "what colour is the {} ?",
}
PROMPT_LENGTH = 6  # every prompt above is six words, so no prompt needs padding
ANSWER_LENGTH = 5  # the longest answer: a caption "small red square top left"


# --- measuring a mask ------------------------------------------------------------------------------
@torch.no_grad()
def influence_matrix(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(N, N): entry (i, j) is how much output token i moves when input token j is changed.

    ``fn`` maps tokens (B, N, D) to outputs (B, N, D'). Each input token j in turn gets random
    noise of size ``scale`` added; the entry is the largest absolute change of output i over the
    batch and the features. An exact zero means output i cannot see input j: measured, this is
    the attention mask of the whole stack.
    """
    if x.dim() != 3:
        raise ValueError(f"expected tokens of shape (B, N, D), got {tuple(x.shape)}")
    base = fn(x)  # (B, N, D')
    if base.dim() != 3 or base.shape[:2] != x.shape[:2]:
        raise ValueError(f"fn must return (B, N, D') outputs for (B, N, D) inputs, got {tuple(base.shape)}")
    n = x.shape[1]
    gen = torch.Generator().manual_seed(0)
    out = torch.zeros(n, n)
    for j in range(n):
        moved = x.clone()
        moved[:, j] += scale * torch.randn(moved[:, j].shape, generator=gen).to(x)
        out[:, j] = (fn(moved) - base).abs().amax(dim=(0, 2)).float().cpu()  # (N,)
    return out


# --- the tasks ------------------------------------------------------------------------------------
def task_tokenizer() -> WordTokenizer:
    """The words of every prompt and answer, in a fixed order (the same ids in every split)."""
    words = set()
    for prompt in PROMPTS.values():
        words.update(prompt.replace("{}", "").split())
    for names in (ShapesWorld.SHAPES, ShapesWorld.COLOURS, ShapesWorld.SIZES, ShapesWorld.POSITIONS):
        for name in names:
            words.update(name.split())
    return WordTokenizer(list(SPECIALS) + sorted(words), context_length=ANSWER_LENGTH + 2)


@dataclass
class TaskSet:
    """Pictures with a question and its answer each.

    - ``images``: uint8 (N, 3, S, S);
    - ``task``: (N,) index into :data:`TASKS`;
    - ``prompts``: (N, 6) word ids of the question (no ``<sot>``, no ``<eot>``);
    - ``targets``: (N, 7) ``<sot>``, the answer's words, ``<eot>``, then padding;
    - ``answers``: the answers as text; ``distractors``: for a vqa question the *other* object's
      colour (what a model that ignores which shape was asked about says half the time), else None;
    - ``regions``: (N, 2, S, S) how much of each pixel the object asked about covers (the only
      object, for classify and caption), then the other object (zeros when there is none).
    """

    images: torch.Tensor
    task: torch.Tensor
    prompts: torch.Tensor
    targets: torch.Tensor
    answers: list[str]
    distractors: list[str | None]
    tokenizer: WordTokenizer = field(repr=False)
    regions: torch.Tensor | None = field(default=None, repr=False)
    features: torch.Tensor | None = field(default=None, repr=False)  # (N, P, C) frozen-tower patch tokens

    @property
    def pictures(self) -> torch.Tensor:
        """What a model reads as the picture: the tower's patch tokens if there are any, else the images."""
        return self.images if self.features is None else self.features

    def __len__(self) -> int:
        return len(self.answers)

    def select(self, index) -> TaskSet:
        """The examples at ``index`` (a LongTensor of positions or a boolean mask)."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        rows = index.tolist()
        return TaskSet(self.images[index], self.task[index], self.prompts[index], self.targets[index],
                       [self.answers[i] for i in rows], [self.distractors[i] for i in rows], self.tokenizer,
                       None if self.regions is None else self.regions[index],
                       None if self.features is None else self.features[index])

    def only(self, *tasks: str) -> TaskSet:
        """The examples of the named tasks."""
        for name in tasks:
            if name not in TASKS:
                raise ValueError(f"unknown task {name!r}; the tasks are {TASKS}")
        keep = torch.zeros(len(self), dtype=torch.bool)
        for name in tasks:
            keep |= self.task == TASKS.index(name)
        return self.select(keep)


def make_tasks(n: int, split: str = "train", seed: int = 0, image_size: int = 32) -> TaskSet:
    """``n`` one-object pictures, each asked to be classified and to be captioned, and ``n``
    two-object pictures, each asked the colour of one of its two shapes (chosen at random): 3n
    examples, tasks in the order of :data:`TASKS`. The same (n, split, seed) gives the same set."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    tokenizer = task_tokenizer()
    one = ShapesWorld(image_size=image_size, num_objects=1, seed=seed).generate(n, split, geometry=True)
    two = ShapesWorld(image_size=image_size, num_objects=2, seed=seed).generate(n, split, geometry=True)
    one_masks = torch.cat([one.info["masks"], torch.zeros_like(one.info["masks"])], 1)  # (n, 2, S, S)
    names = one.class_names
    rows = []  # (image, task, prompt, answer, distractor, regions)
    for i in range(n):
        shape, colour = names["shape"][one.labels["shape"][i]], names["colour"][one.labels["colour"][i]]
        size, position = names["size"][one.labels["size"][i]], names["position"][one.labels["position"][i]]
        rows.append((one.images[i], 0, PROMPTS["classify"], shape, None, one_masks[i]))
        rows.append((one.images[i], 1, PROMPTS["caption"], f"{size} {colour} {shape} {position}", None, one_masks[i]))
    gen = torch.Generator().manual_seed(seed * 7919 + 1 + ("train", "test", "heldout").index(split))
    asked_second = torch.randint(2, (n,), generator=gen).tolist()
    for i in range(n):
        first = (names["shape"][two.labels["shape"][i]], names["colour"][two.labels["colour"][i]])
        second = (names["shape"][two.labels["shape2"][i]], names["colour"][two.labels["colour2"][i]])
        asked, other = (second, first) if asked_second[i] else (first, second)
        masks = two.info["masks"][i].flip(0) if asked_second[i] else two.info["masks"][i]  # asked first
        rows.append((two.images[i], 2, PROMPTS["vqa"].format(asked[0]), asked[1], other[1], masks))
    order = sorted(range(len(rows)), key=lambda r: rows[r][1])  # classify, caption, vqa
    rows = [rows[r] for r in order]
    prompts = torch.tensor([[tokenizer.index[w] for w in r[2].split()] for r in rows])  # (3n, 6)
    return TaskSet(
        images=torch.stack([r[0] for r in rows]),
        task=torch.tensor([r[1] for r in rows]),
        prompts=prompts,
        targets=tokenizer([r[3] for r in rows]),  # (3n, 7): <sot> words <eot> <pad>...
        answers=[r[3] for r in rows],
        distractors=[r[4] for r in rows],
        tokenizer=tokenizer,
        regions=torch.stack([r[5] for r in rows]),
    )


@torch.no_grad()
def tower_tokens(vision: nn.Module, data: TaskSet, batch_size: int = 500) -> TaskSet:
    """``data`` with ``features``: the patch tokens (N, P, D) of a frozen CLIP image tower
    (:class:`clipedu.vision.VisionTransformer`), computed once, on the CPU."""
    vision.eval()
    device = next(vision.parameters()).device
    out = []
    for i in range(0, len(data), batch_size):
        x = to_float(data.images[i:i + batch_size].to(device), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        out.append(vision(x).patch_tokens.float().cpu())
    return replace(data, features=torch.cat(out))


# --- the models -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchitectureConfig:
    """Sizes shared by the four models. ``layers`` is the depth of the one stack of the
    encoder-only, decoder-only and prefix-LM models; the encoder-decoder splits it, ``layers // 2``
    blocks each side (its decoder blocks carry cross-attention too, so it has more parameters)."""

    vocab_size: int
    image_size: int = 32
    patch_size: int = 8
    width: int = 64
    layers: int = 4
    heads: int = 4
    feature_width: int | None = None  # set: the picture comes as a frozen tower's patch tokens of this width

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.layers < 2 or self.layers % 2:
            raise ValueError(f"layers must be an even number of at least 2, got {self.layers}")

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> floats in [-1, 1]."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images (B, 3, S, S), got {images.dtype} {tuple(images.shape)}")
    return images.float() / 127.5 - 1.0


class _Reader(nn.Module):
    """What every model shares: picture and word embeddings, a final LayerNorm, a head onto the words.

    The picture comes in one of two forms: uint8 images, cut into patches and embedded here
    (``cfg.feature_width`` None), or the patch tokens of a frozen image tower (N, C), mapped to
    the model's width by one linear layer, as BLIP-2 reads its frozen encoder.
    """

    kind = ""

    def __init__(self, cfg: ArchitectureConfig, positions: int):
        super().__init__()
        self.cfg = cfg
        if cfg.feature_width:
            self.picture_proj = nn.Linear(cfg.feature_width, cfg.width)
        else:
            self.patch_embed = PatchEmbedding(cfg.patch_size, cfg.width)
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.randn(positions, cfg.width) * 0.02)
        self.ln_post = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab_size)

    def prefix(self, pictures: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Picture tokens then question tokens: (B, N + 6, D), no position yet."""
        device = self.pos_embed.device
        if self.cfg.feature_width:
            if pictures.dim() != 3 or pictures.shape[1:] != (self.cfg.patches, self.cfg.feature_width):
                raise ValueError(f"expected patch tokens (B, {self.cfg.patches}, {self.cfg.feature_width}), "
                                 f"got {tuple(pictures.shape)}")
            picture = self.picture_proj(pictures.to(device, torch.float32))
        else:
            picture = self.patch_embed(_pixels(pictures).to(device))
        return torch.cat([picture, self.token_embed(prompts.to(device))], 1)

    def parameters_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


class EncoderOnly(_Reader):
    """``[CLS, patches, question]`` both ways; the answer is one word read off the CLS output."""

    kind = "encoder-only"

    def __init__(self, cfg: ArchitectureConfig):
        super().__init__(cfg, 1 + cfg.patches + PROMPT_LENGTH)
        self.cls_token = nn.Parameter(torch.randn(cfg.width) * 0.02)
        self.blocks = Transformer(cfg.width, cfg.layers, cfg.heads)

    def embed(self, images, prompts, targets_in=None) -> torch.Tensor:
        x = self.prefix(images, prompts)
        x = torch.cat([self.cls_token.expand(len(x), 1, -1), x], 1)
        return x + self.pos_embed

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_post(self.blocks(x))

    def mask(self, answer_length: int = 0) -> torch.Tensor:
        n = 1 + self.cfg.patches + PROMPT_LENGTH
        return torch.ones(n, n, dtype=torch.bool)

    def forward(self, images, prompts, targets_in=None) -> torch.Tensor:
        """(B, 1, V): the logits of the answer's one word."""
        return self.head(self.run(self.embed(images, prompts))[:, :1])


class DecoderOnly(_Reader):
    """``[patches, question, <sot> answer...]`` under one mask: causal everywhere (``prefix=False``,
    decoder-only) or both ways over patches and question (``prefix=True``, prefix-LM)."""

    def __init__(self, cfg: ArchitectureConfig, prefix: bool = False):
        super().__init__(cfg, cfg.patches + PROMPT_LENGTH + ANSWER_LENGTH + 1)
        self.is_prefix_lm = prefix
        self.kind = "prefix-LM" if prefix else "decoder-only"
        self.blocks = Transformer(cfg.width, cfg.layers, cfg.heads)

    def embed(self, images, prompts, targets_in) -> torch.Tensor:
        x = torch.cat([self.prefix(images, prompts), self.token_embed(targets_in)], 1)
        return x + self.pos_embed[: x.shape[1]]

    def mask(self, answer_length: int = ANSWER_LENGTH + 1) -> torch.Tensor:
        n_prefix = self.cfg.patches + PROMPT_LENGTH
        return prefix_mask(n_prefix if self.is_prefix_lm else 0, n_prefix + answer_length)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_prefix_lm:
            mask = self.mask(x.shape[1] - self.cfg.patches - PROMPT_LENGTH).to(x.device)
            return self.ln_post(self.blocks(x, mask=mask))
        return self.ln_post(self.blocks(x, is_causal=True))

    def forward(self, images, prompts, targets_in) -> torch.Tensor:
        """(B, T, V): at each answer position, the logits of the next word."""
        hidden = self.run(self.embed(images, prompts, targets_in))
        return self.head(hidden[:, -targets_in.shape[1]:])


class EncoderDecoder(_Reader):
    """An encoder over ``[patches, question]`` (both ways) and a decoder over ``<sot> answer...``
    (causal) whose every block cross-attends to the encoder's final outputs."""

    kind = "encoder-decoder"

    def __init__(self, cfg: ArchitectureConfig):
        super().__init__(cfg, cfg.patches + PROMPT_LENGTH)
        self.encoder = Transformer(cfg.width, cfg.layers // 2, cfg.heads)
        self.ln_memory = nn.LayerNorm(cfg.width)
        self.target_pos_embed = nn.Parameter(torch.randn(ANSWER_LENGTH + 1, cfg.width) * 0.02)
        self.decoder = nn.ModuleList(DecoderBlock(cfg.width, cfg.heads) for _ in range(cfg.layers // 2))

    @property
    def source_length(self) -> int:
        return self.cfg.patches + PROMPT_LENGTH

    def embed(self, images, prompts, targets_in) -> torch.Tensor:
        """Source and target tokens side by side, (B, S + T, D), so one tensor can be probed."""
        source = self.prefix(images, prompts) + self.pos_embed
        target = self.token_embed(targets_in) + self.target_pos_embed[: targets_in.shape[1]]
        return torch.cat([source, target], 1)

    def mask(self, answer_length: int = ANSWER_LENGTH + 1) -> torch.Tensor:
        """Who can influence whom: the same pattern as a prefix-LM's, reached by other wiring."""
        return prefix_mask(self.source_length, self.source_length + answer_length)

    def encode(self, source: torch.Tensor) -> torch.Tensor:
        return self.ln_memory(self.encoder(source))

    def decode(self, target: torch.Tensor, memory: torch.Tensor, need_weights: bool = False):
        """(B, T, D) target tokens and the encoder's outputs -> (B, T, D), and each block's
        cross-attention weights (B, H, T, S) when asked for."""
        crosses = []
        for block in self.decoder:
            target, _, cross = block(target, memory, need_weights=need_weights)
            crosses.append(cross)
        return self.ln_post(target), crosses

    def run(self, x: torch.Tensor) -> torch.Tensor:
        memory = self.encode(x[:, : self.source_length])
        out, _ = self.decode(x[:, self.source_length:], memory)
        return torch.cat([memory, out], 1)

    def forward(self, images, prompts, targets_in) -> torch.Tensor:
        x = self.embed(images, prompts, targets_in)
        return self.head(self.run(x)[:, self.source_length:])


def build(kind: str, cfg: ArchitectureConfig) -> _Reader:
    """One of :data:`ARCHITECTURES`, with random weights."""
    if kind == "encoder-only":
        return EncoderOnly(cfg)
    if kind in ("decoder-only", "prefix-LM"):
        return DecoderOnly(cfg, prefix=kind == "prefix-LM")
    if kind == "encoder-decoder":
        return EncoderDecoder(cfg)
    raise ValueError(f"unknown architecture {kind!r}; expected one of {ARCHITECTURES}")


def suits(kind: str) -> tuple[str, ...]:
    """The tasks an architecture can be trained on: an encoder-only model answers with one word,
    so it cannot caption; the others generate, so they do all three."""
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {kind!r}; expected one of {ARCHITECTURES}")
    return ("classify", "vqa") if kind == "encoder-only" else TASKS


# --- training and answering -----------------------------------------------------------------------
def task_loss(model: _Reader, images, prompts, targets) -> torch.Tensor:
    """Cross-entropy of the answer words given the picture and the question (teacher forcing:
    the model sees the true words before each one it predicts); padding does not count."""
    targets = targets.to(model.pos_embed.device)
    logits = model(images, prompts.to(targets.device), targets[:, :-1])  # (B, T, V)
    wanted = targets[:, 1: 1 + logits.shape[1]]  # (B, T): the next word at each position
    return F.cross_entropy(logits.flatten(0, 1), wanted.flatten(), ignore_index=0)


@dataclass
class ArchitectureRun:
    model: _Reader
    losses: list[float]
    seconds: float
    steps: int


def train_architecture(kind: str, data: TaskSet, steps: int = 300, batch_size: int = 128, lr: float = 2e-3,
                       cfg: ArchitectureConfig | None = None, seed: int = 0, device=None,
                       mix: dict[str, float] | None = None, keep_in: str | Path | None = None) -> ArchitectureRun:
    """Train one architecture on the tasks it suits, drawn at random from ``data``: AdamW, a
    warm-up over a tenth of the steps, then cosine decay; gradients clipped at norm 1.

    ``mix``: task -> share of each batch (the tasks the architecture suits; by default equal shares).
    ``keep_in``: a folder to keep the run in (notebook 16 gives one in its runs folder). The run is
    saved in a subfolder named by everything it depends on (the architecture, its starting weights,
    the training data and every setting above), and a second call with the same inputs loads it,
    its losses and its training time, instead of training again.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    tasks = suits(kind)
    mix = {t: 1.0 for t in tasks} if mix is None else {t: float(mix.get(t, 0.0)) for t in tasks}
    if any(w < 0 for w in mix.values()) or not sum(mix.values()) > 0:
        raise ValueError(f"mix must give the tasks {tasks} non-negative shares, not all zero; got {mix}")
    device = torch.device(device or "cpu")
    if cfg is None:
        width = None if data.features is None else data.features.shape[-1]
        cfg = ArchitectureConfig(vocab_size=data.tokenizer.vocab_size, feature_width=width)
    torch.manual_seed(seed)
    model = build(kind, cfg).to(device)
    data = data.only(*tasks)
    if keep_in is None:
        return _train_architecture(model, data, tasks, steps, batch_size, lr, seed, device, mix)
    settings = dict(kind=kind, steps=steps, batch_size=batch_size, lr=lr, mix=mix, seed=seed)
    saved = keyed_folder(keep_in, kind, model, data.pictures, data.task, data.prompts, data.targets,
                         settings) / CHECKPOINT_NAME
    with run_lock(saved.parent):  # a second process asking for this run waits, then loads it
        if saved.exists():
            return _load_architecture_run(saved, model, kind, steps)
        run = _train_architecture(model, data, tasks, steps, batch_size, lr, seed, device, mix)
        # Written atomically: an interrupted save never leaves a run to load.
        save_checkpoint(saved, {"format": CHECKPOINT_FORMAT, "kind": kind, "config": asdict(cfg), "steps": steps,
                                "model": model.state_dict(), "losses": run.losses, "seconds": run.seconds})
    return run


def _train_architecture(model: _Reader, data: TaskSet, tasks: tuple[str, ...], steps: int, batch_size: int,
                        lr: float, seed: int, device: torch.device, mix: dict[str, float]) -> ArchitectureRun:
    """:func:`train_architecture`'s loop, on ``data`` already cut to ``tasks``."""
    images, prompts, targets = data.pictures.to(device), data.prompts.to(device), data.targets.to(device)
    optimizer = make_optimizer(parameter_groups(model, 0.05), lr, (0.9, 0.98), 1e-6, device)
    scheduler = make_scheduler(optimizer, max(1, steps // 10), steps)
    gen = torch.Generator().manual_seed(seed)
    members = [(data.task == TASKS.index(t)).nonzero().flatten() for t in tasks]
    shares = torch.tensor([mix[t] for t in tasks])
    losses, start = [], time.perf_counter()
    model.train()
    for _ in range(steps):
        which = torch.multinomial(shares, batch_size, replacement=True, generator=gen)  # a task per example
        picks = torch.randint(1 << 30, (batch_size,), generator=gen)
        batch = torch.stack([members[w][p % len(members[w])] for w, p in zip(which.tolist(), picks.tolist())])
        batch = batch.to(device)
        loss = task_loss(model, images[batch], prompts[batch], targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return ArchitectureRun(model.eval(), losses, time.perf_counter() - start, steps)


def _load_architecture_run(path: Path, model: _Reader, kind: str, steps: int) -> ArchitectureRun:
    """A run :func:`train_architecture` kept, into ``model`` (built as that run's was)."""
    state = load_checkpoint(path)
    if state.get("kind") != kind or state.get("steps") != steps:
        raise ValueError(f"{path} holds a run of {state.get('kind')!r} for {state.get('steps')} steps, "
                         f"not {kind!r} for {steps}; delete the folder to train again")
    model.load_state_dict(state["model"])
    return ArchitectureRun(model.eval(), list(state["losses"]), float(state["seconds"]), steps)


@torch.no_grad()
def answer(model: _Reader, images: torch.Tensor, prompts: torch.Tensor, tokenizer: WordTokenizer,
           max_words: int = ANSWER_LENGTH) -> list[str]:
    """The model's answers as text. Encoder-only: the one most likely word. The others: greedy
    decoding, one forward pass per word, each choosing the most likely next word, until ``<eot>``."""
    model.eval()
    device = model.pos_embed.device
    images, prompts = images.to(device), prompts.to(device)
    if isinstance(model, EncoderOnly):
        return [tokenizer.vocab[i] for i in model(images, prompts)[:, 0].argmax(-1).tolist()]
    words = torch.full((len(images), 1), tokenizer.sot_id, device=device)
    for _ in range(max_words + 1):
        next_word = model(images, prompts, words)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        words = torch.cat([words, next_word], 1)
        if (words == tokenizer.eot_id).any(1).all():
            break
    return [tokenizer.decode(row) for row in words]


@dataclass
class TaskScores:
    accuracy: dict[str, float]  # task -> exact-match accuracy of the answer
    distracted: float  # vqa: share of answers that name the other object's colour
    seconds_per_answer: float  # wall time per picture, answering the whole test set in batches


def evaluate_tasks(model: _Reader, data: TaskSet, batch_size: int = 500) -> TaskScores:
    """Exact-match accuracy per task the model suits (a caption counts only if every word is right)."""
    tasks = suits(model.kind)
    data = data.only(*tasks)
    said: list[str] = []
    start = time.perf_counter()
    for i in range(0, len(data), batch_size):
        said += answer(model, data.pictures[i:i + batch_size], data.prompts[i:i + batch_size], data.tokenizer)
    seconds = (time.perf_counter() - start) / len(data)
    right = torch.tensor([s == a for s, a in zip(said, data.answers)])
    accuracy = {t: right[data.task == TASKS.index(t)].float().mean().item() for t in tasks}
    vqa = [(s, d) for s, d, k in zip(said, data.distractors, data.task.tolist()) if k == TASKS.index("vqa")]
    distracted = sum(s == d for s, d in vqa) / max(1, len(vqa))
    return TaskScores(accuracy, distracted, seconds)


def chance(task: str) -> float:
    """Accuracy of guessing uniformly: 1 / the number of possible answers."""
    sizes = {"classify": len(ShapesWorld.SHAPES), "vqa": len(ShapesWorld.COLOURS),
             "caption": len(ShapesWorld.SHAPES) * len(ShapesWorld.COLOURS) * len(ShapesWorld.SIZES) * 9}
    if task not in sizes:
        raise ValueError(f"unknown task {task!r}; the tasks are {TASKS}")
    return 1.0 / sizes[task]


__all__ = [
    "ANSWER_LENGTH", "ARCHITECTURES", "ArchitectureConfig", "ArchitectureRun", "DecoderOnly", "EncoderDecoder",
    "EncoderOnly", "PROMPTS", "PROMPT_LENGTH", "TASKS", "TaskScores", "TaskSet", "answer", "build", "chance",
    "evaluate_tasks", "influence_matrix", "make_tasks", "suits", "task_loss", "task_tokenizer", "tower_tokens",
    "train_architecture",
]
