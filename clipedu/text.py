"""The text encoder (notebook 04).

    token ids (B, L)             <sot> a red circle <eot> <pad> ...
      -> token_embed + pos_embed (B, L, D)
      -> transformer, causal     (B, L, D)   token i sees tokens 0..i only
      -> ln_final                (B, L, D)
      -> x[b, eot_index[b]]      (B, D)      the end-of-text token has seen the whole caption
      -> @ proj                  (B, E)      into the space shared with images

CLIP's text tower is a causally masked encoder: GPT's causal mask, but no language-model objective
(the CLIP paper keeps the mask so a pre-trained language model could initialise it). The mask
means the only token that has read the whole caption is the last one, ``<eot>``, so its output is
the caption's embedding. A useful consequence: padding after ``<eot>`` can never change it.

Tokenizers live in :mod:`clipedu.tokenizer` (word-level, for the course data) and :mod:`clipedu.bpe`
(CLIP's byte-level BPE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clipedu.config import TextConfig
from clipedu.transformer import Transformer

__all__ = ["TextTransformer", "TextOutput", "check_tokens", "eot_index"]


def check_tokens(tokens: torch.Tensor, cfg: TextConfig) -> None:
    """Raise a ValueError unless ``tokens`` is a (B, L) batch of ids this text encoder takes."""
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"expected token ids as a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dim() != 2:
        raise ValueError(
            f"expected token ids of shape (B, L), got {tokens.dim()} dims {tuple(tokens.shape)}"
        )
    if tokens.dtype not in (torch.long, torch.int32):
        raise ValueError(f"expected integer token ids of dtype torch.long (or torch.int32), got {tokens.dtype}")
    b, length = tokens.shape
    if b == 0:
        raise ValueError("expected at least one text, got an empty batch (B = 0)")
    if length == 0:
        raise ValueError("expected at least one token per text (with its end-of-text token), got L = 0")
    if length > cfg.context_length:
        raise ValueError(
            f"text of {length} tokens is longer than the context length {cfg.context_length}"
        )
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= cfg.vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {cfg.vocab_size})")
    missing = ~(tokens == cfg.eot_token_id).any(dim=1)
    if missing.any():
        row = int(missing.nonzero()[0])
        raise ValueError(
            f"text {row} has no end-of-text token (id {cfg.eot_token_id}); the encoder reads its "
            "embedding there. Encode texts with the model's tokenizer."
        )


def eot_index(tokens: torch.Tensor, eot_token_id: int) -> torch.Tensor:
    """(B,) position of the first end-of-text token in each row, found by comparing ids.

    (OpenAI's code uses ``tokens.argmax(-1)``, which works only because their ``<eot>`` has the
    largest id in the vocabulary; looking for the id itself works for any tokenizer.)
    """
    return (tokens == eot_token_id).int().argmax(dim=1)


@dataclass
class TextOutput:
    embedding: torch.Tensor  # (B, E) projected, not normalised
    features: torch.Tensor  # (B, D) output at <eot> after ln_final, before the projection
    tokens: torch.Tensor  # (B, L, D) every position's output after ln_final
    eot_index: torch.Tensor  # (B,)
    hidden_states: list[torch.Tensor] | None = None
    attentions: list[torch.Tensor] | None = None


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int, quick_gelu: bool = False):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.width
        self.token_embed = nn.Embedding(cfg.vocab_size, d)
        self.pos_embed = nn.Parameter(torch.empty(cfg.context_length, d))  # (L, D)
        self.transformer = Transformer(d, cfg.layers, cfg.heads, cfg.mlp_ratio, quick_gelu)
        self.ln_final = nn.LayerNorm(d)
        self.proj = nn.Parameter(torch.empty(d, embed_dim))  # (D, E)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        nn.init.normal_(self.proj, std=d**-0.5)
        self.transformer.init_weights()

    def forward(
        self, tokens: torch.Tensor, output_attentions: bool = False, output_hidden_states: bool = False
    ) -> TextOutput:
        check_tokens(tokens, self.cfg)
        length = tokens.shape[1]
        x = self.token_embed(tokens) + self.pos_embed[:length]  # (B, L, D)
        hidden = attentions = None
        if output_attentions or output_hidden_states:
            x, hidden, attentions = self.transformer.forward_all(x, is_causal=True)
        else:
            x = self.transformer(x, is_causal=True)  # (B, L, D)
        x = self.ln_final(x)
        index = eot_index(tokens, self.cfg.eot_token_id)  # (B,)
        features = x[torch.arange(x.shape[0], device=x.device), index]  # (B, D)
        return TextOutput(
            embedding=features @ self.proj,
            features=features,
            tokens=x,
            eot_index=index,
            hidden_states=hidden if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
        )
