"""Where a Vision Transformer looks (notebook 08): attention maps, rollout and relevancy.

Three answers, each more careful than the last, to "which patches made this embedding?":

- **CLS attention** of one block and head: the weights with which the CLS token reads each patch
  in that block. Direct, but partial: after the first block every token is already a mixture.
- **Attention rollout** (Abnar & Zuidema, 2020): follow the mixing through every block. Average
  the heads, add the identity for the residual connection, renormalise the rows, multiply the
  blocks' matrices.
- **Relevancy** (Chefer, Gur & Wolf, 2021): weigh each head's attention by the gradient of an
  image-text score, keep the positive part, average the heads, and accumulate ``R = R + A R``
  starting from the identity. Unlike the other two it depends on the text: it answers "where does
  the model look for *red circle*?".

Every function works for any clipedu vision tower, whatever its image size, patch size, layers
and heads: the course's 4 x 4 grid of patches and ViT-B/32's 7 x 7 alike. Attentions are passed
around stacked, ``(L, B, H, T, T)`` with ``T = N + 1`` tokens (CLS first), or as the list the
tower returns. Maps over the patches are ``(B, g, g)``. :mod:`clipedu.viz.interpret` draws them,
and its explorer widget is a thin wrapper over :func:`attention_map`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from clipedu.data import check_uint8_images
from clipedu.vision import VisionTransformer

METHODS = ("attention", "rollout", "relevancy")


# --- reading attention out of a model ----------------------------------------------------------------
def vision_tower(model) -> VisionTransformer:
    """The :class:`~clipedu.vision.VisionTransformer` inside a CLIP, a ViTClassifier, or itself."""
    if isinstance(model, VisionTransformer):
        return model
    for name in ("vision", "encoder"):
        tower = getattr(model, name, None)
        if isinstance(tower, VisionTransformer):
            return tower
    raise ValueError(
        f"expected a CLIP, a ViTClassifier or a VisionTransformer, got {type(model).__name__}"
    )


def stack_attentions(attentions) -> torch.Tensor:
    """The tower's list of L tensors (B, H, T, T) as one (L, B, H, T, T) tensor (a tensor passes through)."""
    if isinstance(attentions, (list, tuple)):
        if not attentions:
            raise ValueError("expected one attention tensor per layer, got an empty list")
        shapes = {tuple(a.shape) for a in attentions}
        if len(shapes) != 1:
            raise ValueError(f"every layer's attention must have the same shape, got {sorted(shapes)}")
        attentions = torch.stack(list(attentions))
    if not isinstance(attentions, torch.Tensor) or attentions.dim() != 5:
        got = tuple(attentions.shape) if isinstance(attentions, torch.Tensor) else type(attentions).__name__
        raise ValueError(f"expected attentions of shape (L, B, H, T, T) or a list of (B, H, T, T), got {got}")
    if attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(f"attention matrices must be square (T, T), got {tuple(attentions.shape[-2:])}")
    return attentions


@torch.no_grad()
def vision_attentions(model, images: torch.Tensor) -> torch.Tensor:
    """Every block's attention weights for float images (B, C, H, W): (L, B, H, T, T) on the CPU."""
    tower = vision_tower(model)
    out = tower(images, output_attentions=True)
    return stack_attentions(out.attentions).float().cpu()


def grid_map(values: torch.Tensor) -> torch.Tensor:
    """One value per patch, (B, N) or (N,), as the patch grid (B, g, g) or (g, g), row by row."""
    n = values.shape[-1]
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"expected one value per patch of a square grid, got {n} values (not a square)")
    return values.reshape(*values.shape[:-1], g, g)


def _fuse_heads(attentions: torch.Tensor, head) -> torch.Tensor:
    """(..., H, T, T) -> (..., T, T): one head by index, or their ``"mean"`` / ``"max"``."""
    heads = attentions.shape[-3]
    if head is None or head == "mean":
        return attentions.mean(dim=-3)
    if head == "max":
        return attentions.amax(dim=-3)
    if isinstance(head, int) and not isinstance(head, bool) and -heads <= head < heads:
        return attentions[..., head, :, :]
    raise ValueError(f"head must be 'mean', 'max' or an index in [0, {heads}), got {head!r}")


def _layer(attentions: torch.Tensor, layer: int) -> torch.Tensor:
    layers = attentions.shape[0]
    if not isinstance(layer, int) or isinstance(layer, bool) or not -layers <= layer < layers:
        raise ValueError(f"layer must be an index in [0, {layers}) (or negative from the end), got {layer!r}")
    return attentions[layer]


