"""Exercises of notebook 02: softmax attention by hand, a causal mask, splitting heads."""

from __future__ import annotations

import math

import torch

from clipedu.attention import causal_mask as _causal_mask
from clipedu.attention import scaled_dot_product_attention as _sdpa
from clipedu.exercises import Exercise, compare_tensors


# --- 1. attention by hand ----------------------------------------------------------------------------
def _attention_cases():
    g = torch.Generator().manual_seed(3)
    # Different numbers of queries and keys and a width that is neither, so a transpose in the wrong
    # place shows up as a shape, not as silently wrong numbers.
    return [
        (torch.randn(5, 16, generator=g), torch.randn(7, 16, generator=g), torch.randn(7, 16, generator=g)),
        (torch.randn(2, 3, 4, 8, generator=g), torch.randn(2, 3, 6, 8, generator=g),
         torch.randn(2, 3, 6, 8, generator=g)),
    ]


def _check_attention(attention) -> str | None:
    for q, k, v in _attention_cases():
        d = q.shape[-1]
        expected_out, expected_w = _sdpa(q, k, v)
        result = attention(q.clone(), k.clone(), v.clone())
        where = f"attention(q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)})"
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            return f"{where} should return two tensors, (output, weights); got {type(result).__name__}."
        out, weights = result
        if not isinstance(weights, torch.Tensor):
            return f"the weights should be a torch.Tensor, got {type(weights).__name__}."
        if tuple(weights.shape) != tuple(expected_w.shape):
            return (f"the weights of {where} should have shape (..., Nq, Nk) = {tuple(expected_w.shape)}, got "
                    f"{tuple(weights.shape)}: scores are q @ k.transpose(-2, -1), one row per query.")
        if weights.shape == expected_w.shape and not torch.allclose(weights, expected_w, atol=1e-5):
            unscaled = (q @ k.transpose(-2, -1)).softmax(-1)
            over_d = (q @ k.transpose(-2, -1) / d).softmax(-1)
            by_column = (q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(-2)
            if torch.allclose(weights, unscaled, atol=1e-5):
                return f"the weights are too peaked: you forgot to divide the scores by sqrt(d) = sqrt({d})."
            if torch.allclose(weights, over_d, atol=1e-5):
                return f"divide the scores by sqrt(d) = {math.sqrt(d):.3g}, not by d = {d}."
            if torch.allclose(weights, by_column, atol=1e-5):
                return ("each query's weights should sum to 1 over the keys: take the softmax over the last "
                        "dimension (dim=-1), not over the queries.")
            rows = weights.sum(-1)
            if not torch.allclose(rows, torch.ones_like(rows), atol=1e-4):
                return "each row of the weights should sum to 1 (a softmax over the keys, dim=-1)."
        problem = compare_tensors(f"the weights of {where}", weights, expected_w)
        if problem:
            return problem
        problem = compare_tensors(f"the output of {where}", out, expected_out)
        if problem:
            return problem + " The output is weights @ v: each query's weighted average of the values."
    return None


def _attention_reference(q, k, v):
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (..., Nq, Nk)
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def _forgot_scale(q, k, v):
    weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    return weights @ v, weights


def _divide_by_d(q, k, v):
    weights = (q @ k.transpose(-2, -1) / q.shape[-1]).softmax(dim=-1)
    return weights @ v, weights


def _softmax_over_queries(q, k, v):
    weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-2)
    return weights @ v, weights


def _keys_times_queries(q, k, v):
    weights = (k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)  # (..., Nk, Nq)
    return weights @ q, weights


attention = Exercise(
    name="attention",
    task="attention(q, k, v) -> (softmax(q k^T / sqrt(d)) v, weights) for q (..., Nq, d), k, v (..., Nk, d)",
    checker=_check_attention,
    hint_text="scores = q @ k.transpose(-2, -1) is (..., Nq, Nk); divide by math.sqrt(d) with d = q.shape[-1]; "
    "softmax over the last dimension (the keys); the output is weights @ v.",
    solution_code="""
    import math


    def attention(q, k, v):
        d = q.shape[-1]
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (..., Nq, Nk)
        weights = scores.softmax(dim=-1)  # each query's weights sum to 1 over the keys
        return weights @ v, weights  # (..., Nq, d), (..., Nq, Nk)
    """,
    reference=lambda: _attention_reference,
    mistakes=[
        (lambda: _forgot_scale, "sqrt(d)"),
        (lambda: _divide_by_d, "not by d"),
        (lambda: _softmax_over_queries, "dim=-1"),
        (lambda: _keys_times_queries, "k.transpose(-2, -1)"),
        (lambda: lambda q, k, v: _attention_reference(q, k, v)[0], "(output, weights)"),
    ],
)


