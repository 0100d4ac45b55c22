"""Every bad input gets a ValueError that names what was expected and what came."""

import pytest
import torch

from clipedu import CLIP, preset
from clipedu.losses import clip_loss, clip_loss_loop, siglip_loss
from clipedu.tokenizer import WordTokenizer


@pytest.fixture(scope="module")
def model():
    cfg = preset("tiny", vision_width=32, vision_layers=1, vision_heads=2, text_width=32,
                 text_layers=1, text_heads=2, embed_dim=16, vocab_size=50, context_length=12)
    return CLIP(cfg)


def _tokens(b=2, length=12):
    t = torch.zeros(b, length, dtype=torch.long)
    t[:, 0], t[:, 1], t[:, 2] = 1, 7, 2
    return t


def test_wrong_image_size(model):
    with pytest.raises(ValueError, match="expected 32x32 images, got 28x28"):
        model.encode_image(torch.zeros(2, 3, 28, 28))


def test_wrong_channel_count(model):
    with pytest.raises(ValueError, match="expected 3 channels, got 1"):
        model.encode_image(torch.zeros(2, 1, 32, 32))


def test_wrong_image_dtype(model):
    with pytest.raises(ValueError, match="expected floating-point images, got torch.uint8"):
        model.encode_image(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_wrong_image_rank(model):
    with pytest.raises(ValueError, match=r"expected images of shape \(B, C, H, W\), got 3 dims .*unsqueeze"):
        model.encode_image(torch.zeros(3, 32, 32))


def test_images_not_a_tensor(model):
    with pytest.raises(ValueError, match="expected images as a torch.Tensor, got ndarray"):
        import numpy as np

        model.encode_image(np.zeros((1, 3, 32, 32), dtype="float32"))


def test_empty_image_batch(model):
    with pytest.raises(ValueError, match="empty batch"):
        model.encode_image(torch.zeros(0, 3, 32, 32))


def test_token_id_outside_vocabulary(model):
    t = _tokens()
    t[1, 1] = 50
    with pytest.raises(ValueError, match=r"token id 50 is outside the vocabulary \[0, 50\)"):
        model.encode_text(t)


def test_negative_token_id(model):
    t = _tokens()
    t[0, 3] = -1
    with pytest.raises(ValueError, match="token id -1 is outside"):
        model.encode_text(t)


def test_text_longer_than_context(model):
    with pytest.raises(ValueError, match="text of 13 tokens is longer than the context length 12"):
        model.encode_text(_tokens(length=13))


def test_tokenizer_rejects_overlong_text_unless_truncating():
    tok = WordTokenizer.build(["a red circle"], context_length=5)
    with pytest.raises(ValueError, match="text 0 has 6 tokens .* context length 5.*truncate=True"):
        tok(["a red red circle"])
    ids = tok(["a red red circle"], truncate=True)
    assert ids[0, -1].item() == tok.eot_id


def test_float_token_ids(model):
    with pytest.raises(ValueError, match="expected integer token ids"):
        model.encode_text(_tokens().float())


def test_wrong_token_rank(model):
    with pytest.raises(ValueError, match=r"expected token ids of shape \(B, L\), got 1 dims"):
        model.encode_text(_tokens()[0])


def test_empty_text_batch(model):
    with pytest.raises(ValueError, match="empty batch"):
        model.encode_text(torch.zeros(0, 12, dtype=torch.long))


def test_text_without_end_of_text(model):
    t = _tokens()
    t[1, 2] = 5
    with pytest.raises(ValueError, match="text 1 has no end-of-text token"):
        model.encode_text(t)


@pytest.mark.parametrize("loss", [clip_loss, clip_loss_loop])
def test_mismatched_batches_in_loss(loss):
    with pytest.raises(ValueError, match="got 4 images and 3 texts"):
        loss(torch.randn(4, 8), torch.randn(3, 8), 10.0)


def test_mismatched_widths_in_loss():
    with pytest.raises(ValueError, match="same width, got 8 and 9"):
        siglip_loss(torch.randn(4, 8), torch.randn(4, 9), 10.0, -10.0)


def test_empty_batch_in_loss():
    with pytest.raises(ValueError, match="empty batch"):
        clip_loss(torch.randn(0, 8), torch.randn(0, 8), 10.0)


def test_state_dict_of_another_model(model):
    other = CLIP(preset("tiny", vocab_size=50, context_length=12))
    with pytest.raises(ValueError, match=r"(?s)another config.*vision.cls_token: expected \(32,\), got \(128,\)"):
        model.load_state_dict(other.state_dict())


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; expected one of \['tiny', 'small', 'ViT-B/32'\]"):
        preset("huge")


def test_ambiguous_and_unknown_overrides():
    with pytest.raises(ValueError, match="'width' is ambiguous: say vision_width or text_width"):
        preset("tiny", width=64)
    with pytest.raises(ValueError, match="unknown config field 'depth'"):
        preset("tiny", depth=3)


def test_image_size_not_a_multiple_of_patch():
    with pytest.raises(ValueError, match=r"image_size \(30\) must be a multiple of patch_size \(8\)"):
        preset("tiny", image_size=30)
