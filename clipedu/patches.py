"""From an image to a sequence of patch embeddings (notebook 01).

A Vision Transformer reads an image the way a text transformer reads a sentence: as a sequence of
tokens. The tokens are square patches: a (C, H, W) image with patch size P becomes N = (H/P)(W/P)
vectors of length C*P*P, each projected linearly to the model width D.
"""

from __future__ import annotations

import torch
from torch import nn


def check_images(
    images: torch.Tensor, channels: int, image_size: int | None = None, dtype: torch.dtype | None = None
) -> None:
    """Raise a ValueError unless ``images`` is a float (B, C, H, W) batch the model takes.

    ``dtype``, when given, is the model's: images must match it, except under ``torch.autocast``,
    which converts them itself.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"expected images as a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"expected images of shape (B, C, H, W), got {images.dim()} dims {tuple(images.shape)}"
            + (" (add a batch dimension with images.unsqueeze(0))" if images.dim() == 3 else "")
        )
    if not images.is_floating_point():
        raise ValueError(
            f"expected floating-point images, got {images.dtype}; convert uint8 images with "
            "clipedu.data.to_float(images)"
        )
    b, c, h, w = images.shape
    if b == 0:
        raise ValueError("expected at least one image, got an empty batch (B = 0)")
    if c != channels:
        raise ValueError(f"expected {channels} channels, got {c} (images of shape {tuple(images.shape)})")
    if image_size is not None and (h, w) != (image_size, image_size):
        raise ValueError(f"expected {image_size}x{image_size} images, got {h}x{w}")
    if dtype is not None and images.dtype != dtype and not _autocast_enabled(images.device.type):
        raise ValueError(
            f"expected {dtype} images (the model's dtype), got {images.dtype}; convert them with "
            f"images.to({dtype}), or run the model under torch.autocast for mixed precision"
        )


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch before 2.4 takes no device type
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping square patches, row by row.

    (B, C, H, W) -> (B, N, C*P*P) with N = (H/P)*(W/P). Each patch is flattened channel first, the
    same order a ``Conv2d`` kernel of shape (D, C, P, P) reads it in.
    """
    if images.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)  # (B, C, gh, P, gw, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, P, P)
    return x.reshape(b, (h // p) * (w // p), c * p * p)  # (B, N, C*P*P)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """The inverse of :func:`patchify`: (B, N, C*P*P) -> (B, C, H, W) for a square grid."""
    if patches.dim() != 3:
        raise ValueError(f"expected (B, N, C*P*P) patches, got shape {tuple(patches.shape)}")
    b, n, d = patches.shape
    p, c = patch_size, channels
    if d != c * p * p:
        raise ValueError(f"expected patch vectors of length C*P*P = {c * p * p}, got {d}")
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"expected a square number of patches, got {n}")
    x = patches.reshape(b, g, g, c, p, p)  # (B, gh, gw, C, P, P)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, P, gw, P)
    return x.reshape(b, c, g * p, g * p)


def patch_coverage(masks: torch.Tensor, patch_size: int) -> torch.Tensor:
    """How much of each patch a mask covers: (B, H, W) in [0, 1] -> (B, N), patches row by row
    (the order of :func:`patchify` and of the ViT's tokens). Per-patch labels for dense heads
    (notebook 14) come from it."""
    if masks.dim() != 3:
        raise ValueError(f"expected (B, H, W) masks, got shape {tuple(masks.shape)}")
    b, h, w = masks.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"mask size {h}x{w} is not a multiple of the patch size {p}")
    x = masks.float().reshape(b, h // p, p, w // p, p)  # (B, gh, P, gw, P)
    return x.mean(dim=(2, 4)).reshape(b, (h // p) * (w // p))  # (B, N)


class PatchEmbedding(nn.Module):
    """Project each P x P patch to a D-dim token with one strided convolution.

    A ``Conv2d`` with kernel size and stride both P visits every patch exactly once and takes a dot
    product of its weights with the patch: exactly a linear layer applied to flattened patches, but
    without materialising them. ``as_linear()`` returns that linear layer, for checking.
    """

    def __init__(self, patch_size: int, width: int, channels: int = 3):
        super().__init__()
        self.patch_size = patch_size
        # No bias, as in CLIP: the learned position embedding added next would absorb it (a bias adds
        # one vector to every patch token). ln_pre does not: LayerNorm removes each token's scalar mean.
        self.proj = nn.Conv2d(channels, width, kernel_size=patch_size, stride=patch_size, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images)  # (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)

    def as_linear(self) -> nn.Linear:
        """The same map as an ``nn.Linear`` on :func:`patchify` output (same weights, reshaped)."""
        d, c, p, _ = self.proj.weight.shape
        linear = nn.Linear(c * p * p, d, bias=False)
        with torch.no_grad():
            linear.weight.copy_(self.proj.weight.reshape(d, c * p * p))
        return linear.to(self.proj.weight.device)
