"""The shared dataset interface: validation, subsets, prompts, normalisation, caption mirroring."""

import pytest
import torch

from clipedu.data import CaptionedImages, mirror_caption, split_indices, to_float


def make(n=4, captions=None, **kw):
    images = torch.arange(n * 3 * 2 * 2, dtype=torch.uint8).view(n, 3, 2, 2)
    captions = captions if captions is not None else [[f"picture {i}", f"image {i}"] for i in range(n)]
    return CaptionedImages(images, captions, **kw)


def test_valid_data_and_basic_views():
    data = make(labels={"class": torch.tensor([0, 1, 1, 0])}, class_names={"class": ["cat", "dog"]},
                templates={"class": ["a photo of a {}.", "a {}"]})
    assert len(data) == 4 and data.image_size == 2 and data.channels == 3
    assert data.all_captions()[:3] == ["picture 0", "image 0", "picture 1"]
    assert data.prompts("class") == [["a photo of a cat.", "a cat"], ["a photo of a dog.", "a dog"]]
    assert "4 images 3x2x2" in repr(data)
    with pytest.raises(ValueError, match="no class names for 'colour'"):
        data.prompts("colour")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"images": torch.zeros(2, 3, 4, 4)}, "uint8"),
        ({"images": torch.zeros(3, 4, 4, dtype=torch.uint8)}, r"\(N, C, H, W\)"),
        ({"captions": [["a"]] * 3}, r"one list of strings per image \(4\), got 3"),
        ({"captions": [["a"], ["b"], [], ["c"]]}, r"captions\[2\] must be a non-empty list"),
        ({"captions": [["a"], ["b"], [" "], ["c"]]}, "empty or non-text caption"),
        ({"labels": {"class": torch.zeros(4)}}, r"LongTensor of shape \(4,\)"),
        ({"labels": {"class": torch.tensor([0, 1, 2, 0])}, "class_names": {"class": ["a", "b"]}},
         r"\[0, 2\) to match class_names"),
        ({"templates": {"class": ["no slot"]}}, "must each contain"),
        ({"hard_negatives": [["x"]] * 4}, "2 captions but 1 hard negatives"),
    ],
)
def test_bad_data_is_a_clear_error(kwargs, message):
    base = {"images": torch.zeros(4, 3, 2, 2, dtype=torch.uint8), "captions": [["a", "b"]] * 4}
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        CaptionedImages(**base)


def test_subset_keeps_everything_aligned():
    data = make(labels={"class": torch.tensor([0, 1, 2, 3])}, hard_negatives=[["x", "y"]] * 4)
    part = data.subset([3, 1])
    assert torch.equal(part.images, data.images[[3, 1]])
    assert part.captions == [data.captions[3], data.captions[1]]
    assert part.labels["class"].tolist() == [3, 1]
    assert len(part.hard_negatives) == 2
    mask = torch.tensor([True, False, False, True])
    assert data.subset(mask).labels["class"].tolist() == [0, 3]
    assert len(data.subset([])) == 0
    with pytest.raises(IndexError, match="out of range for 4 images"):
        data.subset([0, 4])


def test_sample_is_a_fixed_random_subset_or_everything():
    data = make(n=10, labels={"class": torch.arange(10)})
    picked = data.sample(4, seed=3)
    assert len(picked) == 4 and len(set(picked.labels["class"].tolist())) == 4  # four different images
    assert torch.equal(picked.labels["class"], data.sample(4, seed=3).labels["class"])  # the same every call
    assert not torch.equal(picked.labels["class"], data.sample(4, seed=4).labels["class"])
    assert picked.captions == [data.captions[i] for i in picked.labels["class"].tolist()]
    assert data.sample(10) is data and data.sample(50) is data  # no more than n: all of them, unshuffled


def test_to_float_normalises_per_channel():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = to_float(images)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-1.0, 1.0, 51 / 255 * 2 - 1]))
    out = to_float(images[0], mean=(0.0, 0.5, 0.2), std=(1.0, 0.5, 0.1))  # one (C, H, W) image
    assert torch.allclose(out[:, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        to_float(images.float())
    with pytest.raises(ValueError, match="1 or 3 values"):
        to_float(images, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="positive"):
        to_float(images, std=(0.0,))


def test_mirror_caption_swaps_left_and_right_words_only():
    assert mirror_caption("a red circle left of a blue square") == "a red circle right of a blue square"
    assert mirror_caption("top-left: a disc; Right side") == "top-right: a disc; Left side"
    assert mirror_caption("a leftover bright light") == "a leftover bright light"
    text = "on the left and on the right"
    assert mirror_caption(mirror_caption(text)) == text


def test_split_indices_partition():
    train, test = split_indices(50, "train", 0.2, seed=1), split_indices(50, "test", 0.2, seed=1)
    assert len(test) == 10 and len(train) == 40
    assert sorted(train.tolist() + test.tolist()) == list(range(50))
    assert not torch.equal(test, split_indices(50, "test", 0.2, seed=2))
    with pytest.raises(ValueError, match="split must be"):
        split_indices(50, "val")
