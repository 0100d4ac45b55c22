import pytest
import torch

from clipedu.tokenizer import SPECIALS, WordTokenizer, split_words

CAPTIONS = ["a large red circle in the top left", "top-left: a big crimson disc", "a small blue square"]


def test_split_words_lowercases_and_separates_punctuation():
    assert split_words("Top-left: a BIG disc.") == ["top", "-", "left", ":", "a", "big", "disc", "."]


def test_vocabulary_is_built_from_captions_and_deterministic():
    tok = WordTokenizer.build(CAPTIONS)
    assert tok.vocab[:4] == list(SPECIALS)
    assert {"crimson", "disc", "-", ":"} <= set(tok.vocab)
    assert WordTokenizer.build(reversed(CAPTIONS)).vocab == tok.vocab


def test_encode_pads_and_marks_start_and_end():
    tok = WordTokenizer.build(CAPTIONS, context_length=10)
    ids = tok(["a small blue square", "a red disc"])
    assert ids.shape == (2, 10) and ids.dtype == torch.long
    assert ids[0, 0] == tok.sot_id and ids[0, 5] == tok.eot_id and torch.all(ids[0, 6:] == tok.pad_id)


def test_unknown_words_map_to_unk():
    tok = WordTokenizer.build(CAPTIONS)
    assert tok.encode("a green circle")[2] == tok.unk_id


def test_decode_inverts_encode():
    tok = WordTokenizer.build(CAPTIONS)
    for caption in CAPTIONS:
        assert tok.decode(tok([caption])[0]) == caption


def test_save_load_roundtrip(tmp_path):
    tok = WordTokenizer.build(CAPTIONS, context_length=16)
    tok.save(tmp_path / "vocab.json")
    again = WordTokenizer.load(tmp_path / "vocab.json")
    assert again.vocab == tok.vocab and again.context_length == 16
    assert torch.equal(again(CAPTIONS), tok(CAPTIONS))


def test_bad_vocabularies_and_inputs():
    with pytest.raises(ValueError, match="must start with"):
        WordTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="duplicate entries: \\['a'\\]"):
        WordTokenizer(list(SPECIALS) + ["a", "a"])
    with pytest.raises(ValueError, match="no captions"):
        WordTokenizer.build(["", "  "])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        WordTokenizer.build(CAPTIONS).decode([999])
    with pytest.raises(ValueError, match="kind='word'"):
        WordTokenizer.from_dict({"kind": "bpe"})
