"""The Q-Former: a small transformer that asks a frozen image encoder a fixed number of questions.

    learned queries (Q, D) ----+                 text tokens (B, T) -> token + position embedding
                               |                                         |
            [ q_1 ... q_Q | t_1 ... t_T ]   one self-attention over both, masked per objective
                   |                |
      cross-attention to the        |        (queries only, every other layer)
      frozen image tokens           |
                   |                |
      query feed-forward     text feed-forward      (separate weights for the two kinds of token)

The queries are parameters, the same for every image, with no position embedding (they are a set,
not a sequence). Only they see the image, through cross-attention; the text sees the image only
through them, and only when the mask lets it look at them (see :mod:`clipedu.blip2.masks`). Their
outputs, Q vectors per image whatever the image's size, are what the rest of BLIP-2 reads.

BLIP-2 initialises its Q-Former from BERT-base (post-LN, 12 layers, 32 queries of width 768);
ours starts from random weights, uses the course's pre-LN blocks (each sub-layer normalises its
input; stable when training from scratch) and is small enough to train on a laptop.
:meth:`QFormer.init_from_text_encoder` is the course's counterpart of BERT's weights: it copies a
trained mini-CLIP's text tower into the Q-Former's text side.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from clipedu.attention import CrossAttention, MultiHeadAttention
from clipedu.blip2.masks import objective_mask, with_text_padding
from clipedu.transformer import MLP


@dataclass(frozen=True)
class QFormerConfig:
    vocab_size: int  # the course tokenizer's; the Q-Former adds one token, [DEC], with id vocab_size
    image_width: int = 128  # width of the frozen encoder's tokens
    num_queries: int = 8  # BLIP-2: 32
    width: int = 128  # BLIP-2: 768 (BERT-base)
    layers: int = 4  # BLIP-2: 12
    heads: int = 4
    mlp_ratio: float = 4.0
    cross_attention_every: int = 2  # cross-attention in layers 0, 2, 4, ... (BLIP-2: every other layer)
    context_length: int = 24  # longest text, in tokens
    embed_dim: int = 64  # the ITC space (BLIP-2: 256)
    pad_token_id: int = 0
    sot_token_id: int = 1  # the text's first token: its output is the caption's ITC feature ([CLS]'s role)
    eot_token_id: int = 2
    init_logit_scale: float = math.log(1 / 0.07)  # ITC's learnable temperature starts at 0.07, as CLIP's
    max_logit_scale: float = math.log(100.0)  # and is clamped to stay above 0.01
    itc_label_smoothing: float = 0.1  # as BLIP-2's released training code

    def __post_init__(self):
        for name in ("vocab_size", "image_width", "width", "layers", "heads", "cross_attention_every",
                     "context_length", "embed_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"QFormerConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.num_queries, int) or isinstance(self.num_queries, bool) or self.num_queries < 1:
            raise ValueError(
                f"num_queries must be a positive int, got {self.num_queries!r}: the queries are the "
                "only path from the image to the text, so the Q-Former needs at least one"
            )
        if self.width % self.heads:
            raise ValueError(f"Q-Former width ({self.width}) must be divisible by heads ({self.heads})")
        for name in ("pad_token_id", "sot_token_id", "eot_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must be in [0, {self.vocab_size}), got {getattr(self, name)}")

    @property
    def dec_token_id(self) -> int:
        """The [DEC] token that replaces a caption's first token for image-grounded generation."""
        return self.vocab_size

    def to_dict(self) -> dict:
        return asdict(self)


READS = ("all", "queries", "queries+first", "text")  # what a caller of QFormer.forward reads


