"""Stage 1: teaching the Q-Former's queries to pull out of the frozen image what the text needs.

Three objectives share one Q-Former and differ in the attention mask (:mod:`clipedu.blip2.masks`):

- **ITC**, image-text contrastive (unimodal mask). Each query output is projected and normalised;
  a caption is its first token's output (``<sot>``, in the role of BERT's [CLS]), projected and
  normalised. The image-text similarity is the *largest* of the Q query-text cosines, scaled by a
  learnable 1/temperature, and the loss is CLIP's symmetric cross-entropy. The temperature is kept
  as CLIP's ``logit_scale`` (log 1/temperature, clamped at ln 100): the course's choice. BLIP-2's
  reference code learns ``temp`` itself (initialised at 0.07), divides by it and clamps it to
  [0.001, 0.5]. Pairs that are really
  the same (two pictures with one description) are positives, not negatives.
- **ITM**, image-text matching (bidirectional mask). A binary classifier on the query outputs,
  its two logits averaged over the queries, says match or no match. Easy negatives teach nothing,
  so each image gets a *hard* negative caption drawn with probability softmax(ITC similarity), and
  each caption a hard negative image the same way; positives are never drawn. (BLIP-2's reference
  code zeroes only the pair itself; zeroing duplicates too is the course's addition.)
- **ITG**, image-grounded text generation (multimodal causal mask). The caption's first token is
  replaced by [DEC] and every text position predicts the next token. The text cannot see the
  image, only the queries, so the queries must carry what the caption says.

The total loss is the sum of the three, as in BLIP-2. The queries see no text under ITC's mask or
ITG's, so :meth:`Blip2Stage1.forward` runs them once: ITG's text reads the queries kept from ITC's
pass at every layer (BLIP-2's reference code reuses their keys and values, ``past_key_values``).

Two course options go beyond BLIP-2's sum (off by default;
:class:`clipedu.blip2.training.Stage1Training`): each picture's swapped caption as a fourth ITM pair
(:func:`itm_batch`), so that ITM must read word order, and a weight on the ITM loss.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from clipedu.blip2.frozen import FrozenImageEncoder
from clipedu.blip2.language_model import IGNORE_INDEX, lm_loss
from clipedu.blip2.qformer import QFormer, QFormerConfig


# --- who counts as a positive ------------------------------------------------------------------------
def positives_from_keys(keys: torch.Tensor) -> torch.Tensor:
    """(B,) ids -> (B, B) bool, True where two items share an id (an image id, an attribute set)."""
    if keys.dim() != 1:
        raise ValueError(f"expected one key per item, shape (B,), got {tuple(keys.shape)}")
    return keys[:, None] == keys[None, :]


def duplicate_caption_positives(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) token ids -> (B, B) bool, True where two captions are the same text."""
    return (tokens[:, None, :] == tokens[None, :, :]).all(dim=-1)


def check_positives(positives: torch.Tensor, b: int) -> torch.Tensor:
    if not isinstance(positives, torch.Tensor) or positives.shape != (b, b) or positives.dtype != torch.bool:
        got = (tuple(positives.shape), positives.dtype) if isinstance(positives, torch.Tensor) else type(positives)
        raise ValueError(f"positives must be a ({b}, {b}) bool tensor, got {got}")
    return positives | torch.eye(b, dtype=torch.bool, device=positives.device)  # a pair is its own positive