def cls_attention(attentions, layer: int = -1, head="mean") -> torch.Tensor:
    """How much the CLS token reads each patch in one block: (B, g, g), from (L, B, H, T, T).

    ``head``: an index, or ``"mean"`` over the heads. The CLS token's weight on itself is left
    out, so a map sums to 1 minus that weight.
    """
    a = _fuse_heads(_layer(stack_attentions(attentions), layer), head)  # (B, T, T)
    return grid_map(a[:, 0, 1:])  # the CLS row over the patch columns


# --- attention rollout -----------------------------------------------------------------------------------
def attention_rollout(attentions, residual: bool = True, head="mean", start_layer: int = 0) -> torch.Tensor:
    """Abnar & Zuidema's rollout: how much each input token flows into each output token, (B, T, T).

    Per block: fuse the heads (``"mean"``, as in the paper), add the identity for the residual
    connection and renormalise the rows (``0.5 A + 0.5 I``), then multiply onto what the blocks
    below did: ``R = A_l @ R``. Every row of the result sums to 1.
    """
    a = _fuse_heads(stack_attentions(attentions).float(), head)  # (L, B, T, T)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    rollout = eye.expand_as(a[0]).clone()  # (B, T, T)
    for block in a[start_layer:]:
        if residual:
            block = block + eye  # the residual stream carries each token's own input forward
            block = block / block.sum(dim=-1, keepdim=True)
        rollout = block @ rollout  # (B, T, T): this block mixes what the blocks below produced
    return rollout


def rollout_map(attentions, residual: bool = True, head="mean", start_layer: int = 0) -> torch.Tensor:
    """The CLS row of :func:`attention_rollout` over the patches: (B, g, g)."""
    return grid_map(attention_rollout(attentions, residual, head, start_layer)[:, 0, 1:])


# --- gradient-weighted relevancy ------------------------------------------------------------------------
def relevancy_from(attentions, gradients, start_layer: int = 0) -> torch.Tensor:
    """Chefer et al.'s relevancy matrix from attentions and the score's gradients w.r.t. them.

    Both (L, B, H, T, T). Per block: ``A_bar = mean over heads of relu(grad * A)``, the attention
    that raised the score; then ``R = R + A_bar @ R``, starting from the identity (each token is
    relevant to itself through the residual stream). Returns R (B, T, T); its CLS row over the
    patches is the relevancy map. Non-negative by construction.
    """
    a, g = stack_attentions(attentions).float(), stack_attentions(gradients).float()
    if a.shape != g.shape:
        raise ValueError(f"attentions {tuple(a.shape)} and gradients {tuple(g.shape)} must have the same shape")
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    relevance = eye.expand_as(a[0, :, 0]).clone()  # (B, T, T)
    for block, grad in zip(a[start_layer:], g[start_layer:]):
        weighted = (grad * block).clamp(min=0).mean(dim=1)  # (B, T, T): positive evidence, heads averaged
        relevance = relevance + weighted @ relevance
    return relevance


def _text_embeddings(model, texts, batch: int, device) -> torch.Tensor:
    """Unit text embeddings (B, E) from token ids (B or 1, L) or from embeddings (B or 1, E)."""
    if not isinstance(texts, torch.Tensor):
        raise ValueError(
            f"texts must be token ids (B, L) from the model's tokenizer or text embeddings (B, E), "
            f"got {type(texts).__name__}"
        )
    if texts.dim() == 1:
        texts = texts.unsqueeze(0)
    if texts.dim() != 2 or texts.shape[0] not in (1, batch):
        raise ValueError(f"expected one text, or one per image ({batch}), as a 2-d tensor; got {tuple(texts.shape)}")
    with torch.no_grad():
        if texts.dtype in (torch.long, torch.int, torch.int32, torch.int64):
            embeds = model.encode_text(texts.to(device))  # (B or 1, E), unit length
        else:
            embeds = F.normalize(texts.to(device).float(), dim=-1)
    return embeds.expand(batch, -1)