class QFormerLayer(nn.Module):
    """Shared self-attention; cross-attention for the queries (in some layers); two feed-forwards."""

    def __init__(self, cfg: QFormerConfig, cross_attention: bool):
        super().__init__()
        d = cfg.width
        self.ln_self = nn.LayerNorm(d)
        self.self_attn = MultiHeadAttention(d, cfg.heads)  # one set of weights for queries and text
        self.ln_cross = nn.LayerNorm(d) if cross_attention else None
        self.cross_attn = CrossAttention(d, cfg.image_width, cfg.heads) if cross_attention else None
        self.ln_query_mlp, self.query_mlp = nn.LayerNorm(d), MLP(d, cfg.mlp_ratio)
        self.ln_text_mlp, self.text_mlp = nn.LayerNorm(d), MLP(d, cfg.mlp_ratio)

    def forward(self, x, num_queries, image_embeds, mask, need_weights=False, rows=None):
        """x: (B, Q+T, D) -> (B, Q+T, D), self-attention weights (B, H, Q+T, Q+T), cross (B, H, Q, N).

        ``rows`` (a slice of the Q+T tokens): update only those, (B, R, D), as in the last layer when
        the caller reads only some outputs; the others still give their keys and values."""
        attended, self_weights = self.self_attn(self.ln_self(x), mask=mask, need_weights=need_weights, rows=rows)
        if rows is not None:
            num_queries = len(range(num_queries)[rows])  # the queries among the rows kept (they come first)
            x = x[:, rows]
        x = x + attended
        q, t = x[:, :num_queries], x[:, num_queries:]  # (B, Q, D), (B, T, D)
        cross_weights = None
        if self.cross_attn is not None and num_queries:
            seen, cross_weights = self.cross_attn(self.ln_cross(q), image_embeds, need_weights)
            q = q + seen
        q = q + self.query_mlp(self.ln_query_mlp(q))
        t = t + self.text_mlp(self.ln_text_mlp(t))
        return torch.cat([q, t], dim=1), self_weights, cross_weights


class QFormerOutput(NamedTuple):
    query_output: torch.Tensor | None  # (B, Q, D), None in a text-only pass
    text_output: torch.Tensor | None  # (B, T, D), None in a queries-only pass
    attentions: list[torch.Tensor] | None = None  # per layer (B, H, Q+T, Q+T), when asked for
    cross_attentions: list[torch.Tensor] | None = None  # per cross-attention layer (B, H, Q, N)
    query_states: list[torch.Tensor] | None = None  # per layer, the queries entering it (B, Q, D), when kept


