"""CLIP's byte-level BPE tokenizer: same ids as open_clip, clear errors, an offline-safe download."""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipedu import bpe
from clipedu.bpe import BPETokenizer, bytes_to_unicode, clean_text, find_merges_file

CORPUS = [
    "a photo of a cat",
    "A Photo Of A CAT.",
    "a diagram showing the architecture of CLIP: two encoders, one loss",
    "",
    "   ",
    "café, naïve façade, Ångström, São Paulo, Müller",
    "東京の夜景の写真",
    "一只猫坐在垫子上",
    "한국어 문장입니다",
    "صورة قطة على الطاولة",
    "Привет, мир!",
    "🐱🐶 emoji 👩‍👩‍👧 and flags 🇫🇷",
    "!!! ??? ... --- ;;; (((( )))) [[]] {{}} <<>> @#$%^&*",
    "what?!?! no way...",
    "3.14159, 2024-05-01, $1,000,000, 42nd, 1st, 100%",
    "don't, it's, we're, you've, I'm, she'll, he'd, DON'T, rock 'n' roll",
    "don’t stop — “smart quotes”",
    "fish &amp; chips &lt;b&gt; &amp;amp; &quot;quoted&quot; &#39;apos&#39; &eacute;",
    "tabs\tand\nnewlines\r\n  and   runs    of\u00a0\u2003spaces",
    "cafÃ© mojibake",
    "ﬁne ligatures and ＦＵＬＬ width",
    "<|endoftext|> <|startoftext|> </w>",  # open_clip 3 names its specials <start_of_text>, ...
    "x" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]
LONG = " ".join(["a very long caption about a cat sitting on a mat"] * 20)


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    try:
        return BPETokenizer()
    except FileNotFoundError as err:  # offline, without open_clip and without a cached copy
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def oc():
    """open_clip's tokenizer module, the reference (skip when open_clip is not installed)."""
    return pytest.importorskip("open_clip.tokenizer")


@pytest.fixture(scope="module")
def oc_tok(oc):
    return oc.SimpleTokenizer()


def test_vocabulary_layout(tok):
    assert tok.vocab_size == len(tok) == 49408
    assert (tok.sot_id, tok.eot_id, tok.pad_id, tok.context_length) == (49406, 49407, 0, 77)
    assert tok.vocab[:2] == ["!", '"'] and tok.vocab[256] == "!</w>"


def test_bytes_to_unicode_is_printable_and_reversible():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ"


def test_bytes_to_unicode_matches_open_clip(oc):
    assert list(bytes_to_unicode().items()) == list(oc.bytes_to_unicode().items())


def test_bpe_merges_lowest_rank_first(tmp_path):
    def toy(merges: list[str]) -> BPETokenizer:
        path = tmp_path / f"toy{len(list(tmp_path.iterdir()))}.txt.gz"
        path.write_bytes(gzip.compress(("#version: toy\n" + "\n".join(merges) + "\n").encode()))
        return BPETokenizer(path)

    # "c a t</w>": (c, a) outranks (a, t</w>), so "ca" forms first, then "cat</w>".
    assert toy(["c a", "a t</w>", "ca t</w>"]).bpe("cat") == ("cat</w>",)
    # Flip the first two ranks: "at</w>" forms first and no merge joins "c" to it.
    assert toy(["a t</w>", "c a", "ca t</w>"]).bpe("cat") == ("c", "at</w>")
    # Every occurrence of the best pair merges, left to right.
    small = toy(["a a"])
    assert small.bpe("aaaaa") == ("aa", "aa", "a</w>")
    assert small.vocab_size == 512 + 1 + 2 and small.eot_id == 514
    assert "aaaaa" in small._cache


def test_known_ids(tok):
    assert tok.encode("a photo of a cat!") == [49406, 320, 1125, 539, 320, 2368, 256, 49407]
    assert tok.pieces("Café 2024") == ["cafÃ©</w>", "2</w>", "0</w>", "2</w>", "4</w>"]


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_ids_equal_open_clip(tok, oc, oc_tok, text):
    assert tok.encode(text) == [tok.sot_id] + oc_tok.encode(text) + [tok.eot_id]
    assert torch.equal(tok(text, truncate=True), oc.tokenize(text))


def test_batch_equals_open_clip_with_truncation(tok, oc):
    ids = tok(CORPUS + [LONG], truncate=True)  # (B, 77)
    assert ids.shape == (len(CORPUS) + 1, 77) and ids.dtype == torch.long
    assert torch.equal(ids, oc.tokenize(CORPUS + [LONG]))
    assert ids[-1, -1] == tok.eot_id  # the cut text still ends with <eot>
    assert torch.equal(tok(LONG, context_length=16, truncate=True), oc.tokenize(LONG, context_length=16))


@settings(deadline=None, max_examples=200)
@given(text=st.text(max_size=120))
def test_random_text_equals_open_clip(tok, oc, oc_tok, text):
    assert tok.encode(text) == [tok.sot_id] + oc_tok.encode(text) + [tok.eot_id]
    assert torch.equal(tok(text, truncate=True), oc.tokenize(text))


def test_over_long_text_is_a_clear_error(tok):
    n = len(tok.encode(LONG))
    with pytest.raises(ValueError, match=rf"text 1 has {n} tokens .* context length 77.*truncate=True"):
        tok(["a cat", LONG])


