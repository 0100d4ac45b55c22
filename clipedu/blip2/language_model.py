"""A tiny decoder-only language model: BLIP-2's frozen LLM, at the scale of ShapesWorld's captions.

    token ids (B, L)  ->  token_embed + pos_embed  ->  causal transformer  ->  ln_final
                      ->  logits = x @ token_embed^T        (B, L, V): the next token at each place

BLIP-2 uses OPT or Flan-T5, trained on hundreds of billions of words. Ours reads the course's
word-level tokens and is trained on the captions' text alone (no images) until it writes fluent
ShapesWorld captions, then frozen. What the Q-Former then has to learn is to steer it: a few vectors
put *in front of* the caption in the LM's input embedding space (the soft prompt) so that the
caption it continues with is the right one for the picture.

Three details make a frozen LM usable this way:

- ``forward`` takes ``prefix_embeds``, vectors fed in before the token embeddings, so a prompt
  need not be made of words.
- An LLM has read text whose beginning decides how it goes on; that is what lets a prompt steer
  it. A model trained on single captions never learned to read a context, so ours is trained on
  *two captions of the same picture* one after the other (:func:`paired_captions`): to predict
  the second well it must pick up colour, shape, size and place from the first. Still text only.
- A caption after a Q-vector prompt starts at position Q. An LLM trained on long documents knows
  every position; to make ours know them too, each pretraining sequence starts at a random
  position offset (:func:`pretraining_offsets`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clipedu.transformer import Transformer

IGNORE_INDEX = -100  # the label of a position the loss skips (F.cross_entropy's default ignore_index)


@dataclass(frozen=True)
class LMConfig:
    vocab_size: int
    width: int = 128
    layers: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    max_positions: int = 64  # prompt + caption; a caption of 24 tokens after up to 40 prompt vectors
    pad_token_id: int = 0
    sot_token_id: int = 1
    eot_token_id: int = 2

    def __post_init__(self):
        for name in ("vocab_size", "width", "layers", "heads", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LMConfig.{name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"LM width ({self.width}) must be divisible by heads ({self.heads})")

    @classmethod
    def for_tokenizer(cls, tokenizer, **overrides) -> LMConfig:
        ids = dict(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id,
                   sot_token_id=tokenizer.sot_id, eot_token_id=tokenizer.eot_id)
        return cls(**{**ids, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class TinyLM(nn.Module):
    """A GPT-style decoder: causal self-attention, pre-LN blocks, output tied to the input embedding."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.token_embed = nn.Embedding(cfg.vocab_size, d)
        self.pos_embed = nn.Parameter(torch.randn(cfg.max_positions, d) * 0.01)  # (P, D)
        self.transformer = Transformer(d, cfg.layers, cfg.heads, cfg.mlp_ratio)
        self.ln_final = nn.LayerNorm(d)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        self.transformer.init_weights()

    def forward(
        self,
        tokens: torch.Tensor | None = None,
        prefix_embeds: torch.Tensor | None = None,
        position_offset: torch.Tensor | int = 0,
    ) -> torch.Tensor:
        """Logits (B, P+L, V) for ``prefix_embeds`` (B, P, D) followed by ``tokens`` (B, L).

        ``position_offset`` (an int or (B,) ints) shifts every position, as a caption after a
        prompt would be shifted (pretraining uses random offsets).
        """
        parts = []
        if prefix_embeds is not None:
            if prefix_embeds.dim() != 3 or prefix_embeds.shape[-1] != self.cfg.width:
                raise ValueError(
                    f"expected prefix embeddings of shape (B, P, {self.cfg.width}), got {tuple(prefix_embeds.shape)}"
                )
            parts.append(prefix_embeds)
        if tokens is not None:
            if tokens.dim() != 2:
                raise ValueError(f"expected token ids of shape (B, L), got {tuple(tokens.shape)}")
            if prefix_embeds is not None and tokens.shape[0] != prefix_embeds.shape[0]:
                raise ValueError(f"{prefix_embeds.shape[0]} prompts but {tokens.shape[0]} texts")
            parts.append(self.token_embed(tokens))  # (B, L, D)
        if not parts:
            raise ValueError("give tokens, prefix embeddings or both")
        x = torch.cat([p.to(parts[-1].dtype) for p in parts], dim=1)  # (B, P+L, D)
        b, n, _ = x.shape
        offset = torch.as_tensor(position_offset, device=x.device).reshape(-1, 1)  # (B or 1, 1)
        positions = torch.arange(n, device=x.device)[None] + offset  # (B or 1, P+L)
        if int(positions.max()) >= self.cfg.max_positions:
            raise ValueError(
                f"a sequence reaching position {int(positions.max())} is longer than the LM's "
                f"{self.cfg.max_positions} positions; use fewer queries or shorter texts"
            )
        x = x + self.pos_embed[positions]
        x = self.ln_final(self.transformer(x, is_causal=True))  # token i sees 0..i
        return x @ self.token_embed.weight.t()  # (B, P+L, V), tied: the same table in and out


