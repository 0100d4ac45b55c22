"""clipedu <-> OpenAI layout, proven against open_clip with the same weights."""

import json

import pytest
import torch

from clipedu import CLIP, preset
from clipedu.pretrained import config_from_openai_state_dict, from_openai_state_dict, to_openai_state_dict

open_clip = pytest.importorskip("open_clip")

# A small model in OpenAI's layout: heads 64 wide, QuickGELU, <eot> = the largest id.
VOCAB = 120
CFG = preset(
    "tiny", vision_width=128, vision_layers=2, vision_heads=2, text_width=128, text_layers=2,
    text_heads=2, vocab_size=VOCAB, context_length=16, eot_token_id=VOCAB - 1, embed_dim=64,
    quick_gelu=True,
)


@pytest.fixture(scope="module")
def open_clip_model(tmp_path_factory):
    oc_cfg = {
        "embed_dim": CFG.embed_dim,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8, "head_width": 64},
        "text_cfg": {"context_length": 16, "vocab_size": VOCAB, "width": 128, "heads": 2, "layers": 2},
    }
    path = tmp_path_factory.mktemp("oc") / "clipedu-test-tiny.json"
    path.write_text(json.dumps(oc_cfg))
    open_clip.add_model_config(path)
    return open_clip.create_model("clipedu-test-tiny", pretrained=None).eval()


def _inputs(b=6):
    g = torch.Generator().manual_seed(3)
    images = torch.randn(b, 3, 32, 32, generator=g)
    tokens = torch.zeros(b, 16, dtype=torch.long)
    for i in range(b):
        n = 3 + i
        tokens[i, 0] = VOCAB - 2  # <sot>
        tokens[i, 1 : n + 1] = torch.randint(1, VOCAB - 2, (n,), generator=g)
        tokens[i, n + 1] = VOCAB - 1  # <eot>
    return images, tokens


def test_export_loads_into_open_clip_strict_and_matches(open_clip_model):
    model = CLIP(CFG).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.1)
    open_clip_model.load_state_dict(to_openai_state_dict(model), strict=True)
    images, tokens = _inputs()
    with torch.no_grad():
        ours_img, ours_txt = model.encode_image(images), model.encode_text(tokens)
        ref_img = open_clip_model.encode_image(images, normalize=True)
        ref_txt = open_clip_model.encode_text(tokens, normalize=True)
        torch.testing.assert_close(ours_img, ref_img, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours_txt, ref_txt, rtol=0, atol=1e-5)
        ref_logits, _ = open_clip_model.get_logits(images, tokens)
        torch.testing.assert_close(model(images, tokens).logits_per_image, ref_logits, rtol=0, atol=1e-4)


def test_open_clip_weights_load_into_clipedu_and_match(open_clip_model):
    # The other direction: weights that were never clipedu's.
    torch.manual_seed(7)
    for p in open_clip_model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model = from_openai_state_dict(open_clip_model.state_dict(), config=CFG).eval()
    images, tokens = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(images), open_clip_model.encode_image(images, normalize=True), rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            model.encode_text(tokens), open_clip_model.encode_text(tokens, normalize=True), rtol=0, atol=1e-5
        )


def test_roundtrip_gives_the_same_model():
    model = CLIP(CFG)
    back = from_openai_state_dict(to_openai_state_dict(model))  # config read off the shapes
    assert back.cfg.vision == CFG.vision and back.cfg.text == CFG.text
    for key, value in model.state_dict().items():
        assert torch.equal(value, back.state_dict()[key]), key


def test_config_is_read_off_the_shapes():
    cfg = config_from_openai_state_dict(to_openai_state_dict(CLIP(CFG)))
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.layers, cfg.vision.heads) == (32, 8, 2, 2)
    assert (cfg.text.vocab_size, cfg.text.context_length, cfg.text.eot_token_id) == (VOCAB, 16, VOCAB - 1)
    assert cfg.embed_dim == 64 and cfg.quick_gelu


def test_vit_b32_preset_matches_the_released_layout():
    cfg = preset("ViT-B/32")
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.width, cfg.vision.layers) == (224, 32, 768, 12)
    assert cfg.vision.width // cfg.vision.heads == 64 and cfg.text.width // cfg.text.heads == 64
    assert (cfg.text.width, cfg.text.layers, cfg.text.vocab_size, cfg.text.context_length) == (512, 12, 49408, 77)
    assert cfg.text.eot_token_id == 49407 and cfg.embed_dim == 512 and cfg.quick_gelu
    with torch.device("meta"):  # shapes only: no memory, no time
        ours = to_openai_state_dict(CLIP(cfg))
        ref = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None, device="meta").state_dict()
    assert set(ours) == set(ref)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}


def test_openai_extra_entries_are_ignored():
    sd = to_openai_state_dict(CLIP(CFG))
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(16), vocab_size=torch.tensor(VOCAB))
    from_openai_state_dict(sd)


def test_unknown_key_is_a_clear_error():
    sd = to_openai_state_dict(CLIP(CFG))
    sd["visual.attnpool.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected key 'visual.attnpool.weight'"):
        from_openai_state_dict(sd)


def test_not_a_clip_state_dict_is_a_clear_error():
    with pytest.raises(ValueError, match="missing"):
        from_openai_state_dict({"fc.weight": torch.zeros(2, 2)})
