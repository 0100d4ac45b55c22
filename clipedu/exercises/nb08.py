"""Exercises of notebook 08: the CLS row as a map, what an untrained network looks at, attention rollout, the
rollout of uniform attention, the residual's weight in rollout, relevancy."""

from __future__ import annotations

import torch

from clipedu.exercises import Exercise, as_number, compare_tensors, prediction
from clipedu.interpret import attention_rollout, cls_attention, mass_on, relevancy_from


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



# --- 4. a prediction: where does an untrained network look? ------------------------------------------------
predict_untrained_look = prediction(
    "predict_untrained_look",
    "Before training, what share of the CLS token's attention lands on the object's patches: 'about its area' "
    "(the share of the patches the object touches), 'well above its area' or 'well below its area'?",
    "about its area",
    choices=("about its area", "well above its area", "well below its area"),
    why="With random weights the queries and keys know nothing about the object: the attention logits are small "
    "and unrelated to the pixels' content, so each softmax row is close to uniform and every patch gets about "
    "the same weight. The untrained column stays within 10 points of the area in every block.",
    hint="What would make a freshly initialised query prefer the keys of the object's patches over the "
    "background's? And what does a softmax of small, unrelated logits look like?",
)


# --- 5. a derivation: the rollout of uniform attention ---------------------------------------------------------
def _uniform_rollout(layers: int, tokens: int) -> torch.Tensor:
    uniform = torch.full((layers, 1, 1, tokens, tokens), 1.0 / tokens, dtype=torch.float64)  # (L, B, H, T, T)
    return attention_rollout(uniform)[0]  # (T, T)


_UNIFORM_CASES = ((1, 17), (4, 17), (3, 5), (6, 10), (2, 50))


def _check_uniform_rollout(fn) -> str | None:
    for layers, tokens in _UNIFORM_CASES:
        call = f"uniform_rollout(layers={layers}, tokens={tokens})"
        got = fn(layers, tokens)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            return f"{call} should return two numbers, (own, other): a diagonal entry and an off-diagonal entry of R."
        own, other = as_number(got[0]), as_number(got[1])
        if own is None or other is None:
            return f"{call} should return two numbers, got {got!r}."
        r = _uniform_rollout(layers, tokens)
        want_own, want_other = r[0, 0].item(), r[0, 1].item()
        if abs(own - want_own) < 1e-6 and abs(other - want_other) < 1e-6:
            continue
        half = 0.5 ** layers
        if abs(own + (tokens - 1) * other - 1) > 1e-6:
            return (f"{call} gave own {own:.4g} and other {other:.4g}; a row of R holds one own entry and "
                    f"{tokens - 1} others, and every row of a rollout sums to 1, yours to "
                    f"{own + (tokens - 1) * other:.4g}.")
        if abs(own - 1 / tokens) < 1e-6:
            return (f"{call}: that is the rollout without the residual: uniform attention times anything whose rows "
                    "sum to 1 is uniform again. With the residual each block is 0.5 U + 0.5 I.")
        if abs(own - half) < 1e-6:
            return (f"{call}: own = 0.5^L counts only the path that takes the identity in every block; the paths "
                    f"through U can come back to the token too, 1/T of them: own = 0.5^L + (1 - 0.5^L) / T.")
        if abs(own - (0.5 + 0.5 / tokens)) < 1e-6 and layers > 1:
            return (f"{call}: that is one block, 0.5 + 0.5 / T. The blocks multiply: expand (0.5 U + 0.5 I)^L "
                    "using U @ U = U.")
        return (f"{call} gave own {own:.6g}, other {other:.6g}; multiplying the {layers} blocks gives "
                f"{want_own:.6g} and {want_other:.6g}.")
    return None


def _ref_uniform_rollout(layers, tokens):
    keep = 0.5 ** layers  # the path that takes the identity in every block
    return keep + (1 - keep) / tokens, (1 - keep) / tokens


uniform_rollout = Exercise(
    name="uniform_rollout",
    task="uniform_rollout(layers, tokens) -> (own, other): the diagonal and off-diagonal entries of the rollout of "
    "L blocks that each attend uniformly, in closed form",
    checker=_check_uniform_rollout,
    hint_text="Write U = (1/T) 1 1^T, so each block is 0.5 U + 0.5 I. U @ U = U (its rows are averages of "
    "constant rows), so (0.5 U + 0.5 I)^L = 0.5^L I + (1 - 0.5^L) U: expand and collect, or argue that rows "
    "still sum to 1.",
    solution_code="""
    def uniform_rollout(layers, tokens):
        keep = 0.5 ** layers  # the share that took the identity in every block
        return keep + (1 - keep) / tokens, (1 - keep) / tokens  # (own, other)
    """,
    reference=lambda: _ref_uniform_rollout,
    mistakes=[
        (lambda: lambda L, T: (1 / T, 1 / T), "without the residual"),
        (lambda: lambda L, T: (0.5 ** L, (1 - 0.5 ** L) / (T - 1)), "come back"),
        (lambda: lambda L, T: (0.5 + 0.5 / T, 0.5 / T), "one block"),
        (lambda: lambda L, T: (0.5 ** L + 1 / T, 1 / T), "sums to 1"),
        (lambda: lambda L, T: 0.5 ** L, "two numbers"),
    ],
    success="the residual keeps 0.5^L of each token, and uniform attention spreads the rest evenly; the next cell "
    "compares it with the untrained network.",
    kind="derive",
)


