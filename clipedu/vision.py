"""The Vision Transformer, CLIP's image encoder (notebook 03).

    image (B, C, H, W)
      -> patch_embed          (B, N, D)     one token per P x P patch
      -> [cls] + tokens       (B, N+1, D)   a learned extra token that will summarise the image
      -> + pos_embed          (B, N+1, D)   where each patch came from
      -> ln_pre, transformer  (B, N+1, D)   every token attends to every other (no mask: encoder-only)
      -> ln_post(x[:, 0])     (B, D)        the CLS token's output: the image's features
      -> @ proj               (B, E)        into the space shared with text

The features before ``proj`` are what linear probes read; the projected vector is the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clipedu.config import VisionConfig
from clipedu.patches import PatchEmbedding, check_images
from clipedu.transformer import Transformer


@dataclass
class VisionOutput:
    embedding: torch.Tensor  # (B, E) projected, not normalised
    features: torch.Tensor  # (B, D) CLS output after ln_post, before the projection
    patch_tokens: torch.Tensor  # (B, N, D) the patch tokens after ln_post
    hidden_states: list[torch.Tensor] | None = None  # layers + 1 tensors (B, N+1, D), when asked for
    attentions: list[torch.Tensor] | None = None  # one (B, H, N+1, N+1) per layer, when asked for


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int, quick_gelu: bool = False):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.width
        scale = d**-0.5
        self.patch_embed = PatchEmbedding(cfg.patch_size, d, cfg.channels)
        self.cls_token = nn.Parameter(scale * torch.randn(d))  # (D,)
        self.pos_embed = nn.Parameter(scale * torch.randn(cfg.num_patches + 1, d))  # (N+1, D)
        self.ln_pre = nn.LayerNorm(d)
        self.transformer = Transformer(d, cfg.layers, cfg.heads, cfg.mlp_ratio, quick_gelu)
        self.ln_post = nn.LayerNorm(d)
        self.proj = nn.Parameter(scale * torch.randn(d, embed_dim))  # (D, E)
        self.transformer.init_weights()  # the text tower's scaled init here too (OpenAI's ViT keeps PyTorch's)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The transformer's input: patch tokens with the CLS token in front, plus positions."""
        x = self.patch_embed(images)  # (B, N, D)
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, N+1, D)
        return self.ln_pre(x + self.pos_embed.to(x.dtype))

    def forward(
        self, images: torch.Tensor, output_attentions: bool = False, output_hidden_states: bool = False
    ) -> VisionOutput:
        check_images(images, self.cfg.channels, self.cfg.image_size, dtype=self.patch_embed.proj.weight.dtype)
        x = self.tokens(images)
        hidden = attentions = None
        if output_attentions or output_hidden_states:
            x, hidden, attentions = self.transformer.forward_all(x)
        else:
            x = self.transformer(x)  # (B, N+1, D), no mask: every patch sees every patch
        x = self.ln_post(x)
        features = x[:, 0]  # (B, D)
        return VisionOutput(
            embedding=features @ self.proj,
            features=features,
            patch_tokens=x[:, 1:],
            hidden_states=hidden if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
        )


class ViTClassifier(nn.Module):
    """A Vision Transformer with a linear classification head on the CLS features.

    The supervised baseline: same encoder as CLIP's, trained with labels instead of captions.
    """

    def __init__(self, cfg: VisionConfig, num_classes: int, quick_gelu: bool = False):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.encoder = VisionTransformer(cfg, embed_dim=cfg.width, quick_gelu=quick_gelu)
        self.head = nn.Linear(cfg.width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images).features)  # (B, num_classes) logits
