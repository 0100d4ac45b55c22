"""The contrastive loss, from the loop to the line used in training (notebook 05).

For a batch of B matching (image, text) pairs with unit-length embeddings, let

    logits[i, j] = s * <image_i, text_j>,      s = exp(logit_scale) = 1 / temperature

Row i is a B-way classification: which text belongs to image i? The answer is j = i. InfoNCE is the
cross-entropy of that choice,

    loss_i2t = mean_i  -log( exp(logits[i, i]) / sum_j exp(logits[i, j]) )

and the same over columns (which image belongs to text j?) gives loss_t2i. CLIP trains on their
mean. The three functions :func:`clip_loss_loop`, :func:`clip_loss_matrix` and :func:`clip_loss`
compute the same number three ways; the tests hold them equal to 1e-6.

All functions here take ``scale``, the *multiplier* s = ``model.logit_scale.exp()`` (what
``CLIPOutput.scale`` holds), and expect unit-length embeddings. ``logit_scale`` always names the
learned log.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_embeddings(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> None:
    """Raise a ValueError unless the two batches are (B, E) with the same B and E."""
    for name, x in (("image", image_embeds), ("text", text_embeds)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected {name} embeddings of shape (B, E), got {shape}")
        if x.shape[0] == 0:
            raise ValueError(f"expected at least one {name} embedding, got an empty batch")
    if image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(
            f"image and text batches must pair up one to one: got {image_embeds.shape[0]} images and "
            f"{text_embeds.shape[0]} texts (extra texts go in hard_negatives=)"
        )
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"image and text embeddings must have the same width, got {image_embeds.shape[1]} and "
            f"{text_embeds.shape[1]}"
        )


def contrastive_logits(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """(B_img, B_txt) scaled similarities, computed in float32 so a scale of 100 never overflows."""
    return scale * image_embeds.float() @ text_embeds.float().t()


def clip_loss_loop(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """The teaching form: one softmax per image and one per text, in Python loops."""
    check_embeddings(image_embeds, text_embeds)
    b = image_embeds.shape[0]
    image_embeds, text_embeds = image_embeds.float(), text_embeds.float()
    image_to_text = []
    for i in range(b):  # which text is image i's?
        scores = scale * (text_embeds @ image_embeds[i])  # (B,) one score per text
        image_to_text.append(-(scores[i] - torch.logsumexp(scores, dim=0)))
    text_to_image = []
    for j in range(b):  # which image is text j's?
        scores = scale * (image_embeds @ text_embeds[j])  # (B,) one score per image
        text_to_image.append(-(scores[j] - torch.logsumexp(scores, dim=0)))
    return (torch.stack(image_to_text).mean() + torch.stack(text_to_image).mean()) / 2


def clip_loss_matrix(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """The matrix form: log-softmax over rows and over columns, then the diagonal."""
    check_embeddings(image_embeds, text_embeds)
    logits = contrastive_logits(image_embeds, text_embeds, scale)  # (B, B)
    log_p_text_given_image = logits.log_softmax(dim=1)  # each row sums to 1 after exp
    log_p_image_given_text = logits.log_softmax(dim=0)  # each column sums to 1 after exp
    return -(log_p_text_given_image.diagonal().mean() + log_p_image_given_text.diagonal().mean()) / 2


def clip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    scale: torch.Tensor | float,
    hard_negatives: torch.Tensor | None = None,
    positive_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The symmetric cross-entropy used in training.

    ``hard_negatives``: (H, E) extra text embeddings (e.g. captions with two objects swapped, the
    NegCLIP idea) that each image must also rank below its own caption. They only add columns to the
    image-to-text problem; they are nobody's positive, so they have no text-to-image row.

    ``positive_mask``: (B, B) booleans, True where text j also fits image i (duplicate captions in a
    batch). The target of each row becomes uniform over its positives instead of one-hot, so a
    duplicate is not pushed away as a false negative.
    """
    check_embeddings(image_embeds, text_embeds)
    b = image_embeds.shape[0]
    columns = text_embeds
    if hard_negatives is not None:
        if hard_negatives.dim() != 2 or hard_negatives.shape[1] != text_embeds.shape[1]:
            raise ValueError(
                f"expected hard negatives of shape (H, {text_embeds.shape[1]}), got {tuple(hard_negatives.shape)}"
            )
        columns = torch.cat([text_embeds, hard_negatives])  # (B + H, E)
    logits = contrastive_logits(image_embeds, columns, scale)  # (B, B + H)
    if positive_mask is None:
        labels = torch.arange(b, device=logits.device)
        loss_i2t = F.cross_entropy(logits, labels)
        loss_t2i = F.cross_entropy(logits[:, :b].t(), labels)
    else:
        if positive_mask.shape != (b, b) or positive_mask.dtype != torch.bool:
            raise ValueError(
                f"expected a boolean positive_mask of shape ({b}, {b}), got "
                f"{positive_mask.dtype} {tuple(positive_mask.shape)}"
            )
        if not positive_mask.diagonal().all():
            raise ValueError("positive_mask must be True on its diagonal (each pair is a positive)")
        targets = positive_mask.float()
        targets_i2t = F.pad(targets / targets.sum(1, keepdim=True), (0, logits.shape[1] - b))
        loss_i2t = F.cross_entropy(logits, targets_i2t)
        loss_t2i = F.cross_entropy(logits[:, :b].t(), (targets / targets.sum(0, keepdim=True)).t())
    return (loss_i2t + loss_t2i) / 2


def siglip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
) -> torch.Tensor:
    """SigLIP's sigmoid loss (Zhai et al., 2023): every (image, text) cell is its own yes/no question.

    label = +1 on the diagonal and -1 elsewhere; loss = -sum log sigmoid(label * (s * sim + b)) / B.
    No softmax couples the cells, so no normalisation over the batch is needed. SigLIP starts from
    s = 10 and b = -10, because almost every cell is a negative.
    """
    check_embeddings(image_embeds, text_embeds)
    b = image_embeds.shape[0]
    logits = contrastive_logits(image_embeds, text_embeds, scale) + logit_bias  # (B, B)
    labels = 2 * torch.eye(b, device=logits.device) - 1  # +1 diagonal, -1 elsewhere
    return -F.logsigmoid(labels * logits).sum() / b
