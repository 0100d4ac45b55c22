"""The transformer block, the Vision Transformer and the text transformer."""

import pytest
import torch

from clipedu.config import TextConfig, VisionConfig
from clipedu.text import TextTransformer, eot_index
from clipedu.transformer import QuickGELU, Transformer
from clipedu.vision import VisionTransformer, ViTClassifier

VCFG = VisionConfig(image_size=16, patch_size=4, width=32, layers=2, heads=2)
TCFG = TextConfig(vocab_size=30, context_length=10, width=32, layers=2, heads=2, eot_token_id=2)


def test_quick_gelu_formula():
    x = torch.linspace(-4, 4, 9)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))


def test_transformer_forward_all_matches_forward_and_keeps_every_layer():
    t = Transformer(width=32, layers=3, heads=4)
    x = torch.randn(2, 6, 32)
    out = t.forward_all(x, is_causal=True)
    torch.testing.assert_close(out.last, t(x, is_causal=True), rtol=1e-5, atol=1e-5)
    assert len(out.hidden_states) == 4 and len(out.attentions) == 3
    assert out.attentions[0].shape == (2, 4, 6, 6)
    torch.testing.assert_close(out.hidden_states[0], x)


def test_residual_stream_stays_unit_scale_at_init():
    t = Transformer(width=64, layers=12, heads=4)
    t.init_weights()
    x = torch.randn(8, 16, 64)
    assert 0.5 < t(x).std().item() < 2.0


def test_vit_shapes_and_outputs():
    vit = VisionTransformer(VCFG, embed_dim=8)
    out = vit(torch.randn(3, 3, 16, 16), output_attentions=True, output_hidden_states=True)
    assert out.embedding.shape == (3, 8)
    assert out.features.shape == (3, 32)
    assert out.patch_tokens.shape == (3, 16, 32)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 2, 17, 17)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.embedding, out.features @ vit.proj)


def test_vit_is_permutation_sensitive_only_through_position_embeddings():
    vit = VisionTransformer(VCFG, embed_dim=8).eval()
    x = torch.randn(1, 3, 16, 16)
    flipped = x.flip(-1)
    assert not torch.allclose(vit(x).embedding, vit(flipped).embedding, atol=1e-4)
    with torch.no_grad():  # without positions, the patches are an unordered set
        vit.pos_embed.zero_()
    a, b = vit(x).embedding, vit(torch.roll(x, shifts=4, dims=-1)).embedding
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_vit_classifier_gives_logits():
    model = ViTClassifier(VCFG, num_classes=5)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def _tokens():
    # <sot>=1 ... <eot>=2, then padding 0
    return torch.tensor([[1, 5, 6, 7, 2, 0, 0, 0, 0, 0], [1, 9, 2, 0, 0, 0, 0, 0, 0, 0]])


def test_eot_index_is_found_by_id_not_argmax():
    tokens = _tokens()
    assert eot_index(tokens, 2).tolist() == [4, 2]
    assert tokens.argmax(1).tolist() != [4, 2]  # argmax would pick the largest id instead


def test_text_encoder_pools_at_eot():
    enc = TextTransformer(TCFG, embed_dim=8).eval()
    out = enc(_tokens())
    torch.testing.assert_close(out.features[0], out.tokens[0, 4])
    torch.testing.assert_close(out.features[1], out.tokens[1, 2])
    assert out.embedding.shape == (2, 8)


def test_padding_never_changes_the_pooled_output():
    enc = TextTransformer(TCFG, embed_dim=8).eval()
    tokens = _tokens()
    other_padding = tokens.clone()
    other_padding[0, 5:] = torch.tensor([3, 4, 5, 6, 7])  # junk after <eot>
    other_padding[1, 3:] = 11
    shorter = tokens[:, :5]  # row 0 exactly fits; row 1 still has its <eot>
    base = enc(tokens).embedding
    torch.testing.assert_close(enc(other_padding).embedding, base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(enc(shorter).embedding, base, rtol=1e-5, atol=1e-5)


def test_causal_mask_future_tokens_never_change_earlier_outputs():
    enc = TextTransformer(TCFG, embed_dim=8).eval()
    a = torch.tensor([[1, 5, 6, 7, 8, 9, 2, 0, 0, 0]])
    b = a.clone()
    b[0, 4:6] = torch.tensor([20, 21])  # change positions 4 and 5
    ta, tb = enc(a).tokens, enc(b).tokens
    torch.testing.assert_close(ta[:, :4], tb[:, :4], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ta[:, 4:], tb[:, 4:], atol=1e-4)


def test_text_attention_is_causal():
    enc = TextTransformer(TCFG, embed_dim=8)
    out = enc(_tokens(), output_attentions=True)
    for weights in out.attentions:
        assert torch.all(weights.triu(1) == 0)


@pytest.mark.parametrize("heads", [3, 5])
def test_config_rejects_width_not_divisible_by_heads(heads):
    with pytest.raises(ValueError, match="divisible by heads"):
        VisionTransformer(VisionConfig(width=32, heads=heads), embed_dim=8)
