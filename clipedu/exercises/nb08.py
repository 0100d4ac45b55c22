"""Exercises of notebook 08: the CLS row as a map, attention rollout, relevancy."""

from __future__ import annotations

import torch

from clipedu.exercises import Exercise, compare_tensors
from clipedu.interpret import attention_rollout, cls_attention, relevancy_from


def _attentions(layers=3, batch=2, heads=3, tokens=10, seed=0):
    """Random attention weights (L, B, H, T, T), rows summing to 1; T - 1 = 9 patches, a 3 x 3 grid."""
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(layers, batch, heads, tokens, tokens, generator=g)).softmax(-1)


# --- 1. the CLS row as a map -------------------------------------------------------------------------------
def _check_cls_map(fn) -> str | None:
    a = _attentions(tokens=10)  # 9 patches; a 3 x 3 grid tells rows from columns
    for layer, head in ((2, 1), (0, 0), (1, 2)):
        expected = cls_attention(a, layer, head)  # (B, 3, 3)
        got = fn(a.clone(), layer, head)
        where = f"cls_map(attentions, layer={layer}, head={head})"
        if not isinstance(got, torch.Tensor):
            return f"{where} should return a tensor (B, g, g), got {type(got).__name__}."
        if tuple(got.shape) != tuple(expected.shape):
            if got.numel() == expected.numel() + a.shape[1]:
                return (f"{where} should have shape {tuple(expected.shape)}, got {tuple(got.shape)}: leave out "
                        "the CLS token's weight on itself (column 0); the map is over the patches 1: only.")
            return (f"{where} should have shape {tuple(expected.shape)} (B, g, g): the CLS row over the "
                    f"patches, reshaped into the grid; got {tuple(got.shape)}.")
        if torch.allclose(got, expected, atol=1e-6):
            continue
        b = a[layer, :, head]  # (B, T, T)
        if torch.allclose(got, b[:, 1:, 0].reshape(expected.shape), atol=1e-6):
            return (f"{where} reads column 0 (how much each patch reads the CLS token); the map is row 0: "
                    "how much the CLS token reads each patch, attentions[layer][:, head, 0, 1:].")
        if torch.allclose(got, expected.transpose(1, 2), atol=1e-6):
            return f"{where} is transposed: patches are numbered row by row, so reshape to (B, g, g) directly."
        if torch.allclose(got, a[layer, :, :, 0, 1:].mean(1).reshape(expected.shape), atol=1e-6):
            return f"{where} averages the heads; pick head {head} (dimension 1 of a layer's (B, H, T, T))."
        if torch.allclose(got, a[head, :, layer, 0, 1:].reshape(expected.shape), atol=1e-6) and head != layer:
            return f"{where} swapped layer and head: attentions[layer] is (B, H, T, T), the head comes second."
        return compare_tensors(where, got, expected, atol=1e-6)
    return None


def _ref_cls_map(attentions, layer, head):
    row = attentions[layer][:, head, 0, 1:]  # (B, N): the CLS token's weights on the patches
    g = int(row.shape[-1] ** 0.5)
    return row.reshape(-1, g, g)  # (B, g, g), patches row by row


cls_map = Exercise(
    name="cls_map",
    task="Turn one layer's and one head's attention into a map: the CLS row over the patches, as a grid.",
    checker=_check_cls_map,
    hint_text="attentions[layer] is (B, H, T, T); take head `head`, row 0 (the CLS token as the query), "
    "columns 1: (the patches), and reshape the N values into a g x g grid with g = sqrt(N).",
    solution_code="""
    def cls_map(attentions, layer, head):
        row = attentions[layer][:, head, 0, 1:]  # (B, N)
        g = int(row.shape[-1] ** 0.5)
        return row.reshape(-1, g, g)  # (B, g, g)
    """,
    reference=lambda: _ref_cls_map,
    mistakes=[
        (lambda: lambda a, layer, head: a[layer][:, head, 0, :], "leave out"),
        (lambda: lambda a, layer, head: a[layer][:, head, 1:, 0].reshape(-1, 3, 3), "row 0"),
        (lambda: lambda a, layer, head: _ref_cls_map(a, layer, head).transpose(1, 2), "transposed"),
        (lambda: lambda a, layer, head: a[layer][:, :, 0, 1:].mean(1).reshape(-1, 3, 3), "averages the heads"),
    ],
    success="that is the map the first figure of this notebook draws, one per layer and head.",
)


