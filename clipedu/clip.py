"""CLIP: two encoders and one shared embedding space (notebook 05).

An image and a caption are each mapped to a unit vector in the same E-dim space; their cosine
similarity says how well they match. For a batch of B pairs, the B x B matrix of similarities,
multiplied by a learnable scale exp(logit_scale) = 1/temperature, is the logits of two
classification problems: for each image, which caption? for each caption, which image?
(:mod:`clipedu.losses` turns them into the training loss.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clipedu.config import CLIPConfig
from clipedu.text import TextTransformer
from clipedu.vision import VisionTransformer


@dataclass
class CLIPOutput:
    logits_per_image: torch.Tensor  # (B_img, B_txt) = scale * cos(image i, text j)
    logits_per_text: torch.Tensor  # (B_txt, B_img), the transpose
    image_embeds: torch.Tensor  # (B_img, E), unit length
    text_embeds: torch.Tensor  # (B_txt, E), unit length
    scale: torch.Tensor  # scalar s = exp(logit_scale) = 1/temperature, what the losses take


class CLIP(nn.Module):
    """The CLIP model: ``vision`` and ``text`` towers and the learnable ``logit_scale``."""

    def __init__(self, cfg: CLIPConfig | None = None):
        super().__init__()
        cfg = cfg or CLIPConfig()
        self.cfg = cfg
        self.vision = VisionTransformer(cfg.vision, cfg.embed_dim, cfg.quick_gelu)
        self.text = TextTransformer(cfg.text, cfg.embed_dim, cfg.quick_gelu)
        # The log of 1/temperature is learned, so the scale stays positive and moves multiplicatively.
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))

    # --- the two encoders -------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, C, H, W) float images -> (B, E) embeddings, unit length unless ``normalize=False``."""
        x = self.vision(images).embedding
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, L) token ids -> (B, E) embeddings, unit length unless ``normalize=False``."""
        x = self.text(tokens).embedding
        return F.normalize(x, dim=-1) if normalize else x

    # --- similarity and temperature ---------------------------------------------------------
    @property
    def scale(self) -> torch.Tensor:
        """s = exp(logit_scale) = 1 / temperature: the multiplier of the cosines."""
        return self.logit_scale.exp()

    @property
    def temperature(self) -> float:
        """tau = 1 / exp(logit_scale); CLIP starts at 0.07."""
        return 1.0 / math.exp(self.logit_scale.item())

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep exp(logit_scale) in [1, 100] (temperature in [0.01, 1]), as CLIP does after each step."""
        self.logit_scale.clamp_(0.0, self.cfg.max_logit_scale)

    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """(B_img, B_txt) scaled cosine similarities from unit-length embeddings."""
        if image_embeds.shape[-1] != text_embeds.shape[-1]:
            raise ValueError(
                f"image and text embeddings must have the same width, got {image_embeds.shape[-1]} "
                f"and {text_embeds.shape[-1]}"
            )
        return self.scale * image_embeds @ text_embeds.t()

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> CLIPOutput:
        image_embeds = self.encode_image(images)  # (B_img, E)
        text_embeds = self.encode_text(tokens)  # (B_txt, E)
        logits = self.logits(image_embeds, text_embeds)  # (B_img, B_txt)
        return CLIPOutput(logits, logits.t(), image_embeds, text_embeds, self.scale)

    # --- bookkeeping --------------------------------------------------------------------------
    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Like ``nn.Module.load_state_dict``, but a state_dict from another shape of model is a
        ValueError that lists what differs, instead of a long RuntimeError."""
        own = self.state_dict()
        problems = []
        for key, value in state_dict.items():
            if key in own and tuple(own[key].shape) != tuple(value.shape):
                problems.append(f"{key}: expected {tuple(own[key].shape)}, got {tuple(value.shape)}")
        if strict:
            missing = sorted(set(own) - set(state_dict))
            unexpected = sorted(set(state_dict) - set(own))
            if missing:
                problems.append(f"missing keys: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
            if unexpected:
                problems.append(f"unexpected keys: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if problems:
            raise ValueError(
                "state_dict does not fit this model (a checkpoint of another config?):\n  "
                + "\n  ".join(problems[:12])
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
