"""A word-level tokenizer built from a caption corpus.

Text becomes a fixed-length row of integer ids: ``<sot> w1 w2 ... <eot> <pad> <pad> ...``.
The text encoder reads the output at the ``<eot>`` position as the sentence embedding, so every
row must hold exactly one ``<eot>``.

Word-level is enough for the course's generated captions (a vocabulary of about a hundred words).
CLIP itself uses byte-level BPE (:mod:`clipedu.bpe`), which never meets an unknown word.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

PAD, SOT, EOT, UNK = "<pad>", "<sot>", "<eot>", "<unk>"
SPECIALS = (PAD, SOT, EOT, UNK)  # ids 0, 1, 2, 3

_WORD = re.compile(r"[a-z]+|\d+|[^\sa-z\d]")
_NO_SPACE_BEFORE = {",", ".", ":", ";", "!", "?", "-", ")"}
_NO_SPACE_AFTER = {"-", "("}


def encode_batch(tokenizer, texts: str | Sequence[str], context_length: int, truncate: bool = False) -> torch.Tensor:
    """``tokenizer.encode`` of each text, one row each of a (B, context_length) LongTensor padded
    with ``tokenizer.pad_id``; both tokenizers' ``__call__``. A text longer than the context is
    an error unless ``truncate``, which cuts it and keeps the end-of-text id as its last token."""
    if isinstance(texts, str):
        texts = [texts]
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2 (<sot> and <eot>), got {context_length}")
    out = torch.full((len(texts), context_length), tokenizer.pad_id, dtype=torch.long)  # (B, L)
    for row, text in enumerate(texts):
        ids = tokenizer.encode(text)
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(
                    f"text {row} has {len(ids)} tokens with <sot> and <eot>, more than the "
                    f"context length {context_length}: {text[:80]!r}. Shorten it or pass truncate=True"
                )
            ids = ids[: context_length - 1] + [tokenizer.eot_id]
        out[row, : len(ids)] = torch.tensor(ids)
    return out


def split_words(text: str) -> list[str]:
    """Lower-case and split into words, numbers and single punctuation marks.

    >>> split_words("Top-left: a big, crimson disc")
    ['top', '-', 'left', ':', 'a', 'big', ',', 'crimson', 'disc']
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Maps words to ids with a fixed vocabulary; unknown words become ``<unk>``."""

    def __init__(self, vocab: Sequence[str], context_length: int = 24):
        vocab = list(vocab)
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}, got {tuple(vocab[:4])}")
        if len(set(vocab)) != len(vocab):
            dupes = sorted(w for w, c in Counter(vocab).items() if c > 1)
            raise ValueError(f"vocabulary has duplicate entries: {dupes[:10]}")
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (<sot> and <eot>), got {context_length}")
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}
        self.context_length = context_length
        self.pad_id, self.sot_id, self.eot_id, self.unk_id = range(4)

    @classmethod
    def build(
        cls, captions: Iterable[str], context_length: int = 24, min_count: int = 1
    ) -> WordTokenizer:
        """Build the vocabulary from training captions: every word seen ``min_count`` times."""
        counts = Counter(w for c in captions for w in split_words(c))
        if not counts:
            raise ValueError("cannot build a vocabulary from no captions (or only empty ones)")
        words = sorted(w for w, n in counts.items() if n >= min_count)  # sorted: deterministic ids
        return cls(list(SPECIALS) + words, context_length=context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"

    def encode(self, text: str) -> list[int]:
        """Ids for one text, with ``<sot>`` and ``<eot>`` and no padding."""
        return [self.sot_id] + [self.index.get(w, self.unk_id) for w in split_words(text)] + [self.eot_id]

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None, truncate: bool = False
    ) -> torch.Tensor:
        """Encode a text or a list of texts into a (B, context_length) LongTensor, padded.

        A text that does not fit is an error unless ``truncate=True``, which cuts it and keeps the
        ``<eot>`` as the last token.
        """
        return encode_batch(self, texts, context_length or self.context_length, truncate)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text from ids: stops at ``<eot>``, drops ``<sot>`` and padding."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        words: list[str] = []
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            if i == self.eot_id:
                break
            if i in (self.sot_id, self.pad_id):
                continue
            words.append(self.vocab[i])
        text = ""
        for w in words:
            if text and w not in _NO_SPACE_BEFORE and text[-1] not in _NO_SPACE_AFTER:
                text += " "
            text += w
        return text

    def to_dict(self) -> dict:
        return {"kind": "word", "vocab": self.vocab, "context_length": self.context_length}

    @classmethod
    def from_dict(cls, d: dict) -> WordTokenizer:
        if not isinstance(d, dict) or d.get("kind") != "word" or "vocab" not in d:
            raise ValueError(f"expected a word-tokenizer dict with kind='word' and a vocab, got {d!r:.120}")
        return cls(d["vocab"], context_length=d.get("context_length", 24))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=0))

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        return cls.from_dict(json.loads(Path(path).read_text()))
