"""The frozen parts of BLIP-2 and how they stay frozen.

BLIP-2 trains neither its image encoder nor its language model: both keep the weights they were
pre-trained with, and only the Q-Former between them (plus a LayerNorm and a projection) learns.
Frozen here means three things, each needed:

1. ``requires_grad = False`` on every parameter: the optimiser never sees them and backward
   computes no gradient for them (it still flows *through* the language model to the soft prompt);
2. eval mode, kept even when the surrounding model is put in training mode;
3. for the image encoder, ``torch.no_grad()``: nothing upstream of it needs a gradient, so its
   activations need not be stored.
"""

from __future__ import annotations

import torch
from torch import nn

from clipedu.patches import check_images
from clipedu.vision import VisionTransformer


def freeze_(module: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter of ``module`` and put it in eval mode (in place)."""
    module.requires_grad_(False)
    return module.eval()


def count_parameters(module: nn.Module) -> dict[str, int]:
    """{"trainable": ..., "frozen": ...} parameter counts (each shared tensor counted once)."""
    seen, counts = set(), {"trainable": 0, "frozen": 0}
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            counts["trainable" if p.requires_grad else "frozen"] += p.numel()
    return counts


class FrozenImageEncoder(nn.Module):
    """A trained CLIP image tower, frozen, giving the tokens of its second-to-last layer.

    BLIP-2 drops the ViT's last layer and reads the output of the one before, every token (CLS
    included): the last layer of a contrastively trained ViT specialises in producing the CLS
    summary, the one before keeps more detail in every token. ``layer=-2`` means that; ``-1``
    would read the last block's output.

    (B, 3, H, W) images -> (B, N+1, D) tokens, without gradients. The trainable LayerNorm BLIP-2
    puts on top (``ln_vision``) belongs to the trainable model, not here.
    """

    def __init__(self, vision: VisionTransformer, layer: int = -2):
        super().__init__()
        blocks = len(vision.transformer.blocks)
        if not -blocks <= layer <= -1:
            raise ValueError(f"layer must be in [-{blocks}, -1] (counted from the last block), got {layer}")
        self.vision = freeze_(vision)
        self.layer = layer
        self.num_blocks = blocks + layer + 1  # how many blocks to run: all but the last for -2

    @classmethod
    def from_clip(cls, model, layer: int = -2) -> FrozenImageEncoder:
        return cls(model.vision, layer)

    @property
    def width(self) -> int:
        return self.vision.cfg.width

    @property
    def num_tokens(self) -> int:
        return self.vision.cfg.num_patches + 1

    def train(self, mode: bool = True) -> FrozenImageEncoder:
        """Frozen: stays in eval mode whatever the model around it asks for."""
        self.training = False
        self.vision.eval()
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.vision.cfg.channels, self.vision.cfg.image_size)
        x = self.vision.tokens(images)  # (B, N+1, D): patches, CLS, positions, ln_pre
        for block in self.vision.transformer.blocks[: self.num_blocks]:
            x, _ = block(x)
        return x  # (B, N+1, D)