# --- 2. attention rollout -------------------------------------------------------------------------------------
def _rollout_variants(a: torch.Tensor) -> dict[str, torch.Tensor]:
    mean = a.mean(2)  # (L, B, T, T)
    eye = torch.eye(a.shape[-1])
    mixed = 0.5 * mean + 0.5 * eye
    variants = {}
    r = eye.expand_as(mean[0])
    for layer in mean:
        r = layer @ r
    variants["no residual"] = r
    r = eye.expand_as(mean[0])
    for layer in mixed:
        r = r @ layer
    variants["wrong order"] = r
    r = eye.expand_as(mean[0])
    for layer in mean + eye:
        r = layer @ r
    variants["not renormalised"] = r
    r = eye.expand_as(mean[0])
    for layer in 0.5 * a.amax(2) + 0.5 * eye:
        r = layer @ r
    variants["max over heads"] = r
    variants["last layer only"] = mixed[-1]
    return variants


_ROLLOUT_ADVICE = {
    "no residual": "you multiplied the raw attention matrices. Each block also adds its input back (the "
    "residual stream): use 0.5 * A + 0.5 * I, the identity for the residual, before multiplying.",
    "wrong order": "the product is in the wrong order. Block l mixes what the blocks below produced: "
    "R = A_l @ R (new block on the left), not R @ A_l.",
    "not renormalised": "the rows of your result do not sum to 1: after adding the identity, renormalise each "
    "row (divide A + I by its row sums, i.e. 0.5 * A + 0.5 * I).",
    "max over heads": "you fused the heads with a max; rollout as Abnar and Zuidema define it takes the mean "
    "over heads (dimension 2 of (L, B, H, T, T)).",
    "last layer only": "that is only the last block. Rollout multiplies every block's matrix, from the first "
    "to the last.",
}


def _check_rollout(fn) -> str | None:
    for layers, tokens in ((3, 10), (1, 5), (4, 17)):
        a = _attentions(layers, tokens=tokens, seed=layers)
        expected = attention_rollout(a)  # (B, T, T)
        got = fn(a.clone())
        where = f"rollout of {layers} layers"
        if not isinstance(got, torch.Tensor):
            return f"the {where} should be a tensor (B, T, T), got {type(got).__name__}."
        if tuple(got.shape) != tuple(expected.shape):
            return (f"the {where} should have shape {tuple(expected.shape)} (B, T, T): one T x T matrix per "
                    f"image, heads averaged away; got {tuple(got.shape)}.")
        if torch.allclose(got, expected, atol=1e-5):
            continue
        for name, wrong in _rollout_variants(a).items():
            if torch.allclose(got, wrong, atol=1e-5):
                return _ROLLOUT_ADVICE[name]
        return compare_tensors(f"the {where}", got, expected)
    return None


def _ref_rollout(attentions):
    a = attentions.mean(dim=2)  # (L, B, T, T): heads averaged
    eye = torch.eye(a.shape[-1])
    rollout = eye.expand_as(a[0])  # (B, T, T)
    for layer in a:
        mixed = layer + eye  # the residual connection
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)  # rows sum to 1 again
        rollout = mixed @ rollout
    return rollout


def _wrong_rollout(name):
    return lambda: lambda a: _rollout_variants(a)[name]


rollout = Exercise(
    name="rollout",
    task="Attention rollout: average the heads, add the identity and renormalise, multiply the blocks.",
    checker=_check_rollout,
    hint_text="Start from R = I (T x T). For each layer: A = mean over heads; A = (A + I) / row sums; "
    "R = A @ R. The result is (B, T, T) and each of its rows sums to 1.",
    solution_code="""
    import torch


    def my_rollout(attentions):
        a = attentions.mean(dim=2)  # (L, B, T, T)
        eye = torch.eye(a.shape[-1])
        rollout = eye.expand_as(a[0])  # (B, T, T)
        for layer in a:
            mixed = layer + eye
            mixed = mixed / mixed.sum(dim=-1, keepdim=True)
            rollout = mixed @ rollout
        return rollout
    """,
    reference=lambda: _ref_rollout,
    mistakes=[
        (_wrong_rollout("no residual"), "residual"),
        (_wrong_rollout("wrong order"), "A_l @ R"),
        (_wrong_rollout("not renormalised"), "renormalise"),
        (_wrong_rollout("max over heads"), "mean over heads"),
        (_wrong_rollout("last layer only"), "every block"),
        (lambda: lambda a: a.mean(0), "heads averaged away"),
    ],
    success="each row of R says how much of every input token ended up in that output token.",
)