class QFormer(nn.Module):
    """Learned queries and a text transformer sharing self-attention; see the module docstring."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.query_tokens = nn.Parameter(torch.randn(cfg.num_queries, d) * 0.02)  # (Q, D), no positions
        self.token_embed = nn.Embedding(cfg.vocab_size + 1, d)  # + [DEC]
        self.pos_embed = nn.Parameter(torch.randn(cfg.context_length, d) * 0.01)  # (T, D): text only
        self.layers = nn.ModuleList(
            QFormerLayer(cfg, cross_attention=i % cfg.cross_attention_every == 0) for i in range(cfg.layers)
        )
        self.ln_final = nn.LayerNorm(d)
        self.apply(_init_weights)

    @property
    def num_queries(self) -> int:
        return self.cfg.num_queries

    @torch.no_grad()
    def init_from_text_encoder(self, text) -> QFormer:
        """Start from a trained text tower (a :class:`clipedu.text.TextTransformer` of the same width,
        depth, heads and vocabulary), as BLIP-2 starts from BERT-base: the token and position
        embeddings, each layer's self-attention, feed-forward layer and LayerNorms, and the final
        LayerNorm. The queries' feed-forward layers get the text's weights too (BLIP-2's reference
        code copies BERT's into its query branch the same way); the queries, the cross-attention and
        the [DEC] embedding keep their fresh weights. With the multimodal causal mask, a text-only
        pass then gives the tower's own outputs. Returns the Q-Former."""
        blocks = list(text.transformer.blocks)
        vocab = text.token_embed.weight.shape[0]
        first = blocks[0] if blocks else None
        got = {"vocabulary": vocab, "width": text.token_embed.weight.shape[1], "layers": len(blocks),
               "heads": first and first.attn.heads, "feed-forward width": first and first.mlp.fc1.out_features,
               "activation": first and type(first.mlp.act).__name__}
        mine = self.layers[0].text_mlp
        want = {"vocabulary": self.cfg.vocab_size, "width": self.cfg.width, "layers": self.cfg.layers,
                "heads": self.cfg.heads, "feed-forward width": mine.fc1.out_features,
                "activation": type(mine.act).__name__}
        wrong = [f"{k} {got[k]} (the Q-Former has {want[k]})" for k in want if got[k] != want[k]]
        if wrong:
            raise ValueError("the text tower does not fit this Q-Former: " + ", ".join(wrong))
        if text.pos_embed.shape[0] < self.cfg.context_length:
            raise ValueError(f"the text tower has {text.pos_embed.shape[0]} positions, fewer than the "
                             f"Q-Former's context of {self.cfg.context_length}")
        self.token_embed.weight[:vocab].copy_(text.token_embed.weight)  # the last row, [DEC], stays new
        self.pos_embed.copy_(text.pos_embed[: self.cfg.context_length])
        for layer, block in zip(self.layers, blocks):
            layer.ln_self.load_state_dict(block.ln_1.state_dict())
            layer.self_attn.load_state_dict(block.attn.state_dict())
            for ln, mlp in ((layer.ln_query_mlp, layer.query_mlp), (layer.ln_text_mlp, layer.text_mlp)):
                ln.load_state_dict(block.ln_2.state_dict())
                mlp.load_state_dict(block.mlp.state_dict())
        self.ln_final.load_state_dict(text.ln_final.state_dict())
        return self

    @staticmethod
    def _rows(read: str, num_queries: int, text_length: int, need_weights: bool) -> slice | None:
        """The last layer's rows for ``read`` (None: all of them)."""
        if read not in READS:
            raise ValueError(f"read must be one of {READS}, got {read!r}")
        if read == "all":
            return None
        if need_weights:
            raise ValueError(f"need_weights=True returns every token's attention; use read='all', not {read!r}")
        present = {"queries": num_queries, "queries+first": num_queries and text_length, "text": text_length}
        if not present[read]:
            needs = {"queries": "image tokens", "queries+first": "image and text tokens", "text": "text tokens"}
            raise ValueError(f"read={read!r} needs {needs[read]}")
        return {"queries": slice(0, num_queries), "queries+first": slice(0, num_queries + 1),
                "text": slice(num_queries, num_queries + text_length)}[read]

    def check_image_embeds(self, image_embeds: torch.Tensor) -> None:
        if not isinstance(image_embeds, torch.Tensor) or image_embeds.dim() != 3:
            got = tuple(image_embeds.shape) if isinstance(image_embeds, torch.Tensor) else type(image_embeds).__name__
            raise ValueError(f"expected image tokens of shape (B, N, {self.cfg.image_width}), got {got}")
        if image_embeds.shape[-1] != self.cfg.image_width:
            raise ValueError(
                f"expected image tokens of width {self.cfg.image_width} (the frozen encoder's), got "
                f"{image_embeds.shape[-1]}; build the QFormerConfig with image_width={image_embeds.shape[-1]}"
            )
        if image_embeds.shape[0] == 0 or image_embeds.shape[1] == 0:
            raise ValueError(f"expected at least one image and one token, got shape {tuple(image_embeds.shape)}")

    def check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32):
            got = (tuple(tokens.shape), tokens.dtype) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"expected token ids of shape (B, T) and dtype long, got {got}")
        if tokens.shape[1] > self.cfg.context_length:
            raise ValueError(f"text of {tokens.shape[1]} tokens is longer than the context {self.cfg.context_length}")
        if tokens.numel() and not (0 <= int(tokens.min()) and int(tokens.max()) <= self.cfg.dec_token_id):
            raise ValueError(f"token ids must lie in [0, {self.cfg.dec_token_id}], got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")

    def forward(
        self,
        image_embeds: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        mask: str = "bidirectional",
        need_weights: bool = False,
        read: str = "all",
        keep_query_states: bool = False,
        query_states: list[torch.Tensor] | None = None,
    ) -> QFormerOutput:
        """Run the queries (when ``image_embeds`` (B, N, C) is given) and/or the text ``tokens``
        (B, T) through the Q-Former with one of the objective masks ("unimodal",
        "bidirectional", "multimodal_causal"; it only matters when both are there).

        ``read`` says which outputs the caller will use: "all"; "queries" (ITM's head reads only
        them: ``text_output`` is None); "queries+first" (ITC: the queries and the first text token,
        ``text_output`` (B, 1, D)); "text" (ITG: ``query_output`` is None). The last layer then
        computes only those tokens; no later layer needs the rest. The numbers read are the same.

        ``keep_query_states=True`` returns the queries as they enter each layer (``query_states``),
        from a pass where they see no text (no tokens, or the unimodal mask). ITG's pass then takes
        them instead of ``image_embeds`` (``query_states=...``, the multimodal causal mask): there
        too the queries see no text, so they would only be computed again; the text reads their keys
        and values at every layer. BLIP-2's reference code does the same with ``past_key_values``."""
        if query_states is not None:
            return self._text_after_queries(tokens, query_states, mask, read, need_weights)
        if image_embeds is None and tokens is None:
            raise ValueError("give image tokens, text tokens or both")
        if keep_query_states and (image_embeds is None or (tokens is not None and mask == "bidirectional")):
            raise ValueError("keep_query_states=True keeps the queries of a pass where they see no text: give "
                             "image tokens, and no text tokens or the 'unimodal' mask")
        parts = []
        if image_embeds is not None:
            self.check_image_embeds(image_embeds)
            b = image_embeds.shape[0]
            parts.append(self.query_tokens.to(image_embeds.dtype).expand(b, -1, -1))  # (B, Q, D)
        if tokens is not None:
            self.check_tokens(tokens)
            if image_embeds is not None and tokens.shape[0] != image_embeds.shape[0]:
                raise ValueError(f"got {image_embeds.shape[0]} images but {tokens.shape[0]} texts; they pair up")
            parts.append(self.token_embed(tokens) + self.pos_embed[: tokens.shape[1]])  # (B, T, D)
        num_queries = self.num_queries if image_embeds is not None else 0
        text_length = tokens.shape[1] if tokens is not None else 0
        x = torch.cat(parts, dim=1)  # (B, Q+T, D)
        attn_mask = objective_mask(mask, num_queries, text_length, x.device)  # (Q+T, Q+T)
        if tokens is not None:
            attn_mask = with_text_padding(attn_mask, tokens != self.cfg.pad_token_id)  # (B, 1, Q+T, Q+T)
        rows = self._rows(read, num_queries, text_length, need_weights)
        attentions, cross, states = [], [], []
        for i, layer in enumerate(self.layers):
            if keep_query_states:
                states.append(x[:, :num_queries])  # (B, Q, D) the queries entering layer i
            last = i == len(self.layers) - 1
            x, self_weights, cross_weights = layer(x, num_queries, image_embeds, attn_mask, need_weights,
                                                   rows=rows if last else None)
            attentions.append(self_weights)
            if cross_weights is not None:
                cross.append(cross_weights)
        x = self.ln_final(x)
        if rows is not None:  # x holds the kept rows only: how many of them are queries, how many text
            kept = len(range(num_queries + text_length)[rows])
            num_queries = len(range(num_queries)[rows])
            text_length = kept - num_queries
        return QFormerOutput(
            query_output=x[:, :num_queries] if num_queries else None,
            text_output=x[:, num_queries:] if text_length else None,
            attentions=attentions if need_weights else None,
            cross_attentions=cross if need_weights else None,
            query_states=states if keep_query_states else None,
        )

    def _text_after_queries(self, tokens, query_states, mask, read, need_weights) -> QFormerOutput:
        """The text's pass beside queries that already ran (``query_states``, one (B, Q, D) per layer):
        each layer updates the text rows only, reading the kept queries' keys and values."""
        if mask != "multimodal_causal" or read not in ("text", "all") or need_weights:
            raise ValueError("query_states serve the multimodal causal pass (ITG), which reads the text alone: "
                             f"mask='multimodal_causal', read='text', no weights; got mask={mask!r}, read={read!r}, "
                             f"need_weights={need_weights}")
        if tokens is None:
            raise ValueError("query_states need text tokens to run beside")
        self.check_tokens(tokens)
        b, q, t = tokens.shape[0], self.num_queries, tokens.shape[1]
        want = (b, q, self.cfg.width)
        shapes = [tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__ for s in query_states]
        if len(shapes) != len(self.layers) or any(shape != want for shape in shapes):
            raise ValueError(f"query_states must hold one {want} tensor per layer ({len(self.layers)}), as a pass "
                             f"with keep_query_states=True returns them; got {shapes}")
        attn_mask = objective_mask(mask, q, t, tokens.device)  # (Q+T, Q+T)
        attn_mask = with_text_padding(attn_mask, tokens != self.cfg.pad_token_id)  # (B, 1, Q+T, Q+T)
        text_rows = slice(q, q + t)
        x = self.token_embed(tokens) + self.pos_embed[:t]  # (B, T, D)
        for layer, queries in zip(self.layers, query_states):
            x, _, _ = layer(torch.cat([queries.to(x.dtype), x], dim=1), q, None, attn_mask, rows=text_rows)
        return QFormerOutput(query_output=None, text_output=self.ln_final(x))


def _init_weights(module: nn.Module) -> None:
    """BERT's initialisation (normal, std 0.02), which BLIP-2's Q-Former inherits."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
