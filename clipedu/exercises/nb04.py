"""Exercises of notebook 04 (the text encoder): encoding, the causal mask (a prediction, an experiment and a
count), finding <eot> and pooling there."""

from __future__ import annotations

import torch

from clipedu.attention import causal_mask
from clipedu.config import preset
from clipedu.exercises import Exercise, as_number, prediction
from clipedu.text import TextTransformer
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


# --- 4. a prediction: do the outputs before a changed word move? --------------------------------------
predict_causal_outputs = prediction(
    "predict_causal_outputs",
    "Two captions differ only in the word at position k. Under the causal mask, how much do the outputs at "
    "positions before k differ: 'not at all', 'a little' or 'as much as the rest'?",
    "not at all",
    choices=("not at all", "a little", "as much as the rest"),
    why="In every block, query i attends to keys 0..i only, so the output at i is computed from tokens 0..i "
    "alone, the same ids in both captions: the same arithmetic on the same numbers, a difference of exactly 0.0. "
    "Every output from k on moves, padding included.",
    hint="Follow one position i < k through a block: which keys does its query see, and are any of them different "
    "in the two captions? Then the next block reads only those outputs.",
)


# --- 5. an experiment: which outputs move when one token changes? ------------------------------------
def experiment_setup():
    """A small text tower with random weights (context 24) and one caption's ids (24,), the same on every call."""
    cfg = preset("tiny", vocab_size=len(_VOCAB)).text
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        model = TextTransformer(cfg, embed_dim=32).eval()
    row = _tokenizer(cfg.context_length)(["a red circle in the top left"])[0]  # (24,)
    return model, row


def position_differences(model, tokens_a, tokens_b, causal=True) -> torch.Tensor:
    """(L,): the largest absolute change of each position's output between two rows of ids (the
    measurement of ``clipedu.viz.text.position_differences``, kept here: the checkers draw nothing)."""
    tokens = torch.stack([tokens_a, tokens_b])  # (2, L)
    with torch.no_grad():
        x = model.token_embed(tokens) + model.pos_embed[: tokens.shape[1]]
        out = model.ln_final(model.transformer(x, is_causal=causal))  # (2, L, D)
    return (out[0] - out[1]).abs().amax(dim=-1)


def _outputs_moved(model, row, j, causal=True) -> int:
    other = row.clone()
    other[j] = _UNK if int(row[j]) != _UNK else _UNK + 1  # a different id at position j
    return int((position_differences(model, row, other, causal=causal) > 0).sum())


_UNK, _EOT = 3, 2


def _check_causal_experiment(fn) -> str | None:
    model, row = experiment_setup()
    n = len(row)
    measured = fn()
    if not isinstance(measured, dict):
        return f"return a dict {{position j: how many of the {n} outputs changed}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} position(s); change at least 3 different positions to see how the "
                "count depends on where the change is (e.g. 1, 4 and 7).")
    eot = int((row == _EOT).int().argmax())
    for j in measured:
        if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < n:
            return f"each key is the position of the changed token, an integer from 0 to {n - 1}; got {j!r}."
        if j == eot:
            return (f"position {j} holds <eot>, where the tower reads the caption; without it the input is invalid. "
                    f"Change a word (1 to {eot - 1}) or a padding position ({eot + 1} to {n - 1}).")
    for j, value in sorted(measured.items()):
        got = as_number(value)
        if got is None:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            return (f"for position {j} you returned {shape}; the measurement is one number: how many output "
                    "positions changed at all (count the positions where position_differences is above 0).")
        expected = _outputs_moved(model, row, j)
        if got == expected:
            continue
        if got == n - expected:
            return (f"for position {j} you counted {got:g} output(s): those that did NOT change. The checker counts "
                    f"the outputs that moved, {expected}.")
        if got == expected - 1:
            return (f"for position {j} you counted {got:g}, one too few: the output at position {j} itself changes "
                    f"too (its own token is different), so {expected} outputs move.")
        if got == _outputs_moved(model, row, j, causal=False):
            return (f"for position {j} all {n} outputs moved in your measurement: that is the tower without its "
                    "causal mask. Measure with the mask (vt.position_differences(model, a, b), causal=True).")
        return (f"for position {j} the checker replaced the token and counted {expected} of the {n} outputs that "
                f"changed; you reported {got:g}. Count the positions where vt.position_differences(model, row, "
                "other) is above 0.")
    return None


def _reference_causal_experiment():
    model, row = experiment_setup()
    return {j: _outputs_moved(model, row, j) for j in (1, 4, 7)}


