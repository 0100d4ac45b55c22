import pytest
import torch
import torch.nn.functional as F

from clipedu.attention import MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention


def _qkv(b=2, h=3, n=7, d=8):
    return torch.randn(b, h, n, d), torch.randn(b, h, n, d), torch.randn(b, h, n, d)


def test_explicit_attention_matches_torch_without_mask():
    q, k, v = _qkv()
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 7))


def test_explicit_attention_matches_torch_with_causal_mask():
    q, k, v = _qkv()
    out, weights = scaled_dot_product_attention(q, k, v, causal_mask(7))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.all(weights.triu(1) == 0), "a query attended to a later key"


def test_explicit_attention_matches_torch_with_padding_mask():
    q, k, v = _qkv()
    tokens = torch.tensor([[5, 6, 7, 0, 0, 0, 0], [5, 6, 7, 8, 9, 1, 0]])
    mask = padding_mask(tokens, pad_id=0)  # (B, 1, 1, L)
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=1e-5, atol=1e-5)
    assert torch.all(weights[0, :, :, 3:] == 0) and torch.all(weights[1, :, :, 6] == 0)


def test_float_mask_is_added_to_scores():
    q, k, v = _qkv()
    bias = torch.randn(7, 7)
    out, _ = scaled_dot_product_attention(q, k, v, bias)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["none", "causal", "padding", "padding+causal"])
def test_multihead_fast_and_explicit_paths_agree(case):
    mha = MultiHeadAttention(width=32, heads=4)
    x = torch.randn(2, 9, 32)
    tokens = torch.tensor([[3] * 6 + [0] * 3, [3] * 9])
    mask = padding_mask(tokens, 0) if "padding" in case else None
    causal = "causal" in case
    fast, none = mha(x, mask=mask, is_causal=causal)
    slow, weights = mha(x, mask=mask, is_causal=causal, need_weights=True)
    assert none is None and weights.shape == (2, 4, 9, 9)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_multihead_matches_torch_multiheadattention_with_same_weights():
    mha = MultiHeadAttention(width=32, heads=4)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(mha.qkv.weight)
        ref.in_proj_bias.copy_(mha.qkv.bias)
        ref.out_proj.weight.copy_(mha.out_proj.weight)
        ref.out_proj.bias.copy_(mha.out_proj.bias)
    x = torch.randn(3, 5, 32)
    out, weights = mha(x, need_weights=True)
    ref_out, ref_weights = ref(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-5, atol=1e-5)


def test_scale_keeps_softmax_from_saturating():
    # With wide heads, unscaled dot products have std ~ sqrt(d): the softmax becomes nearly one-hot.
    torch.manual_seed(0)
    d = 256
    q, k = torch.randn(1000, d), torch.randn(1000, 16, d)
    scores = (k @ q[:, :, None]).squeeze(-1)  # (1000, 16)
    unscaled_max = scores.softmax(-1).max(-1).values.mean()
    scaled_max = (scores / d**0.5).softmax(-1).max(-1).values.mean()
    assert unscaled_max > 0.9 and scaled_max < 0.5


def test_width_not_divisible_by_heads_is_an_error():
    with pytest.raises(ValueError, match="divisible by heads"):
        MultiHeadAttention(width=30, heads=4)


@pytest.mark.parametrize("case", ["none", "causal", "padding", "padding+causal", "square mask"])
@pytest.mark.parametrize("rows", [slice(0, 3), slice(4, 9), slice(8, 9)])
@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_rows_are_the_full_outputs_rows(case, rows, need_weights):
    mha = MultiHeadAttention(width=32, heads=4)
    x = torch.randn(2, 9, 32)
    tokens = torch.tensor([[3] * 6 + [0] * 3, [3] * 9])
    mask = padding_mask(tokens, 0) if "padding" in case else None
    if case == "square mask":
        mask = torch.rand(9, 9) > 0.3
        mask[:, 0] = True  # every query sees one key at least
    causal = "causal" in case
    full, full_weights = mha(x, mask=mask, is_causal=causal, need_weights=need_weights)
    part, part_weights = mha(x, mask=mask, is_causal=causal, need_weights=need_weights, rows=rows)
    assert part.shape == (2, rows.stop - rows.start, 32)
    torch.testing.assert_close(part, full[:, rows], rtol=1e-5, atol=1e-5)
    if need_weights:
        torch.testing.assert_close(part_weights, full_weights[:, :, rows])
    # Row 0 alone: the gradient reaches every token it may see (their keys and values), and no other.
    x.requires_grad_(True)
    mha(x, mask=mask, is_causal=causal, rows=slice(0, 1))[0].sum().backward()
    seen = torch.ones(9, dtype=torch.bool) if mask is None or mask.dim() == 4 else mask[0].clone()
    if causal:
        seen[1:] = False
    reached = x.grad[1].abs().sum(-1) > 0  # the second example has no padding
    assert torch.equal(reached, seen)


@pytest.mark.parametrize("rows", [[0, 1], slice(0, 6, 2), 3])
def test_multihead_rows_must_be_a_plain_slice(rows):
    with pytest.raises(ValueError, match="rows must be a slice with step 1"):
        MultiHeadAttention(width=32, heads=4)(torch.randn(1, 6, 32), rows=rows)
