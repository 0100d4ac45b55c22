import math

import pytest
import torch
import torch.nn.functional as F

from clipedu.losses import clip_loss, clip_loss_loop, clip_loss_matrix, contrastive_logits, siglip_loss


def _embeds(b=8, e=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, e, generator=g), dim=-1)
    txt = F.normalize(img + 0.5 * torch.randn(b, e, generator=g), dim=-1)
    return img, txt


@pytest.mark.parametrize("scale", [1.0, 1 / 0.07, 100.0])
def test_three_forms_agree(scale):
    img, txt = _embeds()
    loop = clip_loss_loop(img, txt, scale)
    matrix = clip_loss_matrix(img, txt, scale)
    fast = clip_loss(img, txt, scale)
    torch.testing.assert_close(loop, fast, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(matrix, fast, rtol=1e-6, atol=1e-6)


def test_three_forms_agree_on_gradients():
    img, txt = _embeds()
    grads = []
    for fn in (clip_loss_loop, clip_loss_matrix, clip_loss):
        i, t = img.clone().requires_grad_(), txt.clone().requires_grad_()
        s = torch.tensor(14.0, requires_grad=True)
        fn(i, t, s).backward()
        grads.append((i.grad, t.grad, s.grad))
    for other in grads[:2]:
        for a, b in zip(other, grads[2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_loss_of_random_embeddings_at_scale_one_is_near_log_batch():
    # With cosines near 0 every softmax is nearly uniform: loss ~ ln(B).
    g = torch.Generator().manual_seed(1)
    b = 64
    img = F.normalize(torch.randn(b, 512, generator=g), dim=-1)
    txt = F.normalize(torch.randn(b, 512, generator=g), dim=-1)
    assert abs(clip_loss(img, txt, 1.0).item() - math.log(b)) < 0.05


def test_perfect_match_at_high_scale_gives_near_zero_loss():
    img = torch.eye(8)
    assert clip_loss(img, img, 100.0).item() < 1e-6


def test_symmetric_loss_is_the_mean_of_both_directions():
    img, txt = _embeds()
    logits = contrastive_logits(img, txt, 10.0)
    labels = torch.arange(8)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(clip_loss(img, txt, 10.0), expected)
    # swapping the roles of images and texts gives the same loss
    torch.testing.assert_close(clip_loss(txt, img, 10.0), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_finite_at_scale_100_in_half_precision(dtype):
    img, txt = _embeds(b=256, e=64)
    img, txt = img.to(dtype), txt.to(dtype)
    scale = torch.tensor(100.0, dtype=dtype)
    for fn in (clip_loss, clip_loss_matrix):
        assert torch.isfinite(fn(img, txt, scale))
    assert torch.isfinite(siglip_loss(img, txt, scale, torch.tensor(-10.0, dtype=dtype)))
    reference = clip_loss(img.float(), txt.float(), 100.0)
    assert abs(clip_loss(img, txt, scale).item() - reference.item()) < 0.1 * reference.item() + 0.05


def test_hard_negatives_only_add_image_to_text_columns():
    img, txt = _embeds()
    neg = _embeds(seed=5)[1]
    with_negs = clip_loss(img, txt, 10.0, hard_negatives=neg)
    logits = contrastive_logits(img, torch.cat([txt, neg]), 10.0)
    labels = torch.arange(8)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits[:, :8].t(), labels)) / 2
    torch.testing.assert_close(with_negs, expected)
    assert with_negs > clip_loss(img, txt, 10.0)


def test_positive_mask_stops_pushing_duplicates_apart():
    # Text 1 also fits image 0 (say, a second wording of the same scene). Plain InfoNCE treats it as
    # a negative for image 0 and pushes it away; with it marked positive, it is pulled closer.
    img, txt = _embeds()
    mask = torch.eye(8, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = True
    pulls = []
    for positive_mask in (None, mask):
        t = txt.clone().requires_grad_()
        clip_loss(img, t, 10.0, positive_mask=positive_mask).backward()
        pulls.append(torch.dot(-t.grad[1], img[0]).item())  # gradient descent moves text 1 by -grad
    assert pulls[0] < 0 < pulls[1]
    plain = clip_loss(img, txt, 10.0)
    torch.testing.assert_close(clip_loss(img, txt, 10.0, positive_mask=torch.eye(8, dtype=torch.bool)), plain)


def test_siglip_matches_its_definition():
    img, txt = _embeds()
    logits = 10.0 * img @ txt.t() - 10.0
    labels = 2 * torch.eye(8) - 1
    expected = -torch.log(torch.sigmoid(labels * logits)).sum() / 8
    torch.testing.assert_close(siglip_loss(img, txt, 10.0, -10.0), expected, rtol=1e-5, atol=1e-5)
