"""Stage 2: the Q-Former's query outputs become a soft prompt for a frozen language model.

    image -> frozen encoder -> ln_vision -> Q-Former (queries only) -> (B, Q, D)
          -> lm_proj (a linear layer)   (B, Q, D_lm)   Q vectors in the LM's input-embedding space
          -> [ soft prompt | <sot> w_1 ... w_n ] -> frozen LM -> next-token logits

Only the Q-Former, ``ln_vision`` and ``lm_proj`` learn; the loss is the LM's next-token loss on the
caption's words and ``<eot>``, never on the prompt positions (there is nothing to predict there).
After stage 1 the queries already carry what captions talk about, so the projection has little to
learn; without stage 1 the Q-Former must learn it all from the LM's loss alone.

Decoding: greedy (take the likeliest word each step) or beam search (keep the ``num_beams`` best
partial captions by total log-probability), both stopping at ``<eot>``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from clipedu.blip2.frozen import FrozenImageEncoder, freeze_
from clipedu.blip2.language_model import IGNORE_INDEX, TinyLM, caption_labels, lm_loss
from clipedu.blip2.qformer import QFormer


class Blip2Captioner(nn.Module):
    """Frozen image encoder (optional) -> ln_vision -> Q-Former -> lm_proj -> frozen TinyLM."""

    def __init__(
        self,
        qformer: QFormer,
        ln_vision: nn.LayerNorm,
        language_model: TinyLM,
        image_encoder: FrozenImageEncoder | None = None,
    ):
        super().__init__()
        if qformer.num_queries + 2 > language_model.cfg.max_positions:
            raise ValueError(f"{qformer.num_queries} queries leave no room for text in the LM's "
                             f"{language_model.cfg.max_positions} positions")
        self.image_encoder = image_encoder
        self.ln_vision = ln_vision
        self.qformer = qformer
        self.lm_proj = nn.Linear(qformer.cfg.width, language_model.cfg.width)
        self.language_model = freeze_(language_model)

    @classmethod
    def from_stage1(cls, stage1, language_model: TinyLM) -> Blip2Captioner:
        """Start from a stage-1 model's ``ln_vision`` and Q-Former (copies, so stage 1 stays as it is);
        its ITC, ITM and ITG heads are left behind."""
        return cls(copy.deepcopy(stage1.qformer), copy.deepcopy(stage1.ln_vision), language_model,
                   stage1.image_encoder)

    def train(self, mode: bool = True) -> Blip2Captioner:
        super().train(mode)
        self.language_model.eval()  # frozen: never in training mode
        return self

    @property
    def num_queries(self) -> int:
        return self.qformer.num_queries

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_encoder is None:
            raise ValueError("this model has no image encoder; pass the encoder's tokens instead of images")
        return self.image_encoder(images)

    def soft_prompt(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, N, C) frozen image tokens -> (B, Q, D_lm) prompt vectors for the LM."""
        self.qformer.check_image_embeds(image_features)
        queries = self.qformer(self.ln_vision(image_features)).query_output  # (B, Q, D)
        return self.lm_proj(queries)

    def forward(self, image_features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The stage-2 loss: the frozen LM's next-token loss on the caption tokens only."""
        return lm_loss(*self._logits_and_labels(image_features, tokens))

    def _logits_and_labels(self, image_features: torch.Tensor, tokens: torch.Tensor):
        prompt = self.soft_prompt(image_features)  # (B, Q, D_lm)
        if tokens.shape[0] != prompt.shape[0]:
            raise ValueError(f"got {prompt.shape[0]} images but {tokens.shape[0]} captions")
        logits = self.language_model(tokens, prefix_embeds=prompt)  # (B, Q+L, V)
        labels = caption_labels(tokens, self.language_model.cfg.pad_token_id, prefix_length=prompt.shape[1])
        return logits, labels

    def caption_losses(self, image_features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) each caption's loss summed over its tokens (nats): minus the log-probability the frozen
        LM gives the whole caption after this picture's prompt. Two captions of a picture with the
        same tokens in another order compare directly (notebook 17: a caption against its swap)."""
        logits, labels = self._logits_and_labels(image_features, tokens)
        per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels[:, 1:],
                                    ignore_index=IGNORE_INDEX, reduction="none")  # (B, Q+L-1), 0 where ignored
        return per_token.sum(dim=1)

    # -- decoding -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        image_features: torch.Tensor,
        max_length: int = 24,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> torch.Tensor:
        """Caption token ids (B, <= max_length), each row ``<sot> ... <eot>`` then padding.

        ``num_beams=1`` is greedy decoding. With more beams, finished captions are ranked by their
        total log-probability divided by length ** ``length_penalty`` (0: no length normalisation).
        """
        if not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams must be a positive int, got {num_beams!r}")
        if max_length < 2:
            raise ValueError(f"max_length must leave room for <sot> and <eot>, got {max_length}")
        prompt = self.soft_prompt(image_features)  # (B, Q, D_lm)
        if num_beams == 1:
            return greedy_decode(self.language_model, prompt, max_length)
        return beam_search(self.language_model, prompt, max_length, num_beams, length_penalty)

    def caption(self, image_features: torch.Tensor, tokenizer, **kwargs) -> list[str]:
        """Generated captions as text (see :meth:`generate` for the options)."""
        return [tokenizer.decode(row) for row in self.generate(image_features, **kwargs)]


@torch.no_grad()
def greedy_decode(lm: TinyLM, prompt: torch.Tensor, max_length: int) -> torch.Tensor:
    """Append the likeliest next token until every row has said ``<eot>`` (or max_length)."""
    cfg = lm.cfg
    b = prompt.shape[0]
    tokens = torch.full((b, 1), cfg.sot_token_id, dtype=torch.long, device=prompt.device)
    done = torch.zeros(b, dtype=torch.bool, device=prompt.device)
    while tokens.shape[1] < max_length and not done.all():
        logits = lm(tokens, prefix_embeds=prompt)[:, -1]  # (B, V) at the last position
        nxt = logits.argmax(dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, cfg.pad_token_id), nxt)  # finished rows: padding
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= nxt == cfg.eot_token_id
    return tokens


@torch.no_grad()
def beam_search(lm: TinyLM, prompt: torch.Tensor, max_length: int, num_beams: int,
                length_penalty: float = 1.0) -> torch.Tensor:
    """Keep the ``num_beams`` likeliest partial captions per image; a finished one keeps its score.

    All beams of all images advance together: a (B * K) batch through the LM per step. A beam that
    has said ``<eot>`` can only continue with padding at no cost, so it stays in the running with
    its final score until better beams push it out. The search ends when every image's best beam
    has finished (going on could only lower the others' total log-probability) or at
    ``max_length``; the finished beams are then ranked by total / length ** ``length_penalty``.
    """
    cfg = lm.cfg
    b, k, device = prompt.shape[0], num_beams, prompt.device
    prompts = prompt.repeat_interleave(k, dim=0)  # (B*K, Q, D)
    tokens = torch.full((b * k, 1), cfg.sot_token_id, dtype=torch.long, device=device)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: keep one, or the first step would pick K copies
    done = torch.zeros(b * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(b * k, device=device)  # tokens after <sot>, counting <eot>
    while tokens.shape[1] < max_length and not done.view(b, k)[:, 0].all():
        logp = lm(tokens, prefix_embeds=prompts)[:, -1].float().log_softmax(dim=-1)  # (B*K, V)
        vocab = logp.shape[-1]
        finished = torch.full_like(logp, float("-inf"))
        finished[:, cfg.pad_token_id] = 0.0
        logp = torch.where(done[:, None], finished, logp)
        candidates = (scores.view(b * k, 1) + logp).view(b, k * vocab)  # (B, K*V)
        scores, flat = candidates.topk(k, dim=1)  # (B, K), best first
        beam = (flat // vocab + torch.arange(b, device=device)[:, None] * k).flatten()  # rows of (B*K)
        nxt = (flat % vocab).flatten()
        tokens = torch.cat([tokens[beam], nxt[:, None]], dim=1)
        lengths = lengths[beam] + (~done[beam]).float()
        done = done[beam] | (nxt == cfg.eot_token_id)
    final = (scores.flatten() / lengths.clamp(min=1) ** length_penalty).view(b, k)
    done = done.view(b, k)
    final = torch.where(done | ~done.any(dim=1, keepdim=True), final, float("-inf"))  # finished ones first
    best = tokens[final.argmax(dim=1) + torch.arange(b, device=device) * k]  # (B, length)
    longest = int((best != cfg.pad_token_id).sum(dim=1).max())
    return best[:, :longest]
