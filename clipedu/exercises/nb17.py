"""Exercises of notebook 17: the retrieval gallery with swapped captions in it, the lowest ITM loss of
a head that cannot read word order (derived, then found by gradient descent), whether swapped
captions reach the ITC loss, and re-ranking ITC's shortlist with ITM."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipedu.blip2.evaluation import swap_relevance
from clipedu.blip2.objectives import itm_floor
from clipedu.exercises import Exercise, as_number, compare_tensors, prediction


# --- 1. the gallery: captions and swaps, and which are right ----------------------------------------------
def _check_relevance(fn) -> str | None:
    for keys in (torch.tensor([0, 1, 2]), torch.tensor([4, 7, 4, 1]), torch.tensor([5])):
        call = f"my_swap_relevance(torch.{keys!r})"
        got = fn(keys.clone())
        expected = swap_relevance(keys)
        n = len(keys)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.equal(got.bool(), expected):
            if got[:, n:].bool().any():
                return f"{call}: the last {n} columns are the swapped captions, and a swap is never right."
            if torch.equal(got[:, :n].bool(), torch.eye(n, dtype=torch.bool)):
                return (f"{call}: picture i's own caption is right, and so is every caption of a scene with the "
                        "same labels (the same key): two pictures of the same scene share their captions.")
        if isinstance(got, torch.Tensor) and got.shape == (n, n):
            return (f"{call} has shape {tuple(got.shape)}: the gallery holds the {n} captions and then their {n} "
                    f"swaps, so each picture has 2N = {2 * n} columns.")
        problem = compare_tensors(call, got.bool() if isinstance(got, torch.Tensor) else got, expected)
        if problem:
            return problem
    return None


swap_gallery = Exercise(
    name="swap_gallery",
    task="my_swap_relevance(keys) -> (N, 2N) bool: for each of N pictures, which of the N captions and then "
    "the N swapped captions are right (same key: same scene labels; a swap: never)",
    checker=_check_relevance,
    hint_text="keys[:, None] == keys[None, :] compares every picture's key with every caption's; the swaps' "
    "half is all False. torch.cat joins the halves along dim=1.",
    solution_code="""
    import torch


    def my_swap_relevance(keys):
        same_scene = keys[:, None] == keys[None, :]  # (N, N): caption j describes picture i's scene
        swaps = torch.zeros_like(same_scene)  # (N, N): a swapped caption is never right
        return torch.cat([same_scene, swaps], dim=1)
    """,
    reference=lambda: swap_relevance,
    mistakes=[
        (lambda: lambda k: torch.cat([k[:, None] == k[None, :]] * 2, dim=1), "never right"),
        (lambda: lambda k: torch.cat([torch.eye(len(k), dtype=torch.bool), torch.zeros(len(k), len(k)).bool()], 1),
         "same labels"),
        (lambda: lambda k: k[:, None] == k[None, :], "2N"),
    ],
    success="every swap is a wrong answer that uses exactly the right words: a retrieval test of word order.",
)


# --- 2. a derivation: the floor of a head that cannot read word order ---------------------------------------
def _check_floor(fn) -> str | None:
    for pairs, m in ((4, 1), (3, 1), (4, 2), (4, 0), (6, 3)):
        call = f"my_itm_floor(pairs={pairs}, look_alike={m})"
        value = fn(pairs, m)
        got = as_number(value)
        expected = itm_floor(pairs, m)
        if got is None:
            return f"{call} should return one number (a loss in nats), got {value!r}."
        if math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-6):
            continue
        if math.isclose(got, expected * pairs, rel_tol=1e-4, abs_tol=1e-6):
            return (f"{call} = {got:.4f} is the loss of the {1 + m} look-alike pairs added up; the ITM loss is a "
                    f"mean over all {pairs} pairs of the picture (the others cost 0).")
        if math.isclose(got, expected * pairs / (1 + m), rel_tol=1e-4, abs_tol=1e-6):
            return (f"{call} = {got:.4f} averages over the {1 + m} look-alikes only; the ITM loss is a mean over all "
                    f"{pairs} pairs of the picture (the others cost 0).")
        if m > 1 and math.isclose(got, (1 + m) * math.log(2) / pairs, rel_tol=1e-4):
            return (f"{call} = {got:.4f} uses p = 1/2; with {m} wrong look-alikes and one right one the best shared "
                    f"probability of a match is 1 / (1 + m) = {1 / (1 + m):.3f} (set the derivative of the loss to 0).")
        return (f"{call}: expected {expected:.4f}, got {got:.4f}. One probability p for the 1 + m look-alikes: "
                "their loss is -ln p - m ln(1 - p); minimise it over p, then divide by the number of pairs.")
    return None


itm_floor_exercise = Exercise(
    name="itm_floor",
    task="my_itm_floor(pairs, look_alike) -> the lowest mean ITM loss per pair of a head that gets every pair "
    "right except that the matching pair and look_alike wrong pairs look the same to it",
    checker=_check_floor,
    hint_text="The head must give the 1 + m look-alikes one probability p of 'match'. One of them is right "
    "(loss -ln p), m are wrong (loss -ln(1 - p) each). The minimum over p is at p = 1 / (1 + m). The other "
    "pairs cost 0; the loss is a mean over all pairs.",
    solution_code="""
    import math


    def my_itm_floor(pairs, look_alike):
        m = look_alike
        p = 1 / (1 + m)  # the best shared probability of 'match': d/dp [-ln p - m ln(1 - p)] = 0
        group = -math.log(p) - (m * math.log(1 - p) if m else 0.0)  # the look-alikes' summed loss
        return group / pairs  # a mean over every pair of the picture; the rest cost 0
    """,
    reference=lambda: itm_floor,
    mistakes=[
        (lambda: lambda p, m: itm_floor(p, m) * p, "added up"),
        (lambda: lambda p, m: itm_floor(p, m) * p / (1 + m), "look-alikes only"),
        (lambda: lambda p, m: (1 + m) * math.log(2) / p, "1 / (1 + m)"),
        (lambda: lambda p, m: "0.35", "expected"),
    ],
    success="2 ln 2 / 4 = 0.347 with the swap as a fourth pair: a loss that stops there has learnt everything but "
    "word order.",
    kind="derive",
)


# --- 3. an experiment: the floor, found by gradient descent ---------------------------------------------------
EXPERIMENT_PAIRS = 4


def fitted_floor(look_alike: int, steps: int = 600) -> float:
    """The mean loss over 4 pairs after fitting one shared logit for the 1 + m look-alikes (the matching
    pair first) by Adam; the other pairs cost 0."""
    logit = torch.zeros((), requires_grad=True)
    optimiser = torch.optim.Adam([logit], lr=0.1)
    labels = torch.tensor([1.0] + [0.0] * look_alike)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(logit.expand(1 + look_alike), labels, reduction="sum")
        loss = loss / EXPERIMENT_PAIRS
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return loss.item()


def _check_floor_experiment(fn) -> str | None:
    measured = fn()
    if not isinstance(measured, dict):
        return f"return a dict {{look_alike: the loss you reached}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} setting(s); an experiment needs at least 3 values of look_alike to "
                "show a trend (e.g. 0, 1, 2).")
    for m, value in sorted(measured.items()):
        if not isinstance(m, int) or not 0 <= m <= EXPERIMENT_PAIRS - 1:
            return f"each key is a number of look-alike wrong pairs, from 0 to {EXPERIMENT_PAIRS - 1}; got {m!r}."
        got = as_number(value)
        if got is None:
            return f"the loss for look_alike={m} should be one number, got {type(value).__name__}."
        expected = itm_floor(EXPERIMENT_PAIRS, m)
        if abs(got - expected) <= 0.01:
            continue
        if abs(got - (1 + m) * math.log(2) / EXPERIMENT_PAIRS) <= 0.01:
            return (f"look_alike={m}: {got:.4f} is the loss at p = 1/2, before any fitting; train the shared logit "
                    f"(Adam, a few hundred steps) until the loss stops falling: it reaches {expected:.4f}.")
        if abs(got - expected * EXPERIMENT_PAIRS) <= 0.01 * EXPERIMENT_PAIRS:
            return (f"look_alike={m}: {got:.4f} is the loss summed over the look-alikes; divide by the "
                    f"{EXPERIMENT_PAIRS} pairs of the picture.")
        return (f"look_alike={m}: the fitted loss should reach {expected:.4f} (the floor you derived), you reported "
                f"{got:.4f}. Fit one logit for all 1 + m look-alikes, labels [1, 0, ..., 0], loss summed / 4.")
    return None


floor_experiment = Exercise(
    name="floor_experiment",
    task="my_experiment() -> {look_alike: the mean ITM loss over 4 pairs reached by fitting one shared logit to "
    "the matching pair and look_alike wrong ones}, for at least 3 values of look_alike",
    checker=_check_floor_experiment,
    hint_text="For each m: logit = torch.zeros((), requires_grad=True), labels = [1, 0, ..., 0] (1 + m of them); "
    "minimise F.binary_cross_entropy_with_logits(logit.expand(1 + m), labels, reduction='sum') / 4 with Adam "
    "(lr 0.1, a few hundred steps) and keep the last loss.",
    solution_code="""
    import torch
    import torch.nn.functional as F


    def my_experiment():
        reached = {}
        for m in (0, 1, 2):  # the one thing changed: how many wrong pairs look like the right one
            logit = torch.zeros((), requires_grad=True)  # the head's one score for all the look-alikes
            optimiser = torch.optim.Adam([logit], lr=0.1)
            labels = torch.tensor([1.0] + [0.0] * m)  # the matching pair, then m wrong ones
            for _ in range(600):
                loss = F.binary_cross_entropy_with_logits(logit.expand(1 + m), labels, reduction="sum") / 4
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            reached[m] = loss.item()
        return reached
    """,
    reference=lambda: lambda: {m: fitted_floor(m) for m in (0, 1, 2)},
    mistakes=[
        (lambda: lambda: {m: (1 + m) * math.log(2) / 4 for m in (0, 1, 2)}, "before any fitting"),
        (lambda: lambda: {m: 4 * itm_floor(4, m) for m in (0, 1, 2)}, "summed over"),
        (lambda: lambda: {1: itm_floor(4, 1)}, "at least 3"),
        (lambda: lambda: {m: 0.5 for m in (0, 1, 2)}, "should reach"),
    ],
    success="gradient descent finds the floor the derivation gave: no amount of training takes a head below it "
    "while the look-alikes look alike.",
    kind="experiment",
)


# --- 4. a prediction: do swapped captions reach the ITC loss? -----------------------------------------------
predict_itc_unchanged = prediction(
    "predict_itc_unchanged",
    "Stage 1 now adds each picture's swapped caption as a fourth ITM pair. On the same batch, same weights and "
    "the same random draw, does the ITC loss change: 'yes' or 'no'?",
    "no",
    choices=("yes", "no"),
    why="ITC compares each picture's queries with the batch's captions, and the swaps are not among them: they "
    "enter only ITM's pairs, after ITC has been computed (and after the hard negatives were drawn from its "
    "similarities). The ITC loss is the same to the last bit; only the ITM loss sees the swaps.",
    hint="Follow Blip2Stage1.forward: where is `swapped` first used, and which losses are computed before that?",
)


# --- 5. re-ranking ITC's shortlist with ITM ----------------------------------------------------------------
def rerank_scores(itc: torch.Tensor, itm: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's top ``k`` columns by ITC get ITM + ITC; every other column -inf."""
    kk = min(k, itc.shape[1])
    top = itc.topk(kk, dim=1).indices
    out = torch.full_like(itc, float("-inf"))
    return out.scatter(1, top, itm.gather(1, top) + itc.gather(1, top))


