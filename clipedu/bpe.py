"""CLIP's byte-level BPE tokenizer, written to be read top to bottom.

A caption becomes a row of 77 integer ids in five steps::

    "A photo of a Cat!"
      -> clean up          "a photo of a cat!"
      -> pre-tokenise      ["a", "photo", "of", "a", "cat", "!"]
      -> bytes -> symbols  each piece as printable characters, one per UTF-8 byte
      -> BPE merges        ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "!</w>"]
      -> ids, framed       [49406, 320, 1125, 539, 320, 2368, 256, 49407, 0, 0, ...]

Byte-level BPE never meets an unknown word: any text is a sequence of bytes and every byte is in
the vocabulary; frequent byte sequences ("photo", "ing") were merged into single tokens when
OpenAI built the vocabulary. The ~49k merges come from a file, ``bpe_simple_vocab_16e6.txt.gz``;
:func:`find_merges_file` finds it locally or downloads it once.

The ids equal OpenAI's tokenizer (``tests/test_bpe.py`` checks them against open_clip's copy of
it on a varied corpus and on random text), with two deliberate differences:

- a caption that literally contains ``<|endoftext|>`` is tokenised as text; OpenAI's tokenizer
  turns it into the special token, which would end the caption early;
- text longer than the context is an error unless ``truncate=True`` (open_clip always truncates).

Packages: ``regex`` is required (the pattern needs Unicode classes ``\\p{L}``/``\\p{N}``, which
Python's ``re`` lacks). ``ftfy`` is optional: OpenAI repairs text with ``ftfy.fix_text`` before
tokenising, and so do we when it is installed. Without it, text that ftfy would change gets
other ids: mojibake stays broken ("cafÃ©"), curly quotes stay curly (so "don’t" loses the
``'t`` contraction), ligatures ("ﬁ") and full-width letters ("ＣＬＩＰ") stay as they are,
decomposed accents are not composed, control characters are kept, and HTML escaped more than
twice ("&amp;amp;amp;") is only partly un-escaped. Everyday ASCII captions give the same ids
either way.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import importlib.util
import json
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from http.client import HTTPException
from pathlib import Path

import regex
import torch

from clipedu.runtime import cache_dir
from clipedu.tokenizer import encode_batch

try:
    import ftfy
except ImportError:  # optional: see the module docstring for what changes without it
    ftfy = None

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
N_MERGES = 49152 - 256 - 2  # CLIP used the first 48,894 merges of the file: 512 + 48,894 + 2 = 49,408
CONTEXT_LENGTH = 77

# ---------------------------------------------------------------------------------------------
# 1. Bytes as printable characters
# ---------------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """A printable character for each of the 256 byte values.

    Why: BPE works on UTF-8 bytes, so every text is covered by 256 base symbols and there is no
    unknown token. But some bytes are spaces or control characters, which would be invisible and
    would clash with the space-separated merges file. So each byte gets a visible stand-in: the
    188 bytes that are printable Latin-1 keep their own character, the other 68 are moved to
    ``chr(256)``, ``chr(257)``, ... (a space, byte 32, becomes "Ġ"). The order of this table is
    the order of token ids 0-255.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),  # ASCII letters, digits, punctuation
        *range(ord("¡"), ord("¬") + 1),  # Latin-1 symbols
        *range(ord("®"), ord("ÿ") + 1),  # Latin-1 symbols and accented letters
    ]
    table = {b: chr(b) for b in printable}
    unprintable = [b for b in range(256) if b not in table]  # space, control codes, NBSP, soft hyphen
    table.update({b: chr(256 + i) for i, b in enumerate(unprintable)})
    return table


# ---------------------------------------------------------------------------------------------
# 2. Clean-up
# ---------------------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """Normalise a caption the way OpenAI did before tokenising.

    >>> clean_text("  Fish &amp;amp; CHIPS\\n\\tat the pier ")
    'fish & chips at the pier'
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a str, got {type(text).__name__}")
    if ftfy is not None:
        text = ftfy.fix_text(text)  # repairs web text: mojibake, curly quotes, ligatures, ...
    text = html.unescape(html.unescape(text))  # scraped captions are often escaped twice: "&amp;amp;"
    text = " ".join(text.split())  # any run of spaces, tabs or newlines -> one space, none at the ends
    return text.lower()  # the vocabulary is lower-case: "Cat" and "cat" are one token