def caption_labels(tokens: torch.Tensor, pad_token_id: int, prefix_length: int = 0) -> torch.Tensor:
    """Labels for the language-model loss, one per input position (prompt, then caption).

    ``labels[:, i]`` is the token *at* position i, or -100 where the loss must skip: the
    ``prefix_length`` prompt positions, the ``<sot>`` (given, never predicted) and the padding.
    :func:`lm_loss` compares the prediction at position i with ``labels[:, i + 1]``.
    (B, L) -> (B, prefix_length + L).
    """
    labels = tokens.masked_fill(tokens == pad_token_id, IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX  # <sot> is the start signal, not a word to predict
    prompt = labels.new_full((tokens.shape[0], prefix_length), IGNORE_INDEX)
    return torch.cat([prompt, labels], dim=1)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position i predicts labels[i + 1]; -100 labels are skipped."""
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape[:2])} and labels {tuple(labels.shape)} must align")
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )


@torch.no_grad()
def loss_without_picture(lm: TinyLM, tokens: torch.Tensor) -> torch.Tensor:
    """The frozen LM's next-token loss on the captions ``tokens`` (B, L) with no prompt in front, in nats
    per token: the caption tokens after ``<sot>``, the padding skipped."""
    lm.eval()
    return lm_loss(lm(tokens), caption_labels(tokens, lm.cfg.pad_token_id))


def pretraining_offsets(batch_size: int, max_offset: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) random start positions in [0, max_offset] for captions during pretraining, on the
    generator's device."""
    device = generator.device if generator is not None else None
    return torch.randint(0, max_offset + 1, (batch_size,), generator=generator, device=device)


def paired_captions(first: torch.Tensor, second: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Two padded caption batches (B, L1) and (B, L2) written one after the other, padding only at
    the end: ``<sot> a big red disc ... <eot> <sot> a large crimson circle ... <eot> <pad> ...``
    (B, L1 + L2)."""
    if first.shape[0] != second.shape[0]:
        raise ValueError(f"{first.shape[0]} first captions but {second.shape[0]} second ones")
    b, length = first.shape
    out = torch.full((b, length + second.shape[1]), pad_token_id, dtype=first.dtype, device=first.device)
    out[:, :length] = first
    start = (first != pad_token_id).sum(dim=1, keepdim=True)  # (B, 1) where the second one begins
    columns = start + torch.arange(second.shape[1], device=first.device)  # (B, L2)
    return out.scatter_(1, columns, second)


@torch.no_grad()
def sample_text(lm: TinyLM, n: int, max_length: int = 24, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
    """(n, <= max_length) token ids the LM writes on its own from ``<sot>`` (a fluency check)."""
    device = lm.token_embed.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    tokens = torch.full((n, 1), lm.cfg.sot_token_id, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for _ in range(max_length - 1):
        probs = (lm(tokens)[:, -1].float() / temperature).softmax(-1)  # (n, V)
        nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, lm.cfg.pad_token_id), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= nxt == lm.cfg.eot_token_id
        if done.all():
            break
    return tokens
