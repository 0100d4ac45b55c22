"""Exercises of notebook 02: softmax attention by hand, the variance of a score, the unscaled softmax, the
sharpness of attention against a factor on the scores, a causal mask, splitting heads."""

from __future__ import annotations

import functools
import math

import torch

from clipedu.attention import causal_mask as _causal_mask
from clipedu.attention import scaled_dot_product_attention as _sdpa
from clipedu.exercises import Exercise, as_number, compare_tensors, prediction


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


# --- 4. a derivation: the variance of a score ------------------------------------------------------------
_VARIANCE_CASES = ((1, 1.0, 1.0), (16, 1.0, 1.0), (64, 1.0, 1.0), (16, 4.0, 1.0), (8, 0.25, 9.0))


@functools.cache
def _sampled_score_variance(d: int, q_var: float, k_var: float, n: int = 200_000) -> float:
    g = torch.Generator().manual_seed(20 + d)
    q = torch.randn(n, d, generator=g, dtype=torch.float64) * math.sqrt(q_var)
    k = torch.randn(n, d, generator=g, dtype=torch.float64) * math.sqrt(k_var)
    return (q * k).sum(-1).var().item()


def _check_score_variance(fn) -> str | None:
    for d, qv, kv in _VARIANCE_CASES:
        call = f"score_variance(d={d}, q_var={qv}, k_var={kv})"
        got = as_number(fn(d, qv, kv))
        if got is None:
            return f"{call} should return one number, got {type(fn(d, qv, kv)).__name__}."
        sampled = _sampled_score_variance(d, qv, kv)
        if abs(got - sampled) <= 0.03 * sampled:
            continue
        where = f"{call} = {got:.4g}, but sampling 200,000 pairs of such q and k gives a variance of {sampled:.4g}."
        exact = d * qv * kv
        if abs(got - math.sqrt(exact)) < 1e-9:
            return where + " That is the standard deviation; the variance is its square."
        if abs(got - qv * kv) < 1e-9:
            return where + " That is the variance of one product q_i k_i; the score sums d of them, independent."
        if abs(got - d * (qv + kv)) < 1e-9:
            return where + " Variances of a product multiply (for independent, mean-0 factors), they do not add."
        if abs(got - d * d * qv * kv) < 1e-9:
            return where + " Variances of independent terms add: d terms give d times one term's variance, not d^2."
        return where + " Start from one product: E[(q_i k_i)^2] = E[q_i^2] E[k_i^2]; then sum over the d coordinates."
    return None


score_variance = Exercise(
    name="score_variance",
    task="score_variance(d, q_var, k_var) -> the variance of q . k when q and k have d independent mean-0 entries "
    "of variance q_var and k_var, in closed form",
    checker=_check_score_variance,
    hint_text="One product q_i k_i has mean 0 and variance E[q_i^2 k_i^2] = E[q_i^2] E[k_i^2] (independent). "
    "The score is a sum of d independent such products.",
    solution_code="""
    def score_variance(d, q_var, k_var):
        return d * q_var * k_var  # d independent products, each of variance E[q_i^2] E[k_i^2]
    """,
    reference=lambda: lambda d, q_var, k_var: d * q_var * k_var,
    mistakes=[
        (lambda: lambda d, q_var, k_var: math.sqrt(d * q_var * k_var), "standard deviation"),
        (lambda: lambda d, q_var, k_var: q_var * k_var, "sums d of them"),
        (lambda: lambda d, q_var, k_var: d * (q_var + k_var), "multiply"),
        (lambda: lambda d, q_var, k_var: d * d * q_var * k_var, "not d^2"),
    ],
    success="d q_var k_var: dividing by sqrt(d) removes the d, so with entries of unit variance the scaled scores "
    "have variance 1 at any head width.",
    kind="derive",
)


# --- 5. a prediction: what does the missing scale do? -----------------------------------------------------
predict_unscaled_weight = prediction(
    "predict_unscaled_weight",
    "Without the division by sqrt(d), as the head width d grows from 4 to 1024, the largest of a random query's "
    "16 weights (on average) will: 'approach 1', 'stay about the same' or 'approach 1/16'?",
    "approach 1",
    choices=("approach 1", "stay about the same", "approach 1/16"),
    why="The raw scores' standard deviation grows like sqrt(d), to about 32 at d = 1024, and a softmax of numbers "
    "that far apart gives nearly all the weight to the largest: the weights become nearly one-hot.",
    hint="Your derivation: how large are the raw scores at d = 1024? What does a softmax do with scores that "
    "differ by tens?",
)


# --- 6. an experiment: how sharp is attention as the scores are scaled? ------------------------------------
def experiment_setup():
    """32 random queries and 16 random keys of width 64, the same on every call: (q (32, 64), k (16, 64))."""
    g = torch.Generator().manual_seed(6)
    return torch.randn(32, 64, generator=g), torch.randn(16, 64, generator=g)