# --- 6. an experiment: how much weight the residual gets in rollout ---------------------------------------
def experiment_setup():
    """Stand-in data, the same on every call: (attentions (L, B, H, T, T), region (B, g, g)). Three blocks, four
    pictures of a 3 x 3 grid; the region marks the patches an object covers (1) or not (0)."""
    attentions = _attentions(layers=3, batch=4, heads=2, tokens=10, seed=30)
    g = torch.Generator().manual_seed(31)
    region = (torch.rand(4, 3, 3, generator=g) < 0.35).float()
    region[:, 1, 1] = 1.0  # every picture has an object in the middle
    return attentions, region


def _weighted_rollout(attentions: torch.Tensor, weight: float, swapped: bool = False) -> torch.Tensor:
    a = attentions.mean(dim=2)  # (L, B, T, T) heads averaged
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    r = eye.expand_as(a[0])
    for block in a:
        mixed = (1 - weight) * block + weight * eye if swapped else weight * block + (1 - weight) * eye
        r = mixed @ r
    return r  # (B, T, T)


def _share(attentions, region, weight, swapped=False) -> float:
    r = _weighted_rollout(attentions, weight, swapped)
    return mass_on(r[:, 0, 1:].reshape(region.shape), region).mean().item()


def _check_residual(fn) -> str | None:
    attentions, region = experiment_setup()
    measured = fn(attentions.clone(), region.clone())
    if not isinstance(measured, dict):
        return f"return a dict {{weight of the attention: share on the object}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} setting(s); an experiment needs at least 3 weights to show a trend "
                "(e.g. 0.25, 0.5 and 1.0).")
    for w in measured:
        if not isinstance(w, (int, float)) or not 0 < w <= 1:
            return f"each key is the weight w of the attention in w A + (1 - w) I, a number in (0, 1]; got {w!r}."
    if 0.5 not in measured:
        return "include the baseline, w = 0.5: the rollout of the notebook (0.5 A + 0.5 I), to compare the others with."
    for w, value in sorted(measured.items()):
        got = as_number(value)
        if got is None:
            return f"the share for w={w} should be one number, got {type(value).__name__}."
        expected = _share(attentions, region, w)
        if abs(got - expected) < 1e-5:
            continue
        if abs(got - _share(attentions, region, w, swapped=True)) < 1e-5:
            return (f"for w={w} you gave the weight w to the identity; here w weighs the attention, w A + (1 - w) I, "
                    "so w = 1 is rollout without the residual.")
        r = _weighted_rollout(attentions, w)
        unnormalised = ((r[:, 0, 1:].reshape(region.shape) * region).flatten(1).sum(1)).mean().item()
        if abs(got - unnormalised) < 1e-5:
            return (f"for w={w} you summed the map's weight on the object without dividing by the map's total; the "
                    "CLS row over the patches does not sum to 1 (the CLS token keeps some), so use "
                    "interpret.mass_on(map, region), the share.")
        last = mass_on(cls_attention(attentions, -1), region).mean().item()
        if abs(got - last) < 1e-5:
            return (f"for w={w} you measured the last block's CLS attention, which does not depend on w; measure the "
                    "rollout map built with w A + (1 - w) I in every block.")
        return (f"for w={w} the checker measured a share of {expected:.4f} on the same data, you reported {got:.4f}: "
                "average the heads, build R from the identity with R = (w A + (1 - w) I) @ R block by block, take "
                "row 0 over the patches as a (B, g, g) map, and average interpret.mass_on(map, region).")
    return None


def _reference_residual(attentions, region):
    return {w: _share(attentions, region, w) for w in (0.25, 0.5, 1.0)}


residual_weight = Exercise(
    name="residual_weight",
    task="my_experiment(attentions, region) -> {w: rollout's share on the object}, rollout built with w A + (1 - w) I "
    "per block, for at least 3 weights w, 0.5 included",
    checker=_check_residual,
    hint_text="For each w: a = attentions.mean(dim=2); R = identity; for each block R = (w * A + (1 - w) * I) @ R; "
    "map = R[:, 0, 1:].reshape(region.shape); share = interpret.mass_on(map, region).mean().item().",
    solution_code="""
    import torch

    from clipedu import interpret


    def my_experiment(attentions, region):
        a = attentions.mean(dim=2)  # (L, B, T, T): heads averaged
        eye = torch.eye(a.shape[-1])
        shares = {}
        for w in (0.1, 0.25, 0.5, 0.75, 1.0):  # the one thing changed: the attention's weight against the residual
            rollout = eye.expand_as(a[0])
            for block in a:
                rollout = (w * block + (1 - w) * eye) @ rollout
            maps = rollout[:, 0, 1:].reshape(region.shape)  # (B, g, g)
            shares[w] = interpret.mass_on(maps, region).mean().item()
        return shares
    """,
    reference=lambda: _reference_residual,
    mistakes=[
        (lambda: lambda a, r: {0.25: 0.7, 0.5: 0.6, 1.0: 0.5}, "the checker measured"),
        (lambda: lambda a, r: {w: _share(a, r, w) for w in (0.5, 1.0)}, "at least 3"),
        (lambda: lambda a, r: {w: _share(a, r, w) for w in (0.25, 0.75, 1.0)}, "baseline"),
        (lambda: lambda a, r: {w: _share(a, r, w, swapped=True) for w in (0.25, 0.5, 1.0)}, "to the identity"),
        (lambda: lambda a, r: {w: mass_on(cls_attention(a, -1), r).mean().item() for w in (0.25, 0.5, 1.0)},
         "last block"),
    ],
    success="a measured curve: how much of rollout lands on the object against the weight of attention in each "
    "block. The cell below runs your function on the course model.",
    kind="experiment",
)