def attention_gradients(model, images: torch.Tensor, texts: torch.Tensor, score: str = "logit"):
    """Attentions and the gradient of each image's score with its text w.r.t. them.

    ``score``: ``"logit"`` (the scaled cosine CLIP's loss reads, as Chefer et al. use) or
    ``"cosine"``. Image i is paired with text i (or all images with one text). Each image's score
    depends only on its own attention, so one backward pass of the summed scores gives every image
    its own gradient. Returns two (L, B, H, T, T) tensors, detached.
    """
    if score not in ("logit", "cosine"):
        raise ValueError(f"score must be 'logit' or 'cosine', got {score!r}")
    if not hasattr(model, "encode_text"):
        raise ValueError(f"relevancy needs a CLIP model (an image and a text tower), got {type(model).__name__}")
    tower = vision_tower(model)
    device = next(tower.parameters()).device
    text = _text_embeddings(model, texts, images.shape[0], device)  # (B, E)
    with torch.enable_grad():
        # Gradients flow from the input, so the graph exists even when the weights are frozen.
        x = images.detach().to(device).float().requires_grad_(True)
        out = tower(x, output_attentions=True)
        image = F.normalize(out.embedding.float(), dim=-1)  # (B, E)
        scores = (image * text).sum(dim=-1)  # (B,) cosine of each pair
        if score == "logit":
            scores = scores * model.logit_scale.detach().exp()
        grads = torch.autograd.grad(scores.sum(), out.attentions)
    return stack_attentions([a.detach() for a in out.attentions]), stack_attentions(list(grads))


def relevancy(model, images: torch.Tensor, texts: torch.Tensor, score: str = "logit", start_layer: int = 0,
              return_matrix: bool = False) -> torch.Tensor:
    """Where the image tower looked to match each image with its text: (B, g, g), on the CPU.

    ``images``: float (B, C, H, W) as the model takes them; ``texts``: token ids (B, L) or (1, L),
    or text embeddings (B, E) / (1, E). ``return_matrix=True`` returns the whole R (B, T, T).
    """
    attentions, gradients = attention_gradients(model, images, texts, score)
    relevance = relevancy_from(attentions, gradients, start_layer).cpu()
    return relevance if return_matrix else grid_map(relevance[:, 0, 1:])


def attention_map(model, images: torch.Tensor, method: str = "attention", layer: int = -1, head="mean",
                  texts: torch.Tensor | None = None, attentions=None, **kwargs) -> torch.Tensor:
    """One entry point for the three maps (the explorer widget calls this): (B, g, g) on the CPU.

    ``method``: ``"attention"`` (CLS attention of ``layer`` and ``head``), ``"rollout"`` (all
    layers, heads fused by ``head``: ``"mean"`` or ``"max"``; an index picks that head in every
    block) or ``"relevancy"`` (needs ``texts``). ``attentions`` (L, B, H, T, T) may be passed to
    skip the forward pass for the first two.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "relevancy":
        if texts is None:
            raise ValueError("relevancy needs a text: pass texts= token ids or text embeddings")
        return relevancy(model, images, texts, **kwargs)
    if attentions is None:
        attentions = vision_attentions(model, images)
    if method == "attention":
        return cls_attention(attentions, layer, head)
    return rollout_map(attentions, head=head, **kwargs)


# --- measuring a map against where the object is -------------------------------------------------------
def foreground_masks(images: torch.Tensor, threshold: int = 100) -> torch.Tensor:
    """(B, H, W) booleans: pixels brighter than ``threshold`` in some channel (uint8 images).

    ShapesWorld draws saturated colours on a dark grey (at most about 50), so this is the object.
    """
    check_uint8_images(images)
    return images.amax(dim=1) > threshold


def colour_masks(images: torch.Tensor, rgb: Sequence[float], tolerance: float = 60.0) -> torch.Tensor:
    """(B, H, W) booleans: pixels within ``tolerance`` (Euclidean, 0-255 scale) of the colour ``rgb``."""
    check_uint8_images(images)
    target = torch.as_tensor(rgb, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() - target).norm(dim=1) < tolerance


def patch_coverage(masks: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The fraction of each patch a mask covers: (B, H, W) booleans -> (B, g, g) in [0, 1]."""
    if masks.dim() != 3:
        raise ValueError(f"expected masks (B, H, W), got shape {tuple(masks.shape)}")
    if masks.shape[-1] % patch_size or masks.shape[-2] % patch_size:
        raise ValueError(f"mask size {tuple(masks.shape[-2:])} is not a multiple of the patch size {patch_size}")
    return F.avg_pool2d(masks.float().unsqueeze(1), patch_size).squeeze(1)


def mass_on(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B,) the share of each map's total that falls on ``region`` (B, g, g), weights in [0, 1]."""
    if maps.shape != region.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and region {tuple(region.shape)} must have the same shape")
    total = maps.flatten(1).sum(1).clamp_min(1e-12)
    return (maps * region).flatten(1).sum(1) / total


def pointing_game(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B,) booleans: does each map's highest patch lie on the region (coverage > 0)?"""
    if maps.shape != region.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and region {tuple(region.shape)} must have the same shape")
    top = maps.flatten(1).argmax(dim=1)  # (B,)
    return region.flatten(1).gather(1, top[:, None]).squeeze(1) > 0