causal_experiment = Exercise(
    name="causal_experiment",
    task="my_experiment() -> {position j: how many of the 24 outputs change when token j is replaced}, "
    "for at least 3 positions (not <eot>'s)",
    checker=_check_causal_experiment,
    hint_text="model, row = nb04.experiment_setup(); for each j: other = row.clone(); other[j] = 3 (any other id); "
    "d = vt.position_differences(model, row, other); the count is int((d > 0).sum()).",
    solution_code="""
    from clipedu.exercises import nb04
    from clipedu.viz import text as vt


    def my_experiment():
        model, row = nb04.experiment_setup()  # a text tower with random weights, one caption's ids (24,)
        changed = {}
        for j in (1, 4, 7):  # the one thing changed: which word is replaced (position 8 holds <eot>)
            other = row.clone()
            other[j] = 3  # <unk> instead of the token at j
            differences = vt.position_differences(model, row, other)  # (24,): how much each output moved
            changed[j] = int((differences > 0).sum())  # how many outputs moved at all
        return changed
    """,
    reference=lambda: _reference_causal_experiment,
    mistakes=[
        (lambda: lambda: {1: 12, 4: 12, 7: 12}, "the checker replaced"),
        (lambda: lambda: {1: 23, 4: 20, 8: 16}, "holds <eot>"),
        (lambda: lambda: {1: 23, 4: 20}, "at least 3"),
        (lambda: lambda: {j: 24 - v for j, v in _reference_causal_experiment().items()}, "did NOT change"),
        (lambda: lambda: {j: v - 1 for j, v in _reference_causal_experiment().items()}, "one too few"),
        (lambda: lambda: {j: 24 for j in (1, 4, 7)}, "without its causal mask"),
        (lambda: lambda: {j: torch.ones(24) for j in (1, 4, 7)}, "one number"),
    ],
    success="24 - j outputs move when token j changes: position j and everything after it, padding included; "
    "nothing before it. Only <eot> (and the padding after it) sees the whole caption.",
    kind="experiment",
)


# --- 6. a derivation: how many (query, key) pairs does the causal mask allow? -------------------------
def _check_allowed_pairs(fn) -> str | None:
    for n in (3, 6, 10, 24, 77, 1, 2):
        expected = int(causal_mask(n).sum())  # brute force: count the True entries
        raw = fn(n)
        got = as_number(raw)
        if got is None:
            return f"allowed_pairs({n}) should be one number, got {type(raw).__name__}."
        if abs(got - expected) < 1e-9:
            continue
        call = f"allowed_pairs({n}) gave {got:g}, the mask has {expected} allowed pairs"
        if got == n * n:
            return f"{call}: n * n counts every pair, as full attention would; query i sees only keys 0..i."
        if got == n * (n - 1) // 2:
            return f"{call}: you left out the diagonal; each query also sees its own key (j <= i, not j < i)."
        if abs(got - n * n / 2) < 1e-9:
            return (f"{call}: half of n * n misses half of the diagonal: the lower triangle with the diagonal is "
                    "n(n + 1)/2.")
        if got == n * (n + 1):
            return f"{call}: query i sees i + 1 keys; summed over i = 0..n-1 that is n(n + 1)/2, not n(n + 1)."
        return f"{call}: add up, over the queries i = 0..n-1, the number of keys query i may see."
    return None


allowed_pairs = Exercise(
    name="allowed_pairs",
    task="allowed_pairs(n) -> how many (query, key) pairs the causal mask of n positions allows, in closed form",
    checker=_check_allowed_pairs,
    hint_text="Query i may see keys 0, 1, ..., i: that is i + 1 keys. Add that up over i = 0 .. n - 1 "
    "(1 + 2 + ... + n).",
    solution_code="""
    def allowed_pairs(n):
        return n * (n + 1) // 2  # query i sees i + 1 keys: 1 + 2 + ... + n
    """,
    reference=lambda: lambda n: n * (n + 1) // 2,
    mistakes=[
        (lambda: lambda n: n * n, "full attention"),
        (lambda: lambda n: n * (n - 1) // 2, "diagonal"),
        (lambda: lambda n: n * n / 2, "half of the diagonal"),
        (lambda: lambda n: n * (n + 1), "not n(n + 1)"),
        (lambda: lambda n: [n], "one number"),
    ],
    success="a bit more than half of the n x n scores are used: 55 of 100 for 10 positions, 300 of 576 for 24.",
    kind="derive",
)
