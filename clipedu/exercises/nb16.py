"""Exercises of notebook 16: the prefix-LM mask, what a decoder-only model's first picture token
sees, what cross-attention costs in parameters, and how much a prefix opens up."""

from __future__ import annotations

import torch
from torch import nn

from clipedu.architectures import influence_matrix
from clipedu.attention import CrossAttention, causal_mask, prefix_mask
from clipedu.exercises import Exercise, as_number, compare_tensors, prediction
from clipedu.transformer import Transformer


# --- 1. the prefix-LM mask --------------------------------------------------------------------------------
def _check_prefix_mask(fn) -> str | None:
    for n_prefix, n in ((2, 5), (0, 4), (4, 4), (3, 7)):
        call = f"my_prefix_mask(n_prefix={n_prefix}, n={n})"
        got = fn(n_prefix, n)
        expected = prefix_mask(n_prefix, n)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.equal(got.bool(), expected):
            got_bool = got.bool()
            if n_prefix and torch.equal(got_bool, expected.T):
                return (f"{call}: rows are queries and columns keys; yours is transposed, so the prefix would read "
                        "the answer and the answer could not read the prefix.")
            if 0 < n_prefix < n and torch.equal(got_bool, causal_mask(n)):
                return (f"{call} is the plain causal mask: the prefix tokens should also see each other both ways "
                        "(row i, column j is True for every j < n_prefix).")
            reads_ahead = causal_mask(n)
            reads_ahead[:n_prefix] = True
            if 0 < n_prefix < n and torch.equal(got_bool, reads_ahead):
                return (f"{call}: your prefix rows read every token, the answer's too; the prefix may see only "
                        "itself, or generating the answer would change the prefix it was generated from.")
        problem = compare_tensors(call, got.bool() if isinstance(got, torch.Tensor) else got, expected)
        if problem:
            return problem
    return None


prefix = Exercise(
    name="prefix",
    task="my_prefix_mask(n_prefix, n) -> (n, n) bool, True where query i may attend to key j: "
    "both ways inside the first n_prefix tokens, causal after them",
    checker=_check_prefix_mask,
    hint_text="Start from the causal mask torch.ones(n, n, dtype=torch.bool).tril(), then open the prefix's "
    "columns: every query may read every prefix token.",
    solution_code="""
    import torch


    def my_prefix_mask(n_prefix, n):
        mask = torch.ones(n, n, dtype=torch.bool).tril()  # causal: query i reads keys 0..i
        mask[:, :n_prefix] = True  # and every query reads the whole prefix
        return mask
    """,
    reference=lambda: prefix_mask,
    mistakes=[
        (lambda: lambda p, n: prefix_mask(p, n).T, "transposed"),
        (lambda: lambda p, n: causal_mask(n), "plain causal mask"),
        (lambda: lambda p, n: _reads_ahead(p, n), "prefix rows read every token"),
        (lambda: lambda p, n: torch.ones(n, n, dtype=torch.bool), "my_prefix_mask"),
    ],
    success="one mask turns a decoder into a prefix-LM: the same weights, a different view of the prefix.",
)


def _reads_ahead(n_prefix, n):
    mask = causal_mask(n)
    mask[:n_prefix] = True
    return mask


# --- 2. a prediction: what the decoder-only model's first picture token sees -------------------------------
predict_first_patch = prediction(
    "predict_first_patch",
    "In the decoder-only model the picture's 16 tokens come first, under the causal mask. Does the output "
    "of the first picture token (the top-left patch) change when the last picture token changes: 'yes' or 'no'?",
    "no",
    choices=("yes", "no"),
    why="Under the causal mask query i reads keys 0..i only, in every block, so nothing after the first "
    "token ever reaches it: the top-left patch is read without the rest of the picture. In the prefix-LM and "
    "the encoders every picture token sees the whole picture.",
    hint="Row 0 of a causal mask has one True entry. Stacking blocks composes masks: can a path of allowed "
    "steps lead from the last token back to the first?",
)


# --- 3. a derivation: what cross-attention costs ----------------------------------------------------------
def _cross_params(width: int, memory_width: int) -> int:
    module = nn.ModuleList([nn.LayerNorm(width), CrossAttention(width, memory_width, heads=1)])
    return sum(p.numel() for p in module.parameters())


def _check_cross_params(fn) -> str | None:
    for d, c in ((64, 64), (64, 96), (8, 3), (768, 1408)):
        call = f"my_cross_params(width={d}, memory_width={c})"
        got = as_number(fn(d, c))
        expected = _cross_params(d, c)
        if got is None:
            return f"{call} should return one number of parameters, got {fn(d, c)!r}."
        if got == expected:
            continue
        if got == expected - 2 * d:
            return f"{call} = {got:.0f}: add the LayerNorm before the cross-attention (a gain and a bias, 2D)."
        if got == expected - 4 * d:
            return f"{call} = {got:.0f}: the three linear maps have biases too (D for q, 2D for k and v, D out)."
        if c != d and got == _cross_params(d, d):
            return (f"{call} = {got:.0f} counts keys and values made from width-D inputs; they are made from the "
                    f"encoder's outputs, width C = {c}: the k and v maps are C x D each.")
        return f"{call}: expected {expected}, got {got:.0f}. Count q (D x D + D), k and v (C x D + D each), out, LN."
    return None


