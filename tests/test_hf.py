"""clipedu <-> Hugging Face transformers, proven by computing the same features in both libraries.

Every transformers model here is built from a config with random weights: nothing is downloaded.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach for the Hub

import pytest
import torch

from clipedu import CLIP, preset
from clipedu.hf import (
    config_from_hf,
    config_from_hf_state_dict,
    config_to_hf,
    from_hf_state_dict,
    hf_image_features,
    hf_text_features,
    to_hf_state_dict,
)
from clipedu.pretrained import from_hf, to_hf

transformers = pytest.importorskip("transformers")
# transformers newer than the installed torch (make test-min's torch floor) builds no model; that
# case's one-line error is tested in tests/test_hf_errors.py.
pytestmark = pytest.mark.skipif(not transformers.utils.is_torch_available(),
                                reason=f"transformers {transformers.__version__} cannot use torch {torch.__version__}")


VOCAB, CONTEXT, EOT = 50, 12, 5
# <eot> is neither 2 (transformers' legacy rule) nor the largest id, so where the text is read matters.
SMALL = preset(
    "tiny", vision_width=32, vision_layers=2, vision_heads=2, text_width=32, text_layers=2, text_heads=2,
    embed_dim=16, vocab_size=VOCAB, context_length=CONTEXT, eot_token_id=EOT,
)


def small_hf_config(act="gelu", **text):
    text_config = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=CONTEXT, hidden_act=act,
                       eos_token_id=EOT, pad_token_id=0, bos_token_id=1)
    text_config.update(text)
    vision_config = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         image_size=32, patch_size=8, hidden_act=act)
    return transformers.CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)


def random_hf_model(config, seed=0):
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # transformers' init leaves biases and layer norms at 0 and 1: make every tensor count
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def texts(eot=EOT, larger_ids=True, b=4):
    """(b, CONTEXT) tokens: <sot>, words, <eot>, then padding; with ids above <eot> before and after it."""
    g = torch.Generator().manual_seed(1)
    low, high = (EOT + 1, VOCAB) if larger_ids else (3, eot)
    tokens = torch.randint(low, high, (b, CONTEXT), generator=g)
    tokens[:, 0] = 1
    for i, n in enumerate([2, 5, 9, 3][:b]):
        tokens[i, n] = eot
    tokens[3, 4:] = eot  # padded with <eot>, as Hugging Face's CLIP tokenizer pads: the first one counts
    return tokens


def images(b=3):
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def assert_same_features(model, hf_model, tokens, pixels, atol=1e-5):
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_features(pixels), hf_image_features(hf_model, pixels),
                                   rtol=0, atol=atol)
        torch.testing.assert_close(model.get_text_features(tokens), hf_text_features(hf_model, tokens),
                                   rtol=0, atol=atol)


def test_to_hf_computes_clipedus_features():
    model = CLIP(SMALL).eval()
    hf_model = to_hf(model)
    assert isinstance(hf_model, transformers.CLIPModel) and not hf_model.training
    text = hf_model.config.text_config
    assert (text.eos_token_id, text.pad_token_id) == (SMALL.text.eot_token_id, SMALL.text.pad_token_id)
    assert hf_model.config.vision_config.hidden_act == text.hidden_act == "gelu"
    assert_same_features(model, hf_model, texts(), images())


def test_from_hf_computes_transformers_features_and_logits():
    hf_model = random_hf_model(small_hf_config())
    model = from_hf(hf_model)
    assert model.cfg.vision == SMALL.vision and model.cfg.text == SMALL.text and not model.cfg.quick_gelu
    tokens, pixels = texts()[:3], images()
    assert_same_features(model, hf_model, tokens, pixels)
    with torch.no_grad():
        ours = model(pixels, tokens)
        theirs = hf_model(input_ids=tokens, pixel_values=pixels)
    torch.testing.assert_close(ours.logits_per_image, theirs.logits_per_image, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.text_embeds, theirs.text_embeds, rtol=0, atol=1e-5)


def test_the_text_is_read_at_the_first_eot_in_both():
    # Words with ids above <eot> are what transformers' legacy argmax rule would read instead.
    model = CLIP(SMALL).eval()
    hf_model = to_hf(model)
    tokens = texts()
    with torch.no_grad():
        read_at = model.text(tokens).eot_index
    assert read_at.tolist() == [2, 5, 9, 3] and (tokens.argmax(dim=1) != read_at).any()
    assert_same_features(model, hf_model, tokens, images())


def test_quick_gelu_travels_both_ways():
    model = CLIP(SMALL.with_overrides(quick_gelu=True)).eval()
    hf_model = to_hf(model)
    assert hf_model.config.text_config.hidden_act == "quick_gelu"
    assert from_hf(hf_model).cfg.quick_gelu
    assert_same_features(model, hf_model, texts(), images())


def test_round_trip_is_exact():
    model = CLIP(SMALL)
    with torch.no_grad():
        model.logit_scale.fill_(4.2)
    back = from_hf(to_hf(model))
    assert back.cfg == SMALL
    for key, value in model.state_dict().items():
        assert torch.equal(value, back.state_dict()[key]), key
    # The renaming alone is exact too, and invertible without building a transformers model.
    renamed = from_hf_state_dict(to_hf_state_dict(model))
    assert renamed.keys() == model.state_dict().keys()
    assert all(torch.equal(renamed[k], v) for k, v in model.state_dict().items())


def test_legacy_config_reads_the_largest_id():
    # Configs saved before transformers 4.31 (openai/clip-vit-base-patch32's among them) say eos_token_id=2,
    # and transformers then reads each text at its largest id: clipedu's <eot> becomes the last id.
    hf_model = random_hf_model(small_hf_config(act="quick_gelu", eos_token_id=2, bos_token_id=0, pad_token_id=1))
    model = from_hf(hf_model)
    assert (model.cfg.text.eot_token_id, model.cfg.text.pad_token_id) == (VOCAB - 1, 0)
    tokens = texts(eot=VOCAB - 1, larger_ids=False)
    tokens[0, 3:] = 0  # OpenAI's padding
    assert_same_features(model, hf_model, tokens, images())


def test_to_hf_refuses_an_eot_of_2():
    # The course's word tokenizer puts <eot> at 2, which transformers would take for a legacy config.
    model = CLIP(preset("tiny", vision_layers=1, text_layers=1))
    with pytest.raises(ValueError, match="end-of-text token has id 2.*largest token id"):
        to_hf(model)


def test_state_dict_alone_reads_the_shapes_or_takes_a_config():
    hf_model = random_hf_model(small_hf_config(act="quick_gelu"))
    state_dict = hf_model.state_dict()
    guessed = config_from_hf_state_dict(state_dict, head_width=16)
    assert (guessed.vision.width, guessed.vision.layers, guessed.vision.heads, guessed.vision.image_size) == (
        32, 2, 2, 32)
    assert (guessed.text.vocab_size, guessed.text.context_length, guessed.text.eot_token_id) == (VOCAB, CONTEXT,
                                                                                                 VOCAB - 1)
    assert guessed.embed_dim == 16 and guessed.quick_gelu
    # With its transformers config, a state_dict converts exactly as the model does.
    model = from_hf(state_dict, config=hf_model.config)
    assert model.cfg == config_from_hf(hf_model.config)
    assert_same_features(model, hf_model, texts(), images())


def test_old_checkpoints_position_ids_are_ignored():
    state_dict = to_hf_state_dict(CLIP(SMALL))
    state_dict["text_model.embeddings.position_ids"] = torch.arange(CONTEXT)[None]
    state_dict["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    from_hf(state_dict, config=SMALL)


def test_vit_b32_sizes_convert_to_the_preset():
    # transformers' CLIPConfig defaults are ViT-B/32's sizes; the ids are those of the Hub's openai config.
    config = transformers.CLIPConfig(text_config=dict(eos_token_id=2, bos_token_id=0, pad_token_id=1))
    torch.manual_seed(0)
    hf_model = transformers.CLIPModel(config).eval()
    model = from_hf(hf_model)
    vit_b32 = preset("ViT-B/32")
    assert (model.cfg.vision, model.cfg.text, model.cfg.embed_dim, model.cfg.quick_gelu) == (
        vit_b32.vision, vit_b32.text, vit_b32.embed_dim, vit_b32.quick_gelu)
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tokens = torch.zeros(2, 77, dtype=torch.long)
    tokens[:, 0] = 49406
    tokens[0, 1:4], tokens[0, 4] = torch.tensor([320, 1929, 539]), 49407
    tokens[1, 1:8], tokens[1, 8] = torch.arange(1000, 1007), 49407
    assert_same_features(model, hf_model, tokens, pixels)
    exported = to_hf_state_dict(model)
    theirs = hf_model.state_dict()
    assert set(exported) == {k for k in theirs if not k.endswith("position_ids")}
    assert all(torch.equal(v, theirs[k]) for k, v in exported.items())
    assert config_to_hf(model.cfg).text_config.eos_token_id == 49407  # a current config, read at <eot>


def test_what_clipedu_cannot_build_is_named():
    with pytest.raises(ValueError, match="share one activation.*vision 'gelu' and text 'quick_gelu'"):
        config = small_hf_config()
        config.text_config.hidden_act = "quick_gelu"
        config_from_hf(config)
    with pytest.raises(ValueError, match="vision 'gelu_new'"):
        config_from_hf(small_hf_config(act="gelu_new"))
    config = small_hf_config()
    config.vision_config.layer_norm_eps = 1e-6
    with pytest.raises(ValueError, match="eps=1e-05; this model's vision tower uses 1e-06"):
        config_from_hf(config)
    with pytest.raises(ValueError, match=r"eos_token_id must be one id in \[0, 50\), got None"):
        config_from_hf(small_hf_config(eos_token_id=None))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="expected a transformers CLIPModel or its state_dict, got str"):
        from_hf("openai/clip-vit-base-patch32")
    with pytest.raises(ValueError, match="expected a clipedu CLIP, got CLIPModel"):
        to_hf(random_hf_model(small_hf_config()))
    with pytest.raises(ValueError, match="config must be a clipedu CLIPConfig or a transformers CLIPConfig, got dict"):
        from_hf(to_hf_state_dict(CLIP(SMALL)), config={"vision": {}})
    state_dict = to_hf_state_dict(CLIP(SMALL))
    state_dict["text_model.encoder.layers.0.self_attn.rotary.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected name 'self_attn.rotary.weight' inside a transformer block"):
        from_hf(state_dict, config=SMALL)
    with pytest.raises(ValueError, match="missing 'vision_model.embeddings.patch_embedding.weight'"):
        from_hf({"text_projection.weight": torch.zeros(2, 2)}, config=SMALL)