# --- ITC ------------------------------------------------------------------------------------------------
def query_text_similarity(image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """Cosine of each text with each image's *best* query: (B_i, Q, E), (B_t, E) -> (B_i, B_t)."""
    per_query = torch.einsum("iqe,te->itq", image_feats.float(), text_feats.float())  # (B_i, B_t, Q)
    return per_query.max(dim=-1).values


def itc_loss(logits: torch.Tensor, positives: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Symmetric cross-entropy over (B, B) scaled similarities; every positive in a row shares the target.

    With one positive per row (the diagonal) this is CLIP's loss exactly; a row with k positives
    spreads its target 1/k over them, so a duplicate is never pushed away as a negative.
    """
    targets = positives.float()
    i2t = F.cross_entropy(logits, targets / targets.sum(1, keepdim=True), label_smoothing=label_smoothing)
    t2i = F.cross_entropy(logits.t(), targets.t() / targets.t().sum(1, keepdim=True), label_smoothing=label_smoothing)
    return (i2t + t2i) / 2


# --- ITM ------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_hard_negatives(
    logits: torch.Tensor, positives: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image a negative text, for each text a negative image, drawn from softmax(logits).

    ``logits`` (B_i, B_t) are ITC's scaled similarities; ``positives`` (B_i, B_t) never get drawn.
    Returns (text index for each image (B_i,), image index for each text (B_t,)). Texts most like
    the image's own are the likeliest picks: negatives that make the matcher look closely.
    """
    if positives.shape != logits.shape:
        raise ValueError(f"positives {tuple(positives.shape)} must match logits {tuple(logits.shape)}")
    picks = []
    for scores, pos, side in ((logits, positives, "image"), (logits.t(), positives.t(), "text")):
        no_negative = pos.all(dim=1)
        if no_negative.any():
            i = int(no_negative.nonzero()[0])
            raise ValueError(
                f"{side} {i} is a positive for every item of the batch, so it has no negative to "
                "match against; use a larger or more varied batch"
            )
        weights = scores.float().softmax(dim=1)
        # The small floor keeps every negative drawable when the softmax underflows (as BLIP-2's 1e-4).
        weights = (weights + 1e-4).masked_fill(pos, 0.0)
        picks.append(torch.multinomial(weights, 1, generator=generator).squeeze(1))
    return picks[0], picks[1]


def itm_batch(
    image_embeds: torch.Tensor, tokens: torch.Tensor, negative_text: torch.Tensor, negative_image: torch.Tensor,
    swapped: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BLIP-2's 3B matching pairs: (image, its text), (a negative image, the text), (the image, a
    negative text). Returns images (3B, N, C), tokens (3B, T) and labels (3B,): 1 = match.

    ``swapped`` (B, T), optional: a caption false of each image that uses the same words as its own
    (ShapesWorld's swapped captions); each becomes a fourth pair (the image, its swap), a negative,
    and the batch grows to 4B. Not in BLIP-2: the course's way to make word order matter."""
    b = image_embeds.shape[0]
    images = [image_embeds, image_embeds[negative_image], image_embeds]  # pos, neg, pos
    texts = [tokens, tokens, tokens[negative_text]]  # pos, pos, neg
    if swapped is not None:
        if swapped.shape != tokens.shape:
            raise ValueError(f"swapped captions must have the captions' shape {tuple(tokens.shape)} "
                             f"(pad them to one length), got {tuple(swapped.shape)}")
        images.append(image_embeds)
        texts.append(swapped)
    labels = torch.zeros(len(texts) * b, dtype=torch.long, device=tokens.device)
    labels[:b] = 1
    return torch.cat(images), torch.cat(texts), labels


def itm_floor(pairs: int, look_alike: int) -> float:
    """The lowest mean ITM cross-entropy per pair when, of a picture's ``pairs`` pairs, the matching one
    and ``look_alike`` wrong ones look the same to the head (and it gets the rest right): one shared
    probability p of "match" for the 1 + m look-alikes, best at p = 1 / (1 + m)."""
    m = look_alike
    group = (1 + m) * math.log(1 + m) - (m * math.log(m) if m else 0.0)  # -ln p - m ln(1 - p) at p = 1/(1+m)
    return group / pairs


# --- ITG ------------------------------------------------------------------------------------------------
def decoder_inputs(tokens: torch.Tensor, dec_token_id: int, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) for ITG: the first token becomes [DEC]; padding is never predicted."""
    inputs = tokens.clone()
    inputs[:, 0] = dec_token_id
    labels = tokens.masked_fill(tokens == pad_token_id, IGNORE_INDEX)
    return inputs, labels


class Stage1Output(NamedTuple):
    loss: torch.Tensor  # itc + itm + itg
    loss_itc: torch.Tensor
    loss_itm: torch.Tensor
    loss_itg: torch.Tensor
    itc_logits: torch.Tensor  # (B, B) scaled image-text similarities
    itm_logits: torch.Tensor  # (3B, 2), or (4B, 2) with swapped captions
    itm_labels: torch.Tensor  # (3B,) or (4B,)


class Blip2Stage1(nn.Module):
    """The Q-Former with its stage-1 heads, on top of a frozen image encoder.

    Trainable: ``ln_vision`` (a LayerNorm on the frozen tokens), the Q-Former, ``vision_proj`` and
    ``text_proj`` (ITC), ``itm_head``, ``lm_head`` (ITG) and ``logit_scale``. The image encoder is
    optional: the model works on the encoder's tokens, which can be computed once and reused.
    """

    def __init__(self, cfg: QFormerConfig, image_encoder: FrozenImageEncoder | None = None):
        super().__init__()
        if image_encoder is not None and image_encoder.width != cfg.image_width:
            raise ValueError(f"the image encoder gives tokens of width {image_encoder.width} but the config "
                             f"expects {cfg.image_width}; build the QFormerConfig with "
                             f"image_width={image_encoder.width}")
        self.cfg = cfg
        self.image_encoder = image_encoder
        self.ln_vision = nn.LayerNorm(cfg.image_width)
        self.qformer = QFormer(cfg)
        self.vision_proj = nn.Linear(cfg.width, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.width, cfg.embed_dim)
        self.itm_head = nn.Linear(cfg.width, 2)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab_size)  # predicts course-tokenizer ids, never [DEC]
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))

    # -- the image side -------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the frozen encoder's tokens (B, N, C), without gradients."""
        if self.image_encoder is None:
            raise ValueError("this model has no image encoder; pass the encoder's tokens instead of images")
        return self.image_encoder(images)

    def image_embeds(self, image_features: torch.Tensor) -> torch.Tensor:
        """The frozen tokens through the trainable ``ln_vision``: what the queries cross-attend to."""
        self.qformer.check_image_embeds(image_features)
        return self.ln_vision(image_features)

    # -- ITC ------------------------------------------------------------------------------------------
    def image_feats(self, image_features: torch.Tensor) -> torch.Tensor:
        """Queries-only pass: (B, N, C) frozen tokens -> (B, Q, E) unit vectors, one per query."""
        out = self.qformer(self.image_embeds(image_features))
        return F.normalize(self.vision_proj(out.query_output), dim=-1)

    def text_feats(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text-only pass: (B, T) -> (B, E) unit vectors from the first (``<sot>``) position."""
        out = self.qformer(tokens=tokens)
        return F.normalize(self.text_proj(out.text_output[:, 0]), dim=-1)

    def itc_similarity(self, image_embeds: torch.Tensor, tokens: torch.Tensor):
        """One joint pass with the unimodal mask: (cosines (B, B), image feats (B, Q, E), text feats (B, E)).

        Because the mask keeps queries and text apart, this equals the two separate passes
        :meth:`image_feats` and :meth:`text_feats` (what retrieval over a gallery uses).
        """
        similarity, image_feats, text_feats, _ = self._itc_pass(image_embeds, tokens)
        return similarity, image_feats, text_feats

    def _itc_pass(self, image_embeds: torch.Tensor, tokens: torch.Tensor, keep_query_states: bool = False):
        out = self.qformer(image_embeds, tokens, mask="unimodal", read="queries+first",
                           keep_query_states=keep_query_states)
        image_feats = F.normalize(self.vision_proj(out.query_output), dim=-1)  # (B, Q, E)
        text_feats = F.normalize(self.text_proj(out.text_output[:, 0]), dim=-1)  # (B, E)
        return query_text_similarity(image_feats, text_feats), image_feats, text_feats, out.query_states

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.logit_scale.detach()))

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep 1/temperature in [1, 100], as CLIP does: the course's choice (BLIP-2's reference code
        clamps its temperature ``temp`` to [0.001, 0.5])."""
        self.logit_scale.clamp_(0.0, self.cfg.max_logit_scale)

    # -- ITM ------------------------------------------------------------------------------------------
    def itm_logits(self, image_embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Bidirectional pass; the match head on every query output, averaged: (B, 2)."""
        out = self.qformer(image_embeds, tokens, mask="bidirectional", read="queries")
        return self.itm_head(out.query_output).mean(dim=1)

    def itm_score(self, image_features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) log-odds of "match" for frozen tokens (B, N, C) and texts (B, T), for re-ranking.

        The course's score: match logit minus no-match logit. BLIP-2's reference code re-ranks with
        the match logit alone (averaged over the queries)."""
        logits = self.itm_logits(self.image_embeds(image_features), tokens).float()
        return logits[:, 1] - logits[:, 0]

    # -- ITG ------------------------------------------------------------------------------------------
    def itg_logits(self, image_embeds: torch.Tensor, tokens: torch.Tensor,
                   query_states: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Multimodal causal pass with [DEC] first: (next-token logits (B, T, V), labels (B, T)).
        ``query_states``: the queries of ITC's pass (:meth:`QFormer.forward`), reused rather than run again."""
        inputs, labels = decoder_inputs(tokens, self.cfg.dec_token_id, self.cfg.pad_token_id)
        if query_states is not None:
            out = self.qformer(tokens=inputs, mask="multimodal_causal", read="text", query_states=query_states)
        else:
            out = self.qformer(image_embeds, inputs, mask="multimodal_causal", read="text")
        return self.lm_head(out.text_output), labels

    @torch.no_grad()
    def generate(self, image_features: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
        """Greedy captions from the Q-Former's own ITG decoder (no LM): ids (B, <= max_length),
        each row ``<sot> ... <eot>`` then padding, as :meth:`Blip2Captioner.generate` returns them."""
        max_length = max_length or self.cfg.context_length
        image_embeds = self.image_embeds(image_features)
        b = image_embeds.shape[0]
        tokens = torch.full((b, 1), self.cfg.dec_token_id, dtype=torch.long, device=image_embeds.device)
        done = torch.zeros(b, dtype=torch.bool, device=image_embeds.device)
        while tokens.shape[1] < max_length and not done.all():
            out = self.qformer(image_embeds, tokens, mask="multimodal_causal")
            nxt = self.lm_head(out.text_output[:, -1]).argmax(dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, self.cfg.pad_token_id), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            done |= nxt == self.cfg.eot_token_id
        tokens[:, 0] = self.cfg.sot_token_id  # [DEC] was the start signal; report the caption as text
        return tokens

    # -- all three ----------------------------------------------------------------------------------
    def forward(
        self,
        image_features: torch.Tensor,
        tokens: torch.Tensor,
        positives: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        swapped: torch.Tensor | None = None,
    ) -> Stage1Output:
        """The stage-1 losses for B pairs: frozen tokens (B, N, C), captions (B, T).

        ``positives`` (B, B) bool marks pairs that match although they are not the same pair
        (same attributes, same image id); by default, identical captions. ``generator`` makes the
        hard-negative draw repeatable. ``swapped`` (B, T): each image's swapped caption, a fourth
        ITM pair (:func:`itm_batch`).
        """
        image_embeds = self.image_embeds(image_features)  # (B, N, C)
        b = image_embeds.shape[0]
        if tokens.shape[0] != b:
            raise ValueError(f"got {b} images but {tokens.shape[0]} captions; stage 1 trains on pairs")
        positives = check_positives(duplicate_caption_positives(tokens) if positives is None else positives, b)

        # ITC's pass keeps the queries at every layer: ITG's pass reuses them (they see no text in either).
        similarity, _, _, query_states = self._itc_pass(image_embeds, tokens, keep_query_states=True)  # (B, B)
        itc_logits = self.logit_scale.exp() * similarity
        loss_itc = itc_loss(itc_logits, positives, self.cfg.itc_label_smoothing)

        negative_text, negative_image = sample_hard_negatives(itc_logits.detach(), positives, generator)
        images, texts, itm_labels = itm_batch(image_embeds, tokens, negative_text, negative_image, swapped)
        itm_logits = self.itm_logits(images, texts)  # (3B, 2), or (4B, 2)
        loss_itm = F.cross_entropy(itm_logits.float(), itm_labels)

        itg_logits, itg_labels = self.itg_logits(image_embeds, tokens, query_states=query_states)
        loss_itg = lm_loss(itg_logits, itg_labels)
        return Stage1Output(loss_itc + loss_itm + loss_itg, loss_itc, loss_itm, loss_itg,
                            itc_logits, itm_logits, itm_labels)