cross_params = Exercise(
    name="cross_params",
    task="my_cross_params(width D, memory_width C) -> parameters that one decoder block's cross-attention adds, "
    "its LayerNorm included, as a formula in D and C",
    checker=_check_cross_params,
    hint_text="Queries come from the decoder (D -> D), keys and values from the encoder's outputs (C -> D each), "
    "and an output map mixes the heads (D -> D). Every nn.Linear has a bias; the LayerNorm has a gain and a bias.",
    solution_code="""
    def my_cross_params(width, memory_width):
        d, c = width, memory_width
        return (d * d + d) + 2 * (c * d + d) + (d * d + d) + 2 * d  # q, k and v, out, LayerNorm: 2D^2 + 2CD + 6D
    """,
    reference=lambda: _cross_params,
    mistakes=[
        (lambda: lambda d, c: _cross_params(d, c) - 2 * d, "LayerNorm"),
        (lambda: lambda d, c: _cross_params(d, c) - 4 * d, "biases"),
        (lambda: lambda d, c: _cross_params(d, d), "width C"),
        (lambda: lambda d, c: 4 * d * d, "expected"),
    ],
    success="2D^2 + 2CD + 6D per decoder block: the price of reading a second sequence with separate weights.",
    kind="derive",
)


# --- 4. an experiment: the prefix's length against what can influence what ---------------------------------
EXPERIMENT_TOKENS = 10


def experiment_setup():
    """A random 2-block transformer (width 16) and 10 random input tokens, (1, 10, 16): the same every call.
    ``run(x, mask)`` is the stack under a boolean mask."""
    torch.manual_seed(0)
    stack = Transformer(16, 2, 2).eval()
    x = torch.randn(1, EXPERIMENT_TOKENS, 16, generator=torch.Generator().manual_seed(1))
    return stack, x


def _open_pairs(n_prefix: int) -> int:
    stack, x = experiment_setup()
    mask = prefix_mask(n_prefix, EXPERIMENT_TOKENS)
    return int((influence_matrix(lambda t: stack(t, mask=mask), x) > 0).sum())


def _check_experiment(fn) -> str | None:
    measured = fn()
    if not isinstance(measured, dict):
        return ("return a dict {prefix length: number of (output, input) pairs that influence}, "
                f"got {type(measured).__name__}.")
    if len(measured) < 3:
        return (f"you measured {len(measured)} setting(s); an experiment needs at least 3 prefix lengths to show "
                "a trend (e.g. 0, 5, 10).")
    for n_prefix in measured:
        if not isinstance(n_prefix, int) or not 0 <= n_prefix <= EXPERIMENT_TOKENS:
            return f"each key is a prefix length, an int from 0 to {EXPERIMENT_TOKENS}; got {n_prefix!r}."
    for n_prefix, value in sorted(measured.items()):
        got = as_number(value)
        if got is None:
            return f"the count for prefix {n_prefix} should be one number, got {type(value).__name__}."
        expected = _open_pairs(n_prefix)
        if got == expected:
            continue
        if got == int(prefix_mask(n_prefix, EXPERIMENT_TOKENS).sum()) - EXPERIMENT_TOKENS:
            return (f"for prefix {n_prefix} you left out the diagonal: every output is influenced by its own "
                    f"input, so the checker measured {expected} pairs.")
        return (f"for prefix {n_prefix} the checker measured {expected} influencing pairs, you reported {got:.0f}. "
                "Count the entries above zero of influence_matrix(lambda t: stack(t, mask=prefix_mask(p, 10)), x).")
    return None


def _reference_experiment():
    return {p: _open_pairs(p) for p in (0, 4, 7, 10)}


prefix_experiment = Exercise(
    name="prefix_experiment",
    task="my_experiment() -> {prefix length: pairs (output i, input j) where input j moves output i}, measured "
    "with influence_matrix on nb16.experiment_setup()'s stack for at least 3 prefix lengths",
    checker=_check_experiment,
    hint_text="stack, x = nb16.experiment_setup(); for each p, mask = prefix_mask(p, 10), then count "
    "(influence_matrix(lambda t: stack(t, mask=mask), x) > 0).sum().",
    solution_code="""
    from clipedu.architectures import influence_matrix
    from clipedu.attention import prefix_mask
    from clipedu.exercises import nb16


    def my_experiment():
        stack, x = nb16.experiment_setup()
        pairs = {}
        for p in (0, 4, 7, 10):  # the one thing changed: how many tokens form the prefix
            mask = prefix_mask(p, x.shape[1])
            pairs[p] = int((influence_matrix(lambda t: stack(t, mask=mask), x) > 0).sum())
        return pairs
    """,
    reference=lambda: _reference_experiment,
    mistakes=[
        (lambda: lambda: {0: 55, 5: 70, 10: 90}, "the checker measured"),
        (lambda: lambda: {10: 100}, "at least 3"),
        (lambda: lambda: {p: _open_pairs(p) - EXPERIMENT_TOKENS for p in (0, 5, 10)}, "diagonal"),
    ],
    success="a measured count: 55 pairs under the causal mask, 100 with everything in the prefix, and "
    "n(n+1)/2 + p(p-1)/2 in between.",
    kind="experiment",
)