# --- 2. the causal mask --------------------------------------------------------------------------------
def _check_causal(make_causal_mask) -> str | None:
    for n in (4, 7, 1):
        expected = _causal_mask(n)  # (n, n) bool, True where j <= i
        got = make_causal_mask(n)
        where = f"make_causal_mask({n})"
        if not isinstance(got, torch.Tensor):
            return f"{where} should return a torch.Tensor, got {type(got).__name__}."
        if tuple(got.shape) != (n, n):
            return (f"{where} should have shape ({n}, {n}), one row per query and one column per key; "
                    f"got {tuple(got.shape)}.")
        if got.dtype != torch.bool:
            return (f"{where} should be a bool tensor (True = may attend), got {got.dtype}; "
                    "compare with a condition or call .bool().")
        if torch.equal(got, expected):
            continue
        if torch.equal(got, ~expected):
            return (f"{where} is inverted: True must mean 'may attend'. Query i may look at keys j <= i "
                    "(itself and the tokens before it).")
        if torch.equal(got, expected.T):
            return (f"{where} is transposed: rows are queries, columns are keys, and query i may see keys "
                    "j <= i, so the True entries lie on and below the diagonal.")
        if torch.equal(got, expected & ~torch.eye(n, dtype=torch.bool)):
            return (f"{where} leaves out the diagonal: a token may attend to itself (and the first token has "
                    "nothing else).")
        wrong = torch.nonzero(got != expected)[0].tolist()
        return f"{where} is wrong at query {wrong[0]}, key {wrong[1]}: it should be {bool(expected[tuple(wrong)])}."
    return None


causal_mask = Exercise(
    name="causal_mask",
    task="make_causal_mask(n) -> (n, n) bool, True where query i may attend to key j (j <= i)",
    checker=_check_causal,
    hint_text="torch.ones(n, n, dtype=torch.bool).tril() keeps the diagonal and everything below it; or compare "
    "torch.arange(n)[None, :] <= torch.arange(n)[:, None].",
    solution_code="""
    import torch


    def make_causal_mask(n):
        i = torch.arange(n)[:, None]  # (n, 1) query index
        j = torch.arange(n)[None, :]  # (1, n) key index
        return j <= i  # (n, n) bool
    """,
    reference=lambda: lambda n: torch.arange(n)[None, :] <= torch.arange(n)[:, None],
    mistakes=[
        (lambda: lambda n: torch.ones(n, n, dtype=torch.bool).triu(1), "inverted"),
        (lambda: lambda n: torch.ones(n, n, dtype=torch.bool).triu(), "transposed"),
        (lambda: lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1), "diagonal"),
        (lambda: lambda n: torch.ones(n, n).tril(), "bool"),
    ],
)


# --- 3. splitting heads ------------------------------------------------------------------------------
def _split_cases():
    g = torch.Generator().manual_seed(4)
    return [(torch.randn(2, 5, 12, generator=g), 3), (torch.randn(1, 4, 8, generator=g), 2)]


def _check_split_heads(split_heads) -> str | None:
    for x, heads in _split_cases():
        b, n, d = x.shape
        expected = x.view(b, n, heads, d // heads).transpose(1, 2)  # (B, H, N, D/H)
        got = split_heads(x.clone(), heads)
        where = f"split_heads(x of shape {tuple(x.shape)}, heads={heads})"
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (b, n, heads, d // heads):
            return (f"{where} has shape (B, N, H, D/H) = {tuple(got.shape)}; attention works on the last two "
                    "dimensions, so the heads must come before the tokens: add .transpose(1, 2).")
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.allclose(got, expected):
            if torch.allclose(got, x.reshape(b, heads, n, d // heads)):
                return (f"{where} reshapes straight to (B, H, N, D/H), which mixes numbers of different tokens "
                        "into one row: reshape to (B, N, H, D/H) first (each token's vector cut into H slices), "
                        "then transpose(1, 2).")
        problem = compare_tensors(where, got, expected)
        if problem:
            return problem
    return None


split_heads = Exercise(
    name="split_heads",
    task="split_heads(x (B, N, D), heads) -> (B, H, N, D/H): each token's vector cut into H slices, heads first",
    checker=_check_split_heads,
    hint_text="x.view(B, N, H, D // H) cuts each token's vector into H slices; .transpose(1, 2) then puts the "
    "head dimension before the tokens.",
    solution_code="""
    def split_heads(x, heads):
        b, n, d = x.shape
        return x.view(b, n, heads, d // heads).transpose(1, 2)  # (B, H, N, D/H)
    """,
    reference=lambda: lambda x, heads: x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2),
    mistakes=[
        (lambda: lambda x, heads: x.view(x.shape[0], x.shape[1], heads, -1), "transpose(1, 2)"),
        (lambda: lambda x, heads: x.reshape(x.shape[0], heads, x.shape[1], -1), "mixes numbers of different tokens"),
        (lambda: lambda x, heads: x.view(x.shape[0], x.shape[1], heads, -1).permute(0, 2, 3, 1), "should have shape"),
    ],
)
