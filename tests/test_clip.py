import math

import pytest
import torch

from clipedu import CLIP, CLIPConfig, preset


def _batch(cfg, b=4):
    images = torch.randn(b, 3, cfg.vision.image_size, cfg.vision.image_size)
    tokens = torch.randint(4, cfg.text.vocab_size, (b, cfg.text.context_length))
    tokens[:, 0] = 1
    tokens[:, 5] = cfg.text.eot_token_id
    return images, tokens


def test_embeddings_are_unit_length(tiny_config):
    model = CLIP(tiny_config)
    images, tokens = _batch(tiny_config)
    for e in (model.encode_image(images), model.encode_text(tokens)):
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(4))
    assert not torch.allclose(model.encode_image(images, normalize=False).norm(dim=-1), torch.ones(4))


def test_forward_logits_are_scaled_cosines(tiny_config):
    model = CLIP(tiny_config)
    images, tokens = _batch(tiny_config)
    out = model(images, tokens)
    cos = model.encode_image(images) @ model.encode_text(tokens).t()
    torch.testing.assert_close(out.logits_per_image, cos / 0.07, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    assert abs(out.scale.item() - 1 / 0.07) < 1e-3


def test_logit_scale_init_is_configurable_and_clamped(tiny_config):
    model = CLIP(tiny_config.with_overrides(init_logit_scale=math.log(10)))
    assert abs(model.temperature - 0.1) < 1e-6
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale_()
    assert abs(model.logit_scale.item() - math.log(100)) < 1e-6
    assert abs(model.temperature - 0.01) < 1e-6


def test_default_temperature_is_clip_s():
    assert abs(CLIP(preset("tiny")).temperature - 0.07) < 1e-6


def test_gradients_reach_every_parameter(tiny_config):
    from clipedu.losses import clip_loss

    model = CLIP(tiny_config)
    images, tokens = _batch(tiny_config)
    out = model(images, tokens)
    clip_loss(out.image_embeds, out.text_embeds, out.scale).backward()
    # The text positions after the <eot> at index 5 never influence the output, so their position
    # embeddings get no gradient; everything else must.
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name != "text.pos_embed":
            assert p.grad.abs().sum() > 0, name
    assert model.text.pos_embed.grad[6:].abs().sum() == 0


def test_config_roundtrips_through_dict(tiny_config):
    assert CLIPConfig.from_dict(tiny_config.to_dict()) == tiny_config


def test_state_dict_roundtrip_gives_identical_model(tiny_config):
    a, b = CLIP(tiny_config).eval(), CLIP(tiny_config).eval()
    b.load_state_dict(a.state_dict())
    images, tokens = _batch(tiny_config)
    torch.testing.assert_close(a(images, tokens).logits_per_image, b(images, tokens).logits_per_image)


def test_presets_build():
    for name in ("tiny", "small"):
        assert CLIP(preset(name)).num_parameters() > 0


def test_hugging_face_feature_names_give_the_unnormalised_embeddings(tiny_config):
    model = CLIP(tiny_config).eval()
    tokens = torch.zeros(2, 12, dtype=torch.long)
    tokens[:, 0], tokens[:, 1], tokens[:, 2] = 1, 7, 2
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        image_features, text_features = model.get_image_features(pixels), model.get_text_features(tokens)
        assert torch.equal(image_features, model.encode_image(pixels, normalize=False))
        assert torch.equal(text_features, model.encode_text(tokens, normalize=False))
        assert not torch.allclose(image_features.norm(dim=-1), torch.ones(2))  # not unit length
        torch.testing.assert_close(model.encode_image(pixels), torch.nn.functional.normalize(image_features, dim=-1))
        # A Hugging Face tokenizer's output passes as **inputs; right padding changes nothing.
        mask = (torch.arange(12) <= 2).long().expand(2, 12)
        assert torch.equal(model.get_text_features(input_ids=tokens, attention_mask=mask), text_features)


def test_attention_mask_that_hides_words_is_an_error(tiny_config):
    model = CLIP(tiny_config)
    tokens = torch.zeros(2, 12, dtype=torch.long)
    tokens[:, 0], tokens[:, 1], tokens[:, 2] = 1, 7, 2
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 1] = 0  # left padding, or a hidden word: clipedu's encoder would still read it
    with pytest.raises(ValueError, match="attention_mask hides position 1 of text 1, before its end-of-text"):
        model.get_text_features(tokens, attention_mask=mask)
    with pytest.raises(ValueError, match=r"attention_mask of the tokens' shape \(2, 12\), got \(2, 11\)"):
        model.get_text_features(tokens, attention_mask=mask[:, :11])
