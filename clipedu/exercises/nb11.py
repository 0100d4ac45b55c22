"""Exercises of notebook 11: the multimodal causal mask, ITC's max over queries, and stage-2 labels."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from clipedu.blip2.language_model import IGNORE_INDEX, caption_labels
from clipedu.blip2.masks import bidirectional_mask, multimodal_causal_mask, unimodal_mask
from clipedu.blip2.objectives import query_text_similarity
from clipedu.exercises import Exercise, as_number, compare_tensors, prediction

# --- 1. the multimodal causal mask ---------------------------------------------------------------------
_MASK_SIZES = ((3, 5), (1, 4), (4, 1), (2, 2))


def _describe_mask_error(got: torch.Tensor, q: int, t: int) -> str:
    expected = multimodal_causal_mask(q, t)
    queries, text = slice(0, q), slice(q, q + t)
    if not torch.equal(got[queries, queries], expected[queries, queries]):
        if torch.equal(got[queries, queries], torch.ones(q, q, dtype=torch.bool).tril()):
            return "query i only sees queries 1..i; the queries are a set, and every query sees every query"
        return "the query-to-query block is wrong: every query sees every query"
    if got[queries, text].any():
        return "a query attends to text; in ITG the queries must not see the caption (they carry only the image)"
    if not torch.equal(got[text, queries], expected[text, queries]):
        return "a text token cannot see the queries; they are its only way to the image"
    if (got[text, text] & ~expected[text, text]).any():
        return "a text token attends to later text tokens; it must see only itself and the tokens before it"
    return "a text token misses an earlier text token or itself"


def _check_mask(make_mask) -> str | None:
    for q, t in _MASK_SIZES:
        call = f"my_mask({q}, {t})"
        got = make_mask(q, t)
        if not isinstance(got, torch.Tensor):
            return f"{call} should return a torch.Tensor, got {type(got).__name__}."
        if tuple(got.shape) != (q + t, q + t):
            return f"{call} should have shape {(q + t, q + t)} (queries then text, both ways), got {tuple(got.shape)}."
        if got.dtype != torch.bool:
            return f"{call} should be a bool tensor (True = may attend), got {got.dtype}."
        if not torch.equal(got, multimodal_causal_mask(q, t)):
            return f"{call}: {_describe_mask_error(got, q, t)}."
    return None


def _text_blind(q, t):
    mask = multimodal_causal_mask(q, t).clone()
    mask[q:, :q] = False
    return mask


def _text_sees_future(q, t):
    mask = multimodal_causal_mask(q, t).clone()
    mask[q:, q:] = True
    return mask


multimodal_causal = Exercise(
    name="multimodal_causal",
    task="my_mask(num_queries, text_length) -> the (Q+T, Q+T) bool ITG mask: queries see queries, text sees "
    "every query and the text up to itself",
    checker=_check_mask,
    hint_text="Start from torch.ones(n, n, dtype=torch.bool).tril(): row i may see columns 0..i. Text rows "
    "(i >= Q) are then right, because the queries come first. Only the query rows need fixing: "
    "they see every query column and no text column.",
    solution_code="""
    import torch


    def my_mask(num_queries, text_length):
        n = num_queries + text_length
        mask = torch.ones(n, n, dtype=torch.bool).tril()  # text rows: every query, then text up to itself
        mask[:num_queries, :num_queries] = True  # query rows see every query...
        mask[:num_queries, num_queries:] = False  # ...and none of the text
        return mask
    """,
    reference=lambda: multimodal_causal_mask,
    mistakes=[
        (lambda: lambda q, t: torch.ones(q + t, q + t, dtype=torch.bool).tril(), "every query sees every query"),
        (lambda: bidirectional_mask, "a query attends to text"),
        (lambda: lambda q, t: unimodal_mask(q, t) & torch.ones(q + t, q + t, dtype=torch.bool).tril()
         | unimodal_mask(q, t) & (torch.arange(q + t) < q)[:, None], "cannot see the queries"),
        (lambda: _text_blind, "cannot see the queries"),
        (lambda: _text_sees_future, "later text tokens"),
        (lambda: lambda q, t: multimodal_causal_mask(q, t).float(), "bool"),
        (lambda: lambda q, t: multimodal_causal_mask(q, t)[q:, q:], "shape"),
    ],
    success="that is the ITG mask: the caption can reach the image only through the queries.",
)


# --- 2. ITC: the best query decides ----------------------------------------------------------------------
def _feature_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(11)
    cases = []
    for b_i, b_t, q, e in ((4, 4, 3, 8), (3, 5, 4, 6), (2, 6, 1, 4)):
        image = F.normalize(torch.randn(b_i, q, e, generator=g), dim=-1)  # (B_i, Q, E)
        text = F.normalize(torch.randn(b_t, e, generator=g), dim=-1)  # (B_t, E)
        cases.append((image, text))
    return cases


def _check_similarity(similarity) -> str | None:
    for image, text in _feature_cases():
        b_i, q, _ = image.shape
        b_t = text.shape[0]
        call = f"my_similarity(image_feats {tuple(image.shape)}, text_feats {tuple(text.shape)})"
        got = similarity(image.clone(), text.clone())
        expected = query_text_similarity(image, text)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (b_t, b_i) and b_t != b_i:
            return f"{call} has shape {(b_t, b_i)}: rows should be images and columns texts, ({b_i}, {b_t})."
        if isinstance(got, torch.Tensor) and got.dim() == 3:
            return (f"{call} has shape {tuple(got.shape)}: that is one cosine per query; reduce over the query "
                    "axis to one number per (image, text) pair.")
        problem = compare_tensors(call, got, expected)
        if problem is None:
            continue
        per_query = torch.einsum("iqe,te->itq", image, text)  # (B_i, B_t, Q)
        diagnoses = [
            (per_query.mean(-1), "you averaged over the queries; BLIP-2 takes the best query (the max)"),
            (per_query.sum(-1), "you summed over the queries; BLIP-2 takes the best query (the max)"),
            (per_query[..., 0], "you used the first query only; every query may match, and the best one counts"),
            (per_query.min(-1).values, "you took the worst query (min); take the best one (max)"),
        ]
        if b_i == b_t:
            diagnoses.append((expected.t(), "that is the transpose: rows should be images and columns texts"))
        for wrong, message in diagnoses:
            informative = q > 1 or "transpose" in message  # with one query, max = mean = sum = first
            same = isinstance(got, torch.Tensor) and got.shape == wrong.shape and torch.allclose(got, wrong)
            if informative and same:
                return f"{call}: {message}."
        return problem
    return None


itc_similarity = Exercise(
    name="itc_similarity",
    task="my_similarity(image_feats (B_i, Q, E), text_feats (B_t, E)) -> (B_i, B_t): each pair's cosine with "
    "the image's best-matching query",
    checker=_check_similarity,
    hint_text="First every query against every text: torch.einsum('iqe,te->itq', image_feats, text_feats) gives "
    "(B_i, B_t, Q). Then keep the largest over the last axis (.max(dim=-1).values). The inputs are unit "
    "vectors already, so dot products are cosines.",
    solution_code="""
    import torch


    def my_similarity(image_feats, text_feats):
        per_query = torch.einsum("iqe,te->itq", image_feats, text_feats)  # (B_i, B_t, Q)
        return per_query.max(dim=-1).values
    """,
    reference=lambda: query_text_similarity,
    mistakes=[
        (lambda: lambda img, txt: torch.einsum("iqe,te->itq", img, txt).mean(-1), "averaged"),
        (lambda: lambda img, txt: img[:, 0] @ txt.t(), "first query"),
        (lambda: lambda img, txt: query_text_similarity(img, txt).t(), "rows should be images"),
        (lambda: lambda img, txt: torch.einsum("iqe,te->itq", img, txt), "one cosine per query"),
    ],
    success="each image offers Q views; a caption is compared with the one that suits it best.",
)


# --- 3. stage-2 labels -----------------------------------------------------------------------------------
def _label_cases() -> list[tuple[torch.Tensor, int]]:
    return [
        (torch.tensor([[1, 7, 8, 2, 0, 0], [1, 9, 2, 0, 0, 0]]), 3),
        (torch.tensor([[1, 5, 6, 7, 2]]), 1),
        (torch.tensor([[1, 4, 2, 0], [1, 4, 5, 2], [1, 2, 0, 0]]), 8),
    ]


def _check_labels(make_labels) -> str | None:
    for tokens, prefix in _label_cases():
        call = f"my_labels(tokens {tuple(tokens.shape)}, prefix_length={prefix}, pad_id=0)"
        got = make_labels(tokens.clone(), prefix, 0)
        expected = caption_labels(tokens, 0, prefix)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(tokens.shape):
            return (f"{call} has shape {tuple(tokens.shape)}, one label per caption token; the LM's input also "
                    f"holds the {prefix} prompt vectors in front, so it needs ({tokens.shape[0]}, "
                    f"{prefix + tokens.shape[1]}) labels, -100 for the prompt.")
        problem = compare_tensors(call, got, expected)
        if problem is None:
            continue
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            if (got[:, :prefix] != IGNORE_INDEX).any():
                return f"{call}: the prompt positions need the label -100 (there is no word to predict there)."
            if (got[:, prefix] != IGNORE_INDEX).any():
                return f"{call}: the <sot> token is given, never predicted: its label should be -100 too."
            if ((tokens == 0) & (got[:, prefix:] != IGNORE_INDEX)).any():
                return f"{call}: padding is not a word to predict: label it -100."
        return problem
    return None


def _prompt_at_end(tokens, prefix, pad):
    labels = caption_labels(tokens, pad, 0)
    return torch.cat([labels, labels.new_full((tokens.shape[0], prefix), IGNORE_INDEX)], dim=1)


def _padding_kept(tokens, prefix, pad):
    labels = tokens.clone()
    labels[:, 0] = IGNORE_INDEX
    return torch.cat([labels.new_full((tokens.shape[0], prefix), IGNORE_INDEX), labels], dim=1)


stage2_labels = Exercise(
    name="stage2_labels",
    task="my_labels(tokens (B, L), prefix_length, pad_id) -> (B, P+L) labels: -100 for the prompt, <sot> and "
    "padding, the token itself elsewhere",
    checker=_check_labels,
    hint_text="Copy the tokens, set padding (tokens == pad_id) and column 0 (<sot>) to -100, then put a "
    "(B, prefix_length) block of -100 in front with torch.cat(..., dim=1).",
    solution_code="""
    import torch


    def my_labels(tokens, prefix_length, pad_id):
        labels = tokens.masked_fill(tokens == pad_id, -100)  # padding: nothing to predict
        labels[:, 0] = -100  # <sot> is given, never predicted
        prompt = torch.full((tokens.shape[0], prefix_length), -100, dtype=tokens.dtype)
        return torch.cat([prompt, labels], dim=1)
    """,
    reference=lambda: lambda tokens, prefix, pad: caption_labels(tokens, pad, prefix),
    mistakes=[
        (lambda: lambda tokens, prefix, pad: caption_labels(tokens, pad, 0), "prompt vectors in front"),
        (lambda: lambda tokens, prefix, pad: torch.cat([tokens.new_zeros(tokens.shape[0], prefix),
                                                       caption_labels(tokens, pad, 0)], 1), "prompt positions"),
        (lambda: _padding_kept, "padding"),
        (lambda: lambda tokens, prefix, pad: torch.cat(
            [tokens.new_full((tokens.shape[0], prefix), IGNORE_INDEX), tokens.masked_fill(tokens == pad, -100)], 1),
         "<sot>"),
        (lambda: _prompt_at_end, "prompt positions"),
    ],
    success="the loss now reads only the caption: the prompt is there to be read, not predicted.",
)


# --- 4. a prediction: does the caption's end reach the queries under the ITG mask? ----------------------
predict_queries_unchanged = prediction(
    "predict_queries_unchanged",
    "Under the multimodal causal mask, the caption's words from position 4 on are replaced. Do the query "
    "outputs change: 'yes' or 'no'?",
    "no",
    choices=("yes", "no"),
    why="Query rows of the ITG mask see only query columns, in every layer, so nothing of the text ever "
    "enters a query's output (the change printed is rounding at most). Under the bidirectional mask the "
    "queries read the text, and the same change moves them.",
    hint="Look at the query rows of the multimodal causal mask drawn above: which columns are 1?",
)


# --- 5. how many entries the ITG mask allows (a derivation) ----------------------------------------------
def _check_allowed(fn) -> str | None:
    for q, t in ((3, 5), (1, 1), (8, 24), (32, 7), (5, 0)):
        call = f"my_allowed({q}, {t})"
        expected = int(multimodal_causal_mask(q, t).sum())  # counted on the mask itself
        got = as_number(fn(q, t))
        if got is None:
            return f"{call} should return one number, the count of allowed (True) entries."
        if got == expected:
            continue
        wrong = {
            q * q + t * (t + 1) // 2: "the text rows see every query too: add the Q x T block (Q T entries)",
            q * q + q * t + t * t: "a text token sees only the text up to itself, not the whole caption: the "
            "text block is a triangle with its diagonal, T (T + 1) / 2 entries",
            q * q + q * t + t * (t - 1) // 2: "a text token also sees itself: the triangle includes its diagonal, "
            "T (T + 1) / 2",
            (q + t) * (q + t + 1) // 2: "that is a causal mask over all Q + T positions; the queries see every "
            "query, also the later ones (a full Q x Q block)",
        }
        if got in wrong and got != expected:
            return f"{call} gave {got:g}, the mask has {expected}: {wrong[got]}."
        return f"{call} gave {got:g}; counting the True entries of the multimodal causal mask gives {expected}."
    return None


allowed_entries = Exercise(
    name="allowed_entries",
    task="my_allowed(Q, T) -> the number of True entries of the (Q+T, Q+T) multimodal causal mask, in closed form",
    checker=_check_allowed,
    hint_text="Count block by block: queries to queries (Q x Q, all allowed), queries to text (none), text to "
    "queries (T x Q, all), text to text (a lower triangle with its diagonal).",
    solution_code="""
    def my_allowed(Q, T):
        return Q * Q + T * Q + T * (T + 1) // 2  # query block, text -> queries, causal text triangle
    """,
    reference=lambda: lambda q, t: q * q + t * q + t * (t + 1) // 2,
    mistakes=[
        (lambda: lambda q, t: q * q + t * (t + 1) // 2, "Q x T block"),
        (lambda: lambda q, t: q * q + q * t + t * t, "triangle"),
        (lambda: lambda q, t: (q + t) * (q + t + 1) // 2, "full Q x Q block"),
        (lambda: lambda q, t: q * q + q * t + t * (t - 1) // 2, "sees itself"),
    ],
    success="BLIP-2's 32 queries and a caption of 32 tokens: 1,024 + 1,024 + 528 = 2,576 of 4,096 entries.",
    kind="derive",
)


# --- 6. an experiment: how often does a batch hold a duplicate? -----------------------------------------
EXPERIMENT_BATCHES = 500


@functools.lru_cache(maxsize=1)
def experiment_setup() -> torch.Tensor:
    """(2000,) the description id of each of 2,000 ShapesWorld training pictures (``attribute_keys``):
    the same numbers on every call."""
    from clipedu.blip2.training import attribute_keys
    from clipedu.data import get_dataset

    return attribute_keys(get_dataset("shapes", "train", n=2000))


def _duplicate_share(batch_size: int, per_picture: bool = False) -> float:
    keys = experiment_setup()
    g = torch.Generator().manual_seed(0)
    total = 0.0
    for _ in range(EXPERIMENT_BATCHES):
        index = torch.randperm(len(keys), generator=g)[:batch_size]
        has_twin = (keys[index][:, None] == keys[index][None, :]).sum(dim=1) > 1  # (B,)
        total += has_twin.float().mean().item() if per_picture else float(has_twin.any())
    return total / EXPERIMENT_BATCHES


def _check_duplicates(fn) -> str | None:
    measured = fn()
    if not isinstance(measured, dict):
        return f"return a dict {{batch size: share of batches with a duplicate}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} batch size(s); an experiment needs at least 3 to show a trend "
                "(e.g. 8, 32, 128).")
    for b in measured:
        if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 2000:
            return f"each key is a batch size, an int from 2 to 2000; got {b!r}."
    for b, value in sorted(measured.items()):
        got = as_number(value)
        if got is None:
            return f"the share for batch size {b} should be one number, got {type(value).__name__}."
        expected = _duplicate_share(b)
        if abs(got - expected) <= 0.06:  # another seed or sampler is fine: 500 batches agree to a few points
            continue
        if abs(got - _duplicate_share(b, per_picture=True)) < 1e-6:
            return (f"for batch size {b} you reported {got:.3f}, the share of *pictures* that have a twin in their "
                    f"batch; the question is the share of *batches* holding at least one duplicate pair "
                    f"({expected:.3f}): one pair is enough to spoil a row of the ITC loss.")
        if got > 1 and abs(got - 100 * expected) <= 6:
            return f"for batch size {b} you reported {got:.4g}: give a fraction between 0 and 1, not a percentage."
        return (f"for batch size {b} the checker measured {expected:.3f} of {EXPERIMENT_BATCHES} random batches "
                f"with a duplicate pair, you reported {got:.3f}.")
    return None


def _reference_duplicates():
    return {b: _duplicate_share(b) for b in (8, 32, 128)}


duplicates = Exercise(
    name="duplicates",
    task="my_experiment() -> {batch size: share of 500 random batches with at least one pair of pictures of "
    "the same description}, for at least 3 batch sizes",
    checker=_check_duplicates,
    hint_text="keys = nb11.experiment_setup(); for each batch size, g = torch.Generator().manual_seed(0), then 500 "
    "times: index = torch.randperm(len(keys), generator=g)[:batch_size]; the batch has a duplicate when "
    "keys[index].unique().numel() < batch_size.",
    solution_code="""
    import torch

    from clipedu.exercises import nb11


    def my_experiment():
        keys = nb11.experiment_setup()  # (2000,) one description id per picture
        share = {}
        for batch_size in (8, 32, 128):  # the one thing changed
            g = torch.Generator().manual_seed(0)
            hits = 0
            for _ in range(500):
                index = torch.randperm(len(keys), generator=g)[:batch_size]
                hits += keys[index].unique().numel() < batch_size  # at least one pair shares a description
            share[batch_size] = hits / 500
        return share
    """,
    reference=lambda: _reference_duplicates,
    mistakes=[
        (lambda: lambda: {8: 0.01, 32: 0.1, 128: 0.4}, "the checker measured"),
        (lambda: lambda: {32: _duplicate_share(32)}, "at least 3"),
        (lambda: lambda: {b: _duplicate_share(b, per_picture=True) for b in (8, 32, 128)}, "*pictures*"),
    ],
    success="the birthday problem: with about 900 descriptions, duplicates are rare at 8 and almost certain at 128.",
    kind="experiment",
)