def _check_rerank(fn) -> str | None:
    gen = torch.Generator().manual_seed(17)
    for n, m, k in ((4, 6, 2), (3, 5, 5), (2, 3, 8)):
        itc, itm = torch.rand(n, m, generator=gen), 4 * torch.randn(n, m, generator=gen)
        call = f"my_rerank(itc {n}x{m}, itm {n}x{m}, k={k})"
        got = fn(itc.clone(), itm.clone(), k)
        expected = rerank_scores(itc, itm, k)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and k < m:
            if torch.equal(got.isinf(), ~torch.isfinite(rerank_scores(itm, itc, k))) and not torch.equal(
                    got.isinf(), expected.isinf()):
                return (f"{call}: your shortlist holds ITM's top {k}; the shortlist comes from ITC (cheap, every pair "
                        "scored), and ITM (one joint pass per pair) re-scores only those.")
            if torch.isfinite(got).all():
                return (f"{call}: every column has a finite score; the texts outside ITC's top {k} were never "
                        "scored by ITM, so they rank below the shortlist: give them -inf.")
            if torch.allclose(torch.where(expected.isinf(), 0, got), torch.where(expected.isinf(), 0, itm)):
                return f"{call}: the shortlist's score is ITM's log-odds plus the ITC cosine; you kept ITM alone."
        problem = compare_tensors(call, got, expected) if not isinstance(got, torch.Tensor) or \
            got.shape != expected.shape else None
        if problem:
            return problem
        if not torch.equal(got.isneginf(), expected.isneginf()):
            return (f"{call}: -inf should stand exactly outside each row's top {min(k, m)} by ITC "
                    f"({int(expected.isneginf().sum())} entries); yours has {int(got.isneginf().sum())}.")
        shortlist = ~expected.isneginf()
        problem = compare_tensors(f"{call} on the shortlist", torch.where(shortlist, got, 0),
                                  torch.where(shortlist, expected, 0))
        if problem:
            return problem
    return None


