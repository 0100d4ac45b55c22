"""Exercises of notebook 11: the multimodal causal mask, ITC's max over queries, and stage-2 labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipedu.blip2.language_model import IGNORE_INDEX, caption_labels
from clipedu.blip2.masks import bidirectional_mask, multimodal_causal_mask, unimodal_mask
from clipedu.blip2.objectives import query_text_similarity
from clipedu.exercises import Exercise, compare_tensors

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
