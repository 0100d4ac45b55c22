"""Datasets by name, scikit-learn's digits, and a tokenizer built from the data."""

import pytest
import torch

from clipedu.data import DATASET_NAMES, ShapesWorld, build_tokenizer, digits, get_dataset, mirror_caption


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: one thread is as fast, and never waits on a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_digits_real_images_with_captions():
    train, test = digits(split="train"), digits(split="test")
    assert len(train) + len(test) == 1797 and len(test) == round(1797 * 0.2)
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], train.images[:, 1])  # grey copied to RGB
    assert train.images.max() == 255 and train.images.min() == 0
    assert train.class_names["class"][3] == "three" and not train.flippable
    i = int((train.labels["class"] == 3).nonzero()[0])
    assert "a handwritten digit 3" in train.captions[i] and "the number three" in train.captions[i]
    assert train.prompts("class")[7][0] == "a handwritten seven"
    small = digits(image_size=16, split="all")
    assert small.images.shape == (1797, 3, 16, 16)
    # The picture really is the digit: class means differ (a 0 has a hole, a 1 is a stroke).
    mean0 = small.images[small.labels["class"] == 0].float().mean(0)
    mean1 = small.images[small.labels["class"] == 1].float().mean(0)
    assert mean0[0, 8, 8] < mean1[0, 8, 8]


def test_get_dataset_names():
    assert len(get_dataset("shapes", "test", n=10)) == 10
    two = get_dataset("shapes2", "train", n=12, image_size=64, seed=3)
    assert two.images.shape == (12, 3, 64, 64) and two.hard_negatives is not None
    assert get_dataset("shapes", "heldout", n=5).name == "shapes-heldout"
    assert get_dataset("digits", "test").name == "digits-test"
    with pytest.raises(ValueError) as info:
        get_dataset("imagenet")
    for name in DATASET_NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        get_dataset("cifar10", "heldout")


def test_build_tokenizer_knows_captions_mirrors_and_prompts():
    data = ShapesWorld(num_objects=1).generate(400)
    tokenizer = build_tokenizer(data, context_length=24)
    unk = tokenizer.unk_id
    texts = data.all_captions() + [mirror_caption(c) for c in data.all_captions()]
    texts += [p for attribute in data.class_names for prompts in data.prompts(attribute) for p in prompts]
    tokens = tokenizer(texts)
    assert not (tokens == unk).any()
    assert tokenizer.vocab_size < 200  # a small, word-level vocabulary
    assert (tokenizer(["a red zebra"]) == unk).sum() == 1  # unseen words map to <unk>
    pairs = ShapesWorld(num_objects=2).generate(100)
    both = build_tokenizer([data, pairs])
    assert not (both([c for caps in pairs.hard_negatives for c in caps]) == both.unk_id).any()
    # The vocabulary travels with a checkpoint as a plain dict.
    assert type(both).from_dict(both.to_dict()).vocab == both.vocab


def test_build_tokenizer_checks_the_context_length():
    data = ShapesWorld(num_objects=2).generate(50)
    with pytest.raises(ValueError, match="more than context_length=8"):
        build_tokenizer(data, context_length=8)
