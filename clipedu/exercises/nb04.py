"""Exercises of notebook 04 (the text encoder)."""

from __future__ import annotations

import torch

from clipedu.exercises import Exercise
from clipedu.tokenizer import WordTokenizer, split_words

# A small vocabulary where some words have ids above <eot>'s (2), as in any word-level vocabulary.
_VOCAB = ["<pad>", "<sot>", "<eot>", "<unk>", "a", "blue", "circle", "in", "left", "red", "square", "the",
          "top", ","]


def _tokenizer(context_length: int = 12) -> WordTokenizer:
    return WordTokenizer(_VOCAB, context_length=context_length)


# --- 1. encode a caption into a padded row of ids -----------------------------------------------
_CAPTIONS = ("a red circle", "Top left: a blue square", "a red hexagon in the top left", "the circle, blue")


def _check_encode(fn) -> str | None:
    tok = _tokenizer()
    for text in _CAPTIONS:
        expected = tok([text])[0]  # (L,)
        got = fn(text, tok)
        if isinstance(got, list):
            got = torch.tensor(got)
        if not isinstance(got, torch.Tensor):
            return f"return the ids as a LongTensor of shape ({tok.context_length},), got {type(got).__name__}."
        words = split_words(text)
        where = f"for {text!r} (words {words}):"
        if got.dim() == 1 and len(got) and got[0] != tok.sot_id:
            return f"{where} the row must start with <sot> (id {tok.sot_id}), yours starts with {int(got[0])}."
        if got.shape != expected.shape:
            n = len(words) + 2
            if got.dim() == 1 and len(got) == n:
                return (f"{where} your row has {len(got)} ids: <sot>, the words and <eot>, but it is not "
                        f"padded to the context length {tok.context_length} with <pad> (id {tok.pad_id}).")
            return f"{where} the row should have shape ({tok.context_length},), got {tuple(got.shape)}."
        if tok.eot_id not in got.tolist():
            return f"{where} the row has no <eot> (id {tok.eot_id}); it goes right after the last word."
        unknown = [w for w in words if w not in tok.index]
        if unknown and tok.unk_id not in got.tolist():
            return (f"{where} {unknown} are not in the vocabulary; each must become <unk> (id {tok.unk_id}), "
                    "not be dropped.")
        if got.dtype.is_floating_point:
            return f"{where} ids are integers: return a LongTensor, got {got.dtype}."
        if not torch.equal(got.long(), expected):
            return f"{where} expected {expected.tolist()}, got {got.tolist()}."
    return None


def _ref_encode(text, tokenizer):
    ids = [tokenizer.sot_id] + [tokenizer.index.get(w, tokenizer.unk_id) for w in split_words(text)]
    ids.append(tokenizer.eot_id)
    ids += [tokenizer.pad_id] * (tokenizer.context_length - len(ids))
    return torch.tensor(ids)


def _no_padding(text, tokenizer):
    ids = [tokenizer.sot_id] + [tokenizer.index.get(w, tokenizer.unk_id) for w in split_words(text)]
    return torch.tensor(ids + [tokenizer.eot_id])


def _no_sot(text, tokenizer):
    return torch.cat([_ref_encode(text, tokenizer)[1:], torch.tensor([tokenizer.pad_id])])


def _no_eot(text, tokenizer):
    row = _ref_encode(text, tokenizer)
    return torch.where(row == tokenizer.eot_id, torch.tensor(tokenizer.pad_id), row)


def _drop_unknown(text, tokenizer):
    ids = [tokenizer.sot_id] + [tokenizer.index[w] for w in split_words(text) if w in tokenizer.index]
    ids.append(tokenizer.eot_id)
    return torch.tensor(ids + [tokenizer.pad_id] * (tokenizer.context_length - len(ids)))


encode_padded = Exercise(
    name="encode_padded",
    task="Encode a caption into a row of context_length ids: <sot>, the words (<unk> if unknown), <eot>, <pad>s.",
    checker=_check_encode,
    hint_text="split_words(text) gives the words; tokenizer.index maps a word to its id (use .get with "
    "tokenizer.unk_id); frame with tokenizer.sot_id and tokenizer.eot_id, then add tokenizer.pad_id up to "
    "tokenizer.context_length.",
    solution_code="""
    import torch

    from clipedu.tokenizer import split_words


    def my_encode(text, tokenizer):
        ids = [tokenizer.sot_id] + [tokenizer.index.get(w, tokenizer.unk_id) for w in split_words(text)]
        ids.append(tokenizer.eot_id)
        ids += [tokenizer.pad_id] * (tokenizer.context_length - len(ids))
        return torch.tensor(ids)
    """,
    reference=lambda: _ref_encode,
    mistakes=[
        (lambda: _no_padding, "padded"),
        (lambda: _no_sot, "<sot>"),
        (lambda: _no_eot, "<eot>"),
        (lambda: _drop_unknown, "<unk>"),
    ],
    success="that is exactly what WordTokenizer.__call__ returns.",
)


# --- 2. pooling at <eot> ----------------------------------------------------------------------------
def _pool_case():
    tokens, eot = _eot_batch()  # (B, L)
    g = torch.Generator().manual_seed(5)
    outputs = torch.randn(*tokens.shape, 6, generator=g)  # (B, L, D) stand-ins for the text tower's outputs
    return outputs, tokens, eot