# --- 3. the relevancy update ---------------------------------------------------------------------------------
def _relevancy_variants(a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    eye = torch.eye(a.shape[-1])
    rules = {
        "relu after the mean": lambda x, y: (y * x).mean(1).clamp(min=0),
        "no relu": lambda x, y: (y * x).mean(1),
        "sum over heads": lambda x, y: (y * x).clamp(min=0).sum(1),
        "attention alone": lambda x, y: x.mean(1),
    }
    out = {}
    for name, rule in rules.items():
        r = eye.expand_as(a[0, :, 0])
        for x, y in zip(a, g):
            r = r + rule(x, y) @ r
        out[name] = r
    r = eye.expand_as(a[0, :, 0])
    for x, y in zip(a, g):
        r = (y * x).clamp(min=0).mean(1) @ r
    out["no identity"] = r
    r = eye.expand_as(a[0, :, 0])
    for x, y in zip(a, g):
        r = r + r @ (y * x).clamp(min=0).mean(1)
    out["wrong order"] = r
    return out


_RELEVANCY_ADVICE = {
    "relu after the mean": "you clamped after averaging the heads. Clamp each head's grad * A first, then "
    "average: a head whose attention lowered the score must not cancel one whose attention raised it.",
    "no relu": "your relevancy has negative entries: keep only the positive evidence, (grad * A).clamp(min=0), "
    "before averaging the heads.",
    "sum over heads": "you summed over the heads; average them (mean over dimension 1 of a layer's (B, H, T, T)).",
    "attention alone": "the gradient is missing: weigh each head's attention by the gradient of the score, "
    "grad * A, so that only attention that mattered for this text counts.",
    "no identity": "the update is R = R + A_bar @ R: keep R and add to it (the residual stream carries each "
    "token's relevance forward), starting from the identity.",
    "wrong order": "the product is in the wrong order: R = R + A_bar @ R, the new block on the left.",
}


def _check_relevancy(fn) -> str | None:
    for layers, tokens in ((3, 10), (2, 5)):
        a = _attentions(layers, tokens=tokens, seed=10 + layers)
        gen = torch.Generator().manual_seed(20 + layers)
        g = torch.randn(a.shape, generator=gen)  # gradients of both signs
        expected = relevancy_from(a, g)  # (B, T, T)
        got = fn(a.clone(), g.clone())
        where = f"relevancy of {layers} layers"
        if not isinstance(got, torch.Tensor):
            return f"the {where} should be a tensor (B, T, T), got {type(got).__name__}."
        if tuple(got.shape) != tuple(expected.shape):
            return (f"the {where} should have shape {tuple(expected.shape)} (B, T, T), got {tuple(got.shape)}: "
                    "average the heads of each layer, and keep one T x T matrix per image.")
        if torch.allclose(got, expected, atol=1e-5):
            continue
        for name, wrong in _relevancy_variants(a, g).items():
            if torch.allclose(got, wrong, atol=1e-5):
                return _RELEVANCY_ADVICE[name]
        return compare_tensors(f"the {where}", got, expected)
    return None


def _ref_relevancy(attentions, gradients):
    eye = torch.eye(attentions.shape[-1])
    relevance = eye.expand_as(attentions[0][:, 0])  # (B, T, T): each token relevant to itself
    for a, g in zip(attentions, gradients):
        a_bar = (g * a).clamp(min=0).mean(dim=1)  # (B, T, T): positive evidence, heads averaged
        relevance = relevance + a_bar @ relevance
    return relevance


def _wrong_relevancy(name):
    return lambda: lambda a, g: _relevancy_variants(a, g)[name]


relevancy_rule = Exercise(
    name="relevancy_rule",
    task="Chefer et al.'s rule: from attentions and gradients, accumulate R = R + mean_h relu(grad * A) @ R.",
    checker=_check_relevancy,
    hint_text="R starts as the identity (B, T, T). For each layer: A_bar = (grad * A).clamp(min=0).mean(dim=1), "
    "then R = R + A_bar @ R.",
    solution_code="""
    import torch


    def my_relevancy(attentions, gradients):
        eye = torch.eye(attentions.shape[-1])
        relevance = eye.expand_as(attentions[0][:, 0])  # (B, T, T)
        for a, g in zip(attentions, gradients):
            a_bar = (g * a).clamp(min=0).mean(dim=1)  # (B, T, T)
            relevance = relevance + a_bar @ relevance
        return relevance
    """,
    reference=lambda: _ref_relevancy,
    mistakes=[
        (_wrong_relevancy("relu after the mean"), "Clamp each head"),
        (_wrong_relevancy("no relu"), "negative"),
        (_wrong_relevancy("sum over heads"), "average them"),
        (_wrong_relevancy("attention alone"), "gradient is missing"),
        (_wrong_relevancy("no identity"), "R = R + A_bar @ R"),
        (_wrong_relevancy("wrong order"), "wrong order"),
    ],
    success="row 0 of R over the patches is the relevancy map for this image and text.",
)