def _entropy(q, k, factor, scaled=True, log=torch.log):
    scores = q @ k.T / (math.sqrt(q.shape[-1]) if scaled else 1.0)
    p = (factor * scores).softmax(dim=-1)  # (32, 16)
    return -(p * log(p.clamp_min(1e-30))).sum(-1)  # (32,) one entropy per query


def _check_scale_experiment(fn) -> str | None:
    q, k = experiment_setup()
    measured = fn(q.clone(), k.clone())
    if not isinstance(measured, dict):
        return f"return a dict {{factor: mean entropy in nats}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} factor(s); an experiment needs at least 3 to show a trend "
                "(e.g. 0.25, 1, 4 and 16).")
    for c in measured:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c <= 100:
            return f"each key is a factor multiplying the scaled scores, a number from 0 to 100; got {c!r}."
    if 1 not in measured:
        return "include the baseline, factor 1: attention exactly as defined, softmax(q k^T / sqrt(d))."
    for c, value in sorted(measured.items()):
        got = as_number(value)
        if got is None:
            if isinstance(value, torch.Tensor):
                return (f"for factor {c} you returned a tensor of shape {tuple(value.shape)}: average the "
                        "queries' entropies into one number.")
            return f"the measurement for factor {c} should be one number, got {type(value).__name__}."
        expected = _entropy(q, k, c).mean().item()
        if abs(got - expected) <= 1e-4 + 1e-3 * expected:
            continue
        if abs(got - _entropy(q, k, c, log=torch.log2).mean().item()) <= 1e-4:
            return (f"for factor {c} you measured the entropy in bits (log2); measure it in nats, with the natural "
                    "log, as the notebook does.")
        if abs(got - _entropy(q, k, c, scaled=False).mean().item()) <= 1e-4:
            return (f"for factor {c} your scores miss the 1/sqrt(d): the factor multiplies softmax's input "
                    "q k^T / sqrt(d), so factor 1 is ordinary attention.")
        return (f"for factor {c} the checker measured a mean entropy of {expected:.4f} nats on the same q and k, "
                f"you reported {got:.4f}: weights = (factor * q @ k.T / sqrt(64)).softmax(-1), then "
                "-(weights * weights.log()).sum(-1).mean().")
    return None


def _reference_scale_experiment(q, k, factors=(0.25, 1.0, 4.0, 16.0), **kwargs):
    return {c: _entropy(q, k, c, **kwargs).mean().item() for c in factors}


scale_experiment = Exercise(
    name="scale_experiment",
    task="my_experiment(q, k) -> {factor c: mean entropy (nats) of softmax(c q k^T / sqrt(d))}, at least 3 factors, "
    "c = 1 included",
    checker=_check_scale_experiment,
    hint_text="For each factor c: weights = (c * q @ k.T / math.sqrt(q.shape[-1])).softmax(dim=-1), one row per "
    "query; entropy = -(weights * weights.log()).sum(-1), then its mean over the queries.",
    solution_code="""
    import math


    def my_experiment(q, k):
        d = q.shape[-1]
        entropy = {}
        for c in (0.25, 1.0, 4.0, 16.0):  # the one thing changed: a factor on the scores
            weights = (c * q @ k.T / math.sqrt(d)).softmax(dim=-1)  # (32, 16), rows sum to 1
            entropy[c] = -(weights * weights.log()).sum(dim=-1).mean().item()  # nats, averaged over queries
        return entropy
    """,
    reference=lambda: _reference_scale_experiment,
    mistakes=[
        (lambda: lambda q, k: {0.25: 2.7, 1.0: 2.3, 4.0: 1.0}, "the checker measured"),
        (lambda: lambda q, k: _reference_scale_experiment(q, k, (1.0, 4.0)), "at least 3"),
        (lambda: lambda q, k: _reference_scale_experiment(q, k, (0.25, 4.0, 16.0)), "baseline"),
        (lambda: lambda q, k: _reference_scale_experiment(q, k, log=torch.log2), "nats"),
        (lambda: lambda q, k: _reference_scale_experiment(q, k, scaled=False), "sqrt(d)"),
        (lambda: lambda q, k: {c: _entropy(q, k, c) for c in (0.25, 1.0, 4.0)}, "average"),
    ],
    success="the larger the factor, the lower the entropy: near ln 16 = 2.77 nats (even) for a small factor, "
    "towards 0 (one key) for a large one. Leaving out 1/sqrt(d) is the factor sqrt(d) = 8 here; notebook 05 meets "
    "the same knob in the contrastive loss, as the logit scale (one over the temperature).",
    kind="experiment",
)