def _check_pool(fn) -> str | None:
    outputs, tokens, eot = _pool_case()
    index = (tokens == eot).int().argmax(dim=1)  # (B,)
    expected = outputs[torch.arange(len(tokens)), index]  # (B, D)
    got = fn(outputs.clone(), tokens.clone(), eot)
    if not isinstance(got, torch.Tensor):
        return f"return a tensor of shape {tuple(expected.shape)}, got {type(got).__name__}."
    if got.shape != expected.shape:
        hint = " (one D-vector per caption: pick one position per row, do not keep them all)" if got.dim() == 3 else ""
        return f"expected shape {tuple(expected.shape)} (B, D), got {tuple(got.shape)}{hint}."
    if torch.allclose(got, expected):
        return None
    if torch.allclose(got, outputs[:, -1]):
        return ("that is the last position's output, x[:, -1]. After <eot> come <pad> tokens, so the last "
                "position is padding, not the end of the caption.")
    if torch.allclose(got, outputs[torch.arange(len(tokens)), tokens.argmax(dim=1)]):
        return ("you gathered at tokens.argmax(-1), the largest id in each row, which is a word here "
                f"(<eot> is id {eot}); find the position where tokens == eot_id.")
    if torch.allclose(got, outputs.mean(dim=1)):
        return "that is the mean over all positions, padding included; CLIP reads one position, <eot>."
    if torch.allclose(got, outputs[torch.arange(len(tokens)), index - 1]):
        return "one position too early: that is the last word's output; take <eot>'s own position."
    return "the rows differ from the outputs at <eot>: gather outputs[b, eot_position[b]] for each row b."


pool_at_eot = Exercise(
    name="pool_at_eot",
    task="From the outputs (B, L, D) and the ids (B, L), take each caption's output at its <eot> token: (B, D).",
    checker=_check_pool,
    hint_text="First the (B,) positions of <eot> (compare tokens with eot_id, argmax of that as integers); "
    "then index outputs with two index tensors: outputs[torch.arange(B), positions].",
    solution_code="""
    import torch


    def pool(outputs, tokens, eot_id):
        positions = (tokens == eot_id).int().argmax(dim=1)  # (B,)
        return outputs[torch.arange(outputs.shape[0]), positions]  # (B, D)
    """,
    reference=lambda: lambda outputs, tokens, eot_id: outputs[
        torch.arange(outputs.shape[0]), (tokens == eot_id).int().argmax(dim=1)
    ],
    mistakes=[
        (lambda: lambda outputs, tokens, eot_id: outputs[:, -1], "padding"),
        (lambda: lambda outputs, tokens, eot_id: outputs[torch.arange(outputs.shape[0]), tokens.argmax(1)],
         "argmax"),
        (lambda: lambda outputs, tokens, eot_id: outputs.mean(dim=1), "mean"),
        (lambda: lambda outputs, tokens, eot_id: outputs[:, (tokens == eot_id).int().argmax(1)], "(B, D)"),
    ],
    success="the same gather TextTransformer does: the caption's embedding is read at <eot>.",
)


# --- 3. where is <eot>? ----------------------------------------------------------------------------
def _eot_batch():
    tok = _tokenizer()
    texts = ["a red circle", "top left: a blue square", "the square", "a red circle in the top left, a blue"]
    return tok(texts, truncate=True), tok.eot_id  # the last row fills the context: <eot> is the last token


def _check_eot_index(fn) -> str | None:
    tokens, eot = _eot_batch()
    expected = (tokens == eot).int().argmax(dim=1)  # (B,)
    got = fn(tokens.clone(), eot)
    if isinstance(got, list):
        got = torch.tensor(got)
    if not isinstance(got, torch.Tensor):
        return f"return a tensor of {len(tokens)} positions, got {type(got).__name__}."
    if got.shape != expected.shape:
        return f"expected one position per row, shape {tuple(expected.shape)}, got {tuple(got.shape)}."
    if got.dtype.is_floating_point:
        return f"positions are indices: return an integer tensor, got {got.dtype}."
    if torch.equal(got, expected):
        return None
    if torch.equal(got, tokens.argmax(dim=1)):
        return (f"that is tokens.argmax(-1), the position of the largest id in each row ({got.tolist()}). "
                f"It finds <eot> only when <eot> has the largest id (CLIP's BPE); here <eot> is id {eot}.")
    if torch.equal(got, expected + 1):
        return (f"one too far: {got.tolist()} counts the tokens up to and including <eot>; "
                f"the index of <eot> is one less, {expected.tolist()}.")
    return f"expected {expected.tolist()}, got {got.tolist()}."


eot_index = Exercise(
    name="eot_index",
    task="For a batch of token rows (B, L), return the (B,) positions of the end-of-text token.",
    checker=_check_eot_index,
    hint_text="Compare the ids with eot_id to get a boolean (B, L) tensor; the position of the first True in "
    "each row is an argmax of that tensor (as integers), not of the ids.",
    solution_code="""
    def find_eot(tokens, eot_id):
        return (tokens == eot_id).int().argmax(dim=1)
    """,
    reference=lambda: lambda tokens, eot_id: (tokens == eot_id).int().argmax(dim=1),
    mistakes=[
        (lambda: lambda tokens, eot_id: tokens.argmax(dim=1), "argmax"),
        (lambda: lambda tokens, eot_id: (tokens != 0).sum(dim=1), "one too far"),
        (lambda: lambda tokens, eot_id: (tokens == eot_id).float().argmax(dim=1).float(), "integer"),
    ],
    success="the same as clipedu.text.eot_index, for any tokenizer.",
)