# ---------------------------------------------------------------------------------------------
# 3. Pre-tokenising: where merges may not cross
# ---------------------------------------------------------------------------------------------

# BPE runs on each piece separately, so a word is always split the same way whatever surrounds it
# (which also makes a per-word cache possible). Whitespace is dropped here: a word boundary is
# remembered only as the "</w>" on a word's last symbol.
PRETOKENIZE = regex.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d"  # English contractions split off: "it's" -> "it", "'s"
    r"|\p{L}+"  # a run of letters in any script: "photo", "café", "猫"
    r"|\p{N}"  # a single digit: "2024" -> "2", "0", "2", "4"
    r"|[^\s\p{L}\p{N}]+",  # a run of anything else: punctuation, symbols, emoji
    regex.IGNORECASE,  # as OpenAI wrote it; the text is already lower-case
)


# ---------------------------------------------------------------------------------------------
# 4. The tokenizer: merges applied by rank, ids, framing
# ---------------------------------------------------------------------------------------------


class BPETokenizer:
    """CLIP's tokenizer: ``tok(["a photo of a cat"])`` is a (1, 77) LongTensor of OpenAI's ids.

    ``merges_path`` picks a merges file (default: :func:`find_merges_file`). A file with fewer
    merges than CLIP's gives a smaller vocabulary, handy for toy examples.
    """

    def __init__(self, merges_path: str | Path | None = None, context_length: int = CONTEXT_LENGTH):
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (<sot> and <eot>), got {context_length}")
        self.merges_path = find_merges_file(merges_path)
        with gzip.open(self.merges_path) as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 1 + N_MERGES] if line]  # line 0: a header
        if any(len(m) != 2 for m in merges):
            raise ValueError(f"{self.merges_path} is not a merges file: each line must be 'left right'")

        # A merge's rank is its line number: lower ranks were more frequent, so they merge first.
        self.ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}

        self.byte_encoder = bytes_to_unicode()  # byte -> character
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}  # character -> byte
        symbols = list(self.byte_encoder.values())
        word_ends = [s + END_OF_WORD for s in symbols]
        # ids: 256 single bytes, 256 single bytes ending a word, one token per merge, 2 specials
        self.vocab: list[str] = symbols + word_ends + [a + b for a, b in merges] + [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(self.vocab)}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]  # 49406, 49407 for CLIP
        self.pad_id = 0  # CLIP pads with 0 (also the id of "!"); nothing reads past <eot>
        self.context_length = context_length
        self._cache: dict[str, tuple[str, ...]] = {}  # word -> its BPE symbols

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, context_length={self.context_length}, "
            f"ftfy={'yes' if ftfy is not None else 'no'})"
        )

    def bpe(self, word: str) -> tuple[str, ...]:
        """Split one pre-tokenised word (already as byte characters) into vocabulary symbols.

        Start from single characters, the last one marked as ending the word, then repeatedly
        merge the adjacent pair with the lowest rank, everywhere it occurs, until no adjacent pair
        is in the merges. ``"cat"`` -> ``c a t</w>`` -> ``c at</w>`` -> ``cat</w>``.
        """
        if word in self._cache:
            return self._cache[word]
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break  # no pair left that the merges know
            merged, i = [], 0
            while i < len(symbols):  # left to right, so "a a a" becomes "aa a"
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self._cache[word] = tuple(symbols)
        return self._cache[word]

    def pieces(self, text: str) -> list[str]:
        """The BPE symbols of a text, as strings: ``["a</w>", "photo</w>", ...]``.

        Non-ASCII shows as its byte characters: "é" is two bytes, so "café" -> ``["cafÃ©</w>"]``.
        """
        out: list[str] = []
        for word in PRETOKENIZE.findall(clean_text(text)):
            as_bytes = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            out.extend(self.bpe(as_bytes))
        return out

    def encode(self, text: str) -> list[int]:
        """Ids for one text, with ``<|startoftext|>`` and ``<|endoftext|>`` and no padding."""
        return [self.sot_id] + [self.encoder[p] for p in self.pieces(text)] + [self.eot_id]

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None, truncate: bool = False
    ) -> torch.Tensor:
        """Encode a text or a list of texts into a (B, context_length) LongTensor, padded with 0.

        A text that does not fit is an error unless ``truncate=True``, which cuts it and keeps
        ``<|endoftext|>`` as the last token (the text encoder reads its output there).
        """
        return encode_batch(self, texts, context_length or self.context_length, truncate)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text from ids: drops ``<|startoftext|>``, stops at ``<|endoftext|>``.

        Spaces come back only where words ended, so the text is the cleaned one with a space
        after every pre-tokenised piece: ``"A cat, it's."`` -> ``"a cat , it 's ."``.
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes one row of ids, got a tensor of shape {tuple(ids.shape)}")
            ids = ids.tolist()
        data = bytearray()
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            if i == self.eot_id:
                break
            if i == self.sot_id:
                continue
            token = self.vocab[i]
            ends_word = token.endswith(END_OF_WORD)
            if ends_word:
                token = token[: -len(END_OF_WORD)]
            data += bytes(self.byte_decoder[c] for c in token)
            if ends_word:
                data += b" "
        # errors="replace": a cut-off multi-byte character shows as "�" instead of failing
        return data.decode("utf-8", errors="replace").rstrip(" ")

    def to_dict(self) -> dict:
        """What :meth:`from_dict` needs to rebuild this tokenizer (the merges file is re-found)."""
        return {"kind": "bpe", "merges_file": str(self.merges_path), "context_length": self.context_length}

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        if not isinstance(d, dict) or d.get("kind") != "bpe":
            raise ValueError(f"expected a BPE-tokenizer dict with kind='bpe', got {d!r:.120}")
        path = d.get("merges_file")
        if path is not None and not Path(path).is_file():
            path = None  # saved on another machine: find CLIP's file here instead
        return cls(path, context_length=d.get("context_length", CONTEXT_LENGTH))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=0))

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        return cls.from_dict(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------------------------------------
# 5. Finding the merges file
# ---------------------------------------------------------------------------------------------

MERGES_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
MERGES_URL = "https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz"
MERGES_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


def find_merges_file(path: str | Path | None = None) -> Path:
    """The merges file: ``path`` if given, else open_clip's copy, else the cache, else download.

    A download happens once: it lands in :func:`clipedu.runtime.cache_dir` after its SHA256 is
    checked against the file OpenAI released.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no BPE merges file at {path}")
        return path
    bundled = _open_clip_copy()
    if bundled is not None:
        return bundled
    cached = cache_dir() / MERGES_FILENAME
    if cached.is_file():
        digest = _sha256(cached)
        if digest != MERGES_SHA256:
            raise ValueError(
                f"{cached} has SHA256 {digest}, expected {MERGES_SHA256}: it is not CLIP's merges "
                "file. Delete it to download a fresh copy"
            )
        return cached
    return download_merges(cached)


def _open_clip_copy() -> Path | None:
    """open_clip ships the same file; find its folder without importing it (importing is slow)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec and spec.submodule_search_locations) or []:
        candidate = Path(folder) / MERGES_FILENAME
        if candidate.is_file():
            return candidate
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download_merges(dest: Path) -> Path:
    """Download the merges file to ``dest``, atomically, and check its SHA256."""
    # Not torch.hub.download_url_to_file: it has no timeout (see clipedu.pretrained.download_file).
    try:
        with urllib.request.urlopen(MERGES_URL, timeout=60) as response:
            data = response.read()  # about 1.3 MB
    except (OSError, HTTPException) as err:  # no network, DNS failure, HTTP 404, timeout, ...
        raise FileNotFoundError(
            f"could not download CLIP's BPE merges file from {MERGES_URL} ({err}). Offline, either "
            f"`pip install open_clip_torch` (it ships the file) or copy {MERGES_FILENAME} to {dest}"
        ) from err
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary file in the same folder, then rename: a crash or a parallel download
    # never leaves a half-written file under the final name.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=MERGES_FILENAME, suffix=".part")
    tmp = Path(tmp)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    digest = _sha256(tmp)
    if digest != MERGES_SHA256:
        tmp.unlink()
        raise ValueError(
            f"the file downloaded from {MERGES_URL} has SHA256 {digest}, expected {MERGES_SHA256}; "
            "it was deleted. Try again later, or copy the file from open_clip_torch"
        )
    os.replace(tmp, dest)
    return dest