rerank = Exercise(
    name="rerank",
    task="my_rerank(itc, itm, k) -> (N, M) scores: each row's top k columns by ITC get ITM + ITC, every other "
    "column -inf",
    checker=_check_rerank,
    hint_text="itc.topk(min(k, M), dim=1).indices is each row's shortlist; torch.full_like(itc, float('-inf')) "
    "a starting point; .gather reads the shortlist's scores and .scatter writes them back.",
    solution_code="""
    import torch


    def my_rerank(itc, itm, k):
        top = itc.topk(min(k, itc.shape[1]), dim=1).indices  # (N, k) ITC's shortlist per row
        scores = itm.gather(1, top) + itc.gather(1, top)  # ITM's log-odds plus the cosine, for those only
        return torch.full_like(itc, float("-inf")).scatter(1, top, scores)
    """,
    reference=lambda: rerank_scores,
    mistakes=[
        (lambda: lambda c, t, k: rerank_scores(t, c, k), "ITM's top"),
        (lambda: lambda c, t, k: c + t, "-inf"),
        (lambda: lambda c, t, k: rerank_scores(c, t, k) - torch.where(rerank_scores(c, t, k).isinf(), 0, c),
         "ITM alone"),
        (lambda: lambda c, t, k: rerank_scores(c, 2 * t, k), "wrong values"),
    ],
    success="ITC picks the shortlist from everything, ITM decides among the few: BLIP-2's retrieval in two steps.",
)