def test_padding_and_shapes(tok):
    ids = tok(["a cat", ""], context_length=8)
    assert ids.tolist() == [[49406, 320, 2368, 49407, 0, 0, 0, 0], [49406, 49407, 0, 0, 0, 0, 0, 0]]
    assert tok("a cat").shape == (1, 77)
    with pytest.raises(ValueError, match="at least 2"):
        tok("a cat", context_length=1)
    with pytest.raises(ValueError, match="expected a str"):
        tok([b"bytes"])


@settings(deadline=None, max_examples=200)
@given(text=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80))
def test_decode_round_trips_cleaned_ascii(tok, text):
    decoded = tok.decode(tok.encode(text))
    # Only whitespace is lost: BPE keeps "a word ended here", not whether a space followed.
    assert decoded.replace(" ", "") == clean_text(text).replace(" ", "")
    assert tok.encode(decoded) == tok.encode(text)


def test_decode(tok):
    assert tok.decode(tok("A cat, it's.")[0]) == "a cat , it 's ."
    assert tok.decode(tok.encode("東京 café 🐱")) == "東京 café 🐱"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([49408])
    with pytest.raises(ValueError, match="one row"):
        tok.decode(tok(["a", "b"]))


def test_special_token_text_stays_text(tok):
    # OpenAI's tokenizer (and open_clip's, for its own names) would put an <eot> mid-caption here.
    for text in ["<|endoftext|> a cat", "<end_of_text> a cat"]:
        ids = tok.encode(text)
        assert ids.count(tok.eot_id) == 1 and ids[-1] == tok.eot_id


def test_without_ftfy(tok, monkeypatch):
    pytest.importorskip("ftfy")
    ascii_text = "A photo of a CAT, 2 dogs &amp; a bird!"
    with_ftfy = [tok.encode(ascii_text), tok.encode("don’t")]
    assert with_ftfy[1] == tok.encode("don't")
    monkeypatch.setattr(bpe, "ftfy", None)
    assert tok.encode(ascii_text) == with_ftfy[0]
    assert tok.encode("don’t") != with_ftfy[1]  # the curly quote is no longer straightened


def test_to_dict_round_trip(tok, tmp_path):
    d = tok.to_dict()
    assert d["kind"] == "bpe"
    again = BPETokenizer.from_dict(d)
    assert torch.equal(again(CORPUS[:5], truncate=True), tok(CORPUS[:5], truncate=True))
    moved = BPETokenizer.from_dict({**d, "merges_file": "/elsewhere/gone.txt.gz", "context_length": 32})
    assert moved.context_length == 32 and moved.merges_path.is_file()
    tok.save(tmp_path / "tok.json")
    assert BPETokenizer.load(tmp_path / "tok.json").to_dict() == d
    with pytest.raises(ValueError, match="kind='bpe'"):
        BPETokenizer.from_dict({"kind": "word", "vocab": []})


# --- finding and downloading the merges file -------------------------------------------------


@pytest.fixture
def reference_merges(oc) -> Path:
    return Path(oc.default_bpe())


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache and no open_clip copy, so find_merges_file() must download."""
    monkeypatch.setenv("CLIPEDU_DATA", str(tmp_path))
    monkeypatch.setattr(bpe, "_open_clip_copy", lambda: None)
    return tmp_path / "cache"


def test_explicit_path_and_open_clip_copy(reference_merges):
    assert find_merges_file(reference_merges) == reference_merges
    assert find_merges_file().samefile(reference_merges)  # open_clip's copy, found without a download
    assert bpe._sha256(reference_merges) == bpe.MERGES_SHA256
    with pytest.raises(FileNotFoundError, match="no BPE merges file"):
        find_merges_file("/no/such/file.txt.gz")


def test_no_network_is_a_clear_error(offline_cache, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(FileNotFoundError) as err:
        find_merges_file()
    message = str(err.value)
    assert bpe.MERGES_URL in message and "pip install open_clip_torch" in message
    assert str(offline_cache / bpe.MERGES_FILENAME) in message


def test_wrong_checksum_deletes_the_download(offline_cache, tmp_path, monkeypatch):
    wrong = tmp_path / "wrong.txt.gz"
    wrong.write_bytes(gzip.compress(b"#version: 0.2\nnot the merges\n"))
    monkeypatch.setattr(bpe, "MERGES_URL", wrong.as_uri())
    with pytest.raises(ValueError, match="SHA256"):
        find_merges_file()
    assert list(offline_cache.iterdir()) == []  # neither the file nor a temporary copy is left


def test_download_lands_in_cache_once(offline_cache, reference_merges, monkeypatch):
    monkeypatch.setattr(bpe, "MERGES_URL", reference_merges.as_uri())  # a correct copy, served locally
    path = find_merges_file()
    assert path == offline_cache / bpe.MERGES_FILENAME
    assert path.read_bytes() == reference_merges.read_bytes()

    def must_not_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(urllib.request, "urlopen", must_not_download)
    assert find_merges_file() == path
    assert BPETokenizer().encode("a cat") == [49406, 320, 2368, 49407]


def test_corrupt_cached_file_is_reported(offline_cache):
    offline_cache.mkdir(parents=True, exist_ok=True)
    (offline_cache / bpe.MERGES_FILENAME).write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="Delete it"):
        find_merges_file()
