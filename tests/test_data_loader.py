"""The on-device loader: batches, epochs, reproducibility, resuming, captions and flips."""

import pytest
import torch
from test_data_shapes import OPPOSITE, centroid_cell, parse_relation, parse_single

from clipedu.data import (
    CaptionedImages,
    DeviceLoader,
    ShapesWorld,
    build_tokenizer,
    digits,
    mirror_caption,
    padded_store,
    read_crops,
    to_float,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: one thread is as fast, and never waits on a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def shapes():
    return ShapesWorld(seed=1, captions_per_image=3).generate(300)


@pytest.fixture(scope="module")
def tokenizer(shapes):
    return build_tokenizer([shapes, ShapesWorld(num_objects=2).generate(200)])


def collect(loader):
    return [(b.index.cpu(), b.tokens.cpu(), b.images.cpu()) for b in loader]


def same(batches_a, batches_b):
    return len(batches_a) == len(batches_b) and all(
        all(torch.equal(x, y) for x, y in zip(a, b)) for a, b in zip(batches_a, batches_b)
    )


def as_uint8(images):
    return ((images * 0.5 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_shapes_types_and_normalisation(shapes, tokenizer, device):
    loader = DeviceLoader(shapes, tokenizer, batch_size=32, device=device)
    batch = next(iter(loader))
    assert batch.images.shape == (32, 3, 32, 32) and batch.images.dtype == torch.float32
    assert batch.tokens.shape == (32, tokenizer.context_length) and batch.tokens.dtype == torch.long
    assert batch.index.shape == (32,) and batch.index.dtype == torch.long
    assert batch.images.device.type == device and batch.hard_negative_tokens is None
    assert not batch.flipped.any()
    expected = to_float(shapes.images[batch.index.cpu()])
    torch.testing.assert_close(batch.images.cpu(), expected)
    assert batch.images.min() >= -1 and batch.images.max() <= 1


def test_every_image_once_per_epoch(shapes, tokenizer):
    loader = DeviceLoader(shapes, tokenizer, batch_size=64, drop_last=False)
    assert len(loader) == 5  # 300 images: four full batches and one of 44
    for _ in range(2):
        seen = torch.cat([b.index for b in loader])
        assert sorted(seen.tolist()) == list(range(300))
    dropping = DeviceLoader(shapes, tokenizer, batch_size=64, drop_last=True)
    assert len(dropping) == 4 and len(torch.cat([b.index for b in dropping]).unique()) == 256
    ordered = DeviceLoader(shapes, tokenizer, batch_size=100, shuffle=False)
    assert torch.equal(torch.cat([b.index for b in ordered]), torch.arange(300))


def test_order_is_reproducible_and_changes_between_epochs(shapes, tokenizer):
    make = lambda seed: DeviceLoader(shapes, tokenizer, 50, augment=True, seed=seed)  # noqa: E731
    a, b, c = make(0), make(0), make(1)
    first_a, first_b, first_c = collect(a), collect(b), collect(c)
    assert same(first_a, first_b)
    assert not torch.equal(first_a[0][0], first_c[0][0])
    second_a = collect(a)
    assert not torch.equal(first_a[0][0], second_a[0][0])  # a new epoch, a new order
    assert a.state_dict()["epoch"] == 2


def test_resume_from_state_dict_gives_the_same_remaining_batches(shapes, tokenizer):
    make = lambda: DeviceLoader(shapes, tokenizer, 32, augment=True, seed=5)  # noqa: E731
    loader = make()
    collect(loader)  # one whole epoch
    stream = iter(loader)
    for _ in range(3):
        next(stream)  # stop part-way through epoch 1
    state = loader.state_dict()
    assert (state["epoch"], state["position"]) == (1, 3)
    rest = [(b.index, b.tokens, b.images) for b in stream] + collect(loader)
    resumed = make()
    resumed.load_state_dict(state)
    assert same(rest, collect(resumed) + collect(resumed))
    with pytest.raises(ValueError, match="batch_size=32, this one has 16"):
        DeviceLoader(shapes, tokenizer, 16).load_state_dict(state)


def test_after_the_last_batch_the_state_points_at_the_next_epoch(shapes, tokenizer):
    loader = DeviceLoader(shapes, tokenizer, 100)
    stream = iter(loader)
    for _ in range(len(loader)):
        next(stream)
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 0
    batches = loader.forever()
    for _ in range(7):
        next(batches)
    assert (loader.epoch, loader.position) == (3, 1)


def test_captions_sampled_from_that_image_only(shapes, tokenizer):
    loader = DeviceLoader(shapes, tokenizer, 60, augment=True, seed=2)
    chosen = {}
    for _ in range(6):
        for batch in loader:
            for i, tokens, flipped in zip(batch.index.tolist(), batch.tokens, batch.flipped.tolist()):
                text = tokenizer.decode(tokens)
                own = [tokenizer.decode(tokenizer(mirror_caption(c) if flipped else c)[0])
                       for c in shapes.captions[i]]
                assert text in own
                if not flipped:
                    chosen.setdefault(i, set()).add(text)
    assert sum(len(s) > 1 for s in chosen.values()) > 100  # a different caption on different visits
    first = DeviceLoader(shapes, tokenizer, 60, first_caption=True)
    batch = next(iter(first))
    assert [tokenizer.decode(t) for t in batch.tokens[:5]] == [
        tokenizer.decode(tokenizer(shapes.captions[i][0])[0]) for i in batch.index[:5].tolist()]


def test_flipped_images_get_mirrored_captions(shapes, tokenizer):
    loader = DeviceLoader(shapes, tokenizer, 100, augment=True, crop_padding=0, seed=3)
    flips = 0
    for batch in loader:
        for image, tokens, flipped, i in zip(as_uint8(batch.images), batch.tokens, batch.flipped, batch.index):
            caption = tokenizer.decode(tokens)
            assert parse_single(caption)["position"] == centroid_cell(image), caption
            original = shapes.images[i]
            assert torch.equal(image, original.flip(-1) if flipped else original)
            flips += int(flipped)
    assert 100 < flips < 200  # about half of 300


def test_random_crop_moves_objects_but_keeps_their_cell(shapes, tokenizer):
    loader = DeviceLoader(shapes, tokenizer, 100, augment=True, seed=4)
    assert loader.crop_padding == 2  # ShapesWorld suggests a small shift
    moved = 0
    for batch in loader:
        images = as_uint8(batch.images)
        for image, tokens, i in zip(images, batch.tokens, batch.index):
            assert parse_single(tokenizer.decode(tokens))["position"] == centroid_cell(image)
            moved += not torch.equal(image, shapes.images[i]) and not torch.equal(image, shapes.images[i].flip(-1))
    assert moved > 200


def test_read_crops_matches_a_slow_loop():
    images = torch.randint(0, 256, (4, 3, 5, 7), dtype=torch.uint8)
    store = padded_store(images, padding=2, mirrored=True)  # (8, 3, 9, 11): originals, then mirrors
    assert store.shape == (8, 3, 9, 11)
    which = torch.tensor([0, 5, 2, 7, 3, 4])
    offsets = torch.tensor([[0, 0], [4, 4], [2, 1], [1, 3], [0, 4], [3, 2]])
    out = read_crops(store, which, offsets, 5, 7)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for k in range(6):
        picture = padded[which[k] % 4]
        if which[k] >= 4:
            picture = picture.flip(-1)
        y, x = offsets[k].tolist()
        assert torch.equal(out[k], picture[:, y : y + 5, x : x + 7])
    plain = padded_store(images, padding=1, mirrored=False)
    assert torch.equal(read_crops(plain, torch.tensor([3]), torch.tensor([[1, 1]]), 5, 7), images[3:])


def test_two_object_hard_negatives_follow_their_caption(tokenizer):
    pairs = ShapesWorld(num_objects=2, seed=7, captions_per_image=3).generate(120)
    loader = DeviceLoader(pairs, tokenizer, 40, augment=True, crop_padding=0, seed=1)
    names = pairs.class_names
    for batch in loader:
        assert batch.hard_negative_tokens.shape == batch.tokens.shape
        for i, tokens, negative, flipped in zip(batch.index.tolist(), batch.tokens, batch.hard_negative_tokens,
                                                batch.flipped.tolist()):
            caption, swapped = tokenizer.decode(tokens), tokenizer.decode(negative)
            c1, c2 = names["colour"][pairs.labels["colour"][i]], names["colour2"][pairs.labels["colour2"][i]]
            relation = names["relation"][pairs.labels["relation"][i]]
            if flipped and relation in ("left of", "right of"):
                relation = OPPOSITE[relation]  # the picture is mirrored, so is the truth
            assert parse_relation(caption, c1, c2) == relation
            assert parse_relation(swapped, c1, c2) == OPPOSITE[relation]


def test_flip_follows_the_data_and_the_options(shapes, tokenizer):
    numbers = digits(split="test")
    tok = build_tokenizer(numbers)
    loader = DeviceLoader(numbers, tok, 64, augment=True)
    assert not loader.flip and not any(b.flipped.any() for b in loader)  # a mirrored 3 is not a 3
    assert not DeviceLoader(shapes, tokenizer, 10, augment=True, flip=False).flip
    plain = DeviceLoader(shapes, tokenizer, 10, augment=False, flip=True)
    assert not plain.flip and plain.crop_padding == 0  # augment=False turns all augmentation off


def test_bad_arguments_are_clear_errors(shapes, tokenizer):
    for size in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            DeviceLoader(shapes, tokenizer, size)
    with pytest.raises(ValueError, match=r"larger than the dataset \(300 images\)"):
        DeviceLoader(shapes, tokenizer, 301)
    assert len(DeviceLoader(shapes, tokenizer, 301, drop_last=False)) == 1
    with pytest.raises(ValueError, match="empty"):
        DeviceLoader(shapes.subset([]), tokenizer, 4)
    with pytest.raises(ValueError, match="model takes 64x64 images but the data 'shapes-train' has 32x32"):
        DeviceLoader(shapes, tokenizer, 4, expected_image_size=64)
    assert len(DeviceLoader(shapes, tokenizer, 4, expected_image_size=32)) == 75
    with pytest.raises(ValueError, match=r"to a \(\d+, L\) tensor"):
        DeviceLoader(shapes, lambda texts: torch.zeros(len(texts)), 4)
    with pytest.raises(ValueError, match="CaptionedImages"):
        DeviceLoader(shapes.images, tokenizer, 4)
    with pytest.raises(ValueError, match="1 or 3 values"):
        DeviceLoader(shapes, tokenizer, 4, mean=(0.5, 0.5))
    grey = CaptionedImages(torch.zeros(8, 1, 32, 32, dtype=torch.uint8), [["a dark picture"]] * 8)
    batch = next(iter(DeviceLoader(grey, tokenizer, 4, mean=(0.5,), std=(0.5,))))
    assert batch.images.shape == (4, 1, 32, 32) and (batch.images == -1).all()
