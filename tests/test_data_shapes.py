"""ShapesWorld: determinism, the compositional split, the caption grammar, and flips."""

import random
import re

import pytest
import torch

from clipedu.data import ShapesWorld, mirror_caption
from clipedu.data.grammar import COLOUR_WORDS, SHAPE_WORDS, SIZE_WORDS, position_phrases, single_caption


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: one thread is as fast, and never waits on a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def words(caption):
    return re.findall(r"[a-z]+", caption.lower())


def parse_single(caption):
    """Read colour, shape, size and grid position back from a one-object caption."""
    ws = set(words(caption))
    found = {}
    for attribute, table in (("colour", COLOUR_WORDS), ("shape", SHAPE_WORDS), ("size", SIZE_WORDS)):
        hits = {value for value, synonyms in table.items() if ws & set(synonyms)}
        assert len(hits) == 1, f"{caption!r} names {attribute} {hits}"
        found[attribute] = hits.pop()
    row = 0 if ws & {"top", "upper"} else 2 if ws & {"bottom", "lower"} else 1
    col = 0 if "left" in ws else 2 if "right" in ws else 1
    found["position"] = 3 * row + col
    return found


def parse_relation(caption, colour1, colour2):
    """Where the object coloured ``colour1`` is relative to the one coloured ``colour2``."""
    ws = words(caption)
    text = " ".join(ws)
    first = min(i for i, w in enumerate(ws) if w in COLOUR_WORDS[colour1])
    second = min(i for i, w in enumerate(ws) if w in COLOUR_WORDS[colour2])
    if "left of" in text:
        rel = "left of"
    elif "right of" in text:
        rel = "right of"
    elif re.search(r"\b(above|over)\b", text):
        rel = "above"
    elif re.search(r"\b(below|under)\b", text):
        rel = "below"
    elif "on the left" in text:
        rel = "left of" if text.index("on the left") < text.index("on the right") else "right of"
    elif "at the top" in text:
        rel = "above" if text.index("at the top") < text.index("at the bottom") else "below"
    else:
        raise AssertionError(f"no relation in {caption!r}")
    return rel if first < second else OPPOSITE[rel]  # rel is about whichever was named first


def centroid_cell(image):
    """Grid cell (3 * row + col) of the bright object in a (3, S, S) uint8 image."""
    size = image.shape[-1]
    bright = image.max(dim=0).values > 120  # objects are saturated colours, the background is dark grey
    ys, xs = bright.nonzero(as_tuple=True)
    centres = torch.tensor([0.25, 0.5, 0.75]) * size
    col = (xs.float().mean() + 0.5 - centres).abs().argmin()
    row = (ys.float().mean() + 0.5 - centres).abs().argmin()
    return int(3 * row + col)


@pytest.fixture(scope="module")
def train():
    return ShapesWorld(seed=0).generate(3000, "train")


def test_same_seed_same_data_and_different_streams(train):
    again = ShapesWorld(seed=0).generate(3000, "train")
    assert torch.equal(train.images, again.images) and train.captions == again.captions
    for key in train.labels:
        assert torch.equal(train.labels[key], again.labels[key])
    other_seed = ShapesWorld(seed=1).generate(3000, "train")
    assert not torch.equal(train.images, other_seed.images)
    # Train and test with the same seed are different draws: no picture appears in both.
    test = ShapesWorld(seed=0).generate(500, "test")
    train_rows = {bytes(img.flatten().numpy()) for img in train.images}
    assert not any(bytes(img.flatten().numpy()) in train_rows for img in test.images)
    assert train.images.dtype == torch.uint8 and train.images.shape == (3000, 3, 32, 32)


def test_compositional_split_keeps_heldout_pairs_out(train):
    world = ShapesWorld(seed=0)
    held = {world.combination_index(c, s) for c, s in world.heldout_pairs}
    assert len(held) == 8
    assert held.isdisjoint(train.labels["colour_shape"].tolist())
    assert held.isdisjoint(world.generate(1000, "test").labels["colour_shape"].tolist())
    heldout = world.generate(400, "heldout")
    assert set(heldout.labels["colour_shape"].tolist()) == held  # only them, and all of them
    assert len(set(train.labels["colour_shape"].tolist())) == 64 - 8  # every other pair is trained
    # Every colour and every shape on its own is still seen in training.
    assert set(train.labels["colour"].tolist()) == set(range(8))
    assert set(train.labels["shape"].tolist()) == set(range(8))


def test_custom_holdout_and_bad_settings():
    world = ShapesWorld(holdout=[("blue", "star")])
    assert world.generate(50, "heldout").class_names["colour_shape"][world.combination_index("blue", "star")] \
        == "blue star"
    assert set(world.generate(50, "heldout").labels["colour_shape"].tolist()) == {
        world.combination_index("blue", "star")}
    with pytest.raises(ValueError, match="colour in"):
        ShapesWorld(holdout=[("mauve", "star")])
    with pytest.raises(ValueError, match="twice"):
        ShapesWorld(holdout=[("red", "star"), ("red", "star")])
    with pytest.raises(ValueError, match="holdout is empty"):
        ShapesWorld(holdout=[]).generate(10, "heldout")
    with pytest.raises(ValueError, match="split must be one of"):
        ShapesWorld().generate(10, "validation")
    with pytest.raises(ValueError, match="num_objects"):
        ShapesWorld(num_objects=3)
    with pytest.raises(ValueError, match="n must be a positive int"):
        ShapesWorld().generate(0)


def test_every_caption_matches_its_labels(train):
    names = train.class_names
    for i in range(len(train)):
        truth = {k: names[k][train.labels[k][i]] for k in ("colour", "shape", "size")}
        truth["position"] = int(train.labels["position"][i])
        for caption in train.captions[i]:
            assert parse_single(caption) == truth, caption


def test_grammar_covers_every_value_and_synonym(train):
    seen = {w for c in train.all_captions() for w in words(c)}
    for table in (COLOUR_WORDS, SHAPE_WORDS, SIZE_WORDS):
        for value, synonyms in table.items():
            assert set(synonyms) <= seen, (value, set(synonyms) - seen)
    positions = {parse_single(c)["position"] for c in train.all_captions()}
    assert positions == set(range(9))
    # Real variety: many distinct sentences, several per image, varying word order.
    assert len(set(train.all_captions())) > 5000
    assert all(len(set(caps)) >= 2 for caps in train.captions[:200])
    assert any(c.startswith("top") or c.startswith("upper") for c in train.all_captions())


def test_synonyms_are_unambiguous():
    every = [w for table in (COLOUR_WORDS, SHAPE_WORDS, SIZE_WORDS) for syn in table.values() for w in syn]
    assert len(every) == len(set(every))
    assert not set(every) & {"top", "upper", "bottom", "lower", "left", "right", "centre", "middle"}


def test_position_phrases_name_the_right_cell():
    expected = {0: ("top", "left"), 2: ("top", "right"), 4: (None, None), 6: ("bottom", "left"),
                7: ("bottom", None), 5: (None, "right")}
    for position, (vertical, horizontal) in expected.items():
        after, before = position_phrases(position)
        for phrase in after + before:
            ws = set(words(phrase))
            assert (horizontal in ws) if horizontal else not ws & {"left", "right"}, phrase
            if vertical == "top":
                assert ws & {"top", "upper"}, phrase
            elif vertical == "bottom":
                assert ws & {"bottom", "lower"}, phrase
            else:
                assert not ws & {"top", "upper", "bottom", "lower"}, phrase
    caption = single_caption(random.Random(3), "red", "circle", "large", 8)
    assert parse_single(caption) == {"colour": "red", "shape": "circle", "size": "large", "position": 8}


def test_rendered_object_sits_in_its_labelled_cell(train):
    cells = torch.tensor([centroid_cell(img) for img in train.images[:300]])
    assert torch.equal(cells, train.labels["position"][:300])
    small, large = train.labels["size"][:300] == 0, train.labels["size"][:300] == 1
    area = (train.images[:300].max(dim=1).values > 120).flatten(1).sum(1).float()
    assert area[large].mean() > 2 * area[small].mean()  # the two sizes are clearly different


def test_flipped_picture_matches_mirrored_caption(train):
    for i in range(200):
        flipped = train.images[i].flip(-1)  # mirror left to right
        for caption in train.captions[i][:2]:
            assert parse_single(mirror_caption(caption))["position"] == centroid_cell(flipped), caption


def test_colours_are_distinct_in_the_pixels(train):
    bright = train.images[:600].max(dim=1, keepdim=True).values > 120  # (n, 1, S, S)
    mean_rgb = (train.images[:600].float() * bright).sum((2, 3)) / bright.sum((2, 3))  # (n, 3)
    colour = train.labels["colour"][:600]
    centres = torch.stack([mean_rgb[colour == c].mean(0) for c in range(8)])
    gaps = torch.cdist(centres, centres) + torch.eye(8) * 1e3
    assert gaps.min() > 60  # every pair of colours is far apart in RGB


def test_two_objects_relations_and_swapped_captions():
    world = ShapesWorld(num_objects=2, seed=0, captions_per_image=4)
    data = world.generate(600)
    names = data.class_names
    assert data.hard_negatives is not None and set(data.labels) >= {"colour2", "shape2", "relation"}
    assert (data.labels["colour"] != data.labels["colour2"]).all()
    assert (data.labels["shape"] != data.labels["shape2"]).all()
    for i in range(len(data)):
        c1, c2 = names["colour"][data.labels["colour"][i]], names["colour2"][data.labels["colour2"][i]]
        relation = names["relation"][data.labels["relation"][i]]
        # The positions agree with the relation.
        (r1, k1), (r2, k2) = divmod(int(data.labels["position"][i]), 3), divmod(int(data.labels["position2"][i]), 3)
        expected = {"left of": k1 < k2 and r1 == r2, "right of": k1 > k2 and r1 == r2,
                    "above": r1 < r2 and k1 == k2, "below": r1 > r2 and k1 == k2}
        assert expected[relation]
        for caption, swapped in zip(data.captions[i], data.hard_negatives[i]):
            assert parse_relation(caption, c1, c2) == relation, caption
            assert parse_relation(swapped, c1, c2) == OPPOSITE[relation], swapped
            assert sorted(words(caption)) == sorted(words(swapped)) and caption != swapped
    # Both relation axes and all four relations occur.
    assert set(data.labels["relation"].tolist()) == {0, 1, 2, 3}


def test_two_objects_heldout_split_uses_only_heldout_pairs():
    world = ShapesWorld(num_objects=2)
    data = world.generate(200, "heldout")
    held = {world.combination_index(c, s) for c, s in world.heldout_pairs}
    for suffix in ("", "2"):
        pairs = data.labels["colour" + suffix] * 8 + data.labels["shape" + suffix]
        assert set(pairs.tolist()) <= held


def test_64_pixel_images_and_zero_shot_prompts():
    world = ShapesWorld(image_size=64)
    data = world.generate(100)
    assert data.images.shape == (100, 3, 64, 64)
    cells = torch.tensor([centroid_cell(img) for img in data.images])
    assert torch.equal(cells, data.labels["position"])
    prompts, pairs = world.combination_prompts()
    assert len(prompts) == 64 and prompts[world.combination_index("red", "star")] == "the red star"
    assert pairs[world.combination_index("red", "star")] == ("red", "star")
    assert set(data.templates) == {"shape", "colour", "size", "position", "colour_shape"}
    # Every zero-shot prompt uses the captions' own words.
    vocabulary = {w for c in world.generate(3000).all_captions() for w in words(c)}
    for attribute in data.templates:
        for prompts in data.prompts(attribute):
            for prompt in prompts:
                assert set(words(prompt)) <= vocabulary, prompt


def test_geometry_keeps_the_same_pictures_and_says_where_each_object_is():
    world = ShapesWorld(seed=3)
    plain = world.generate(64, "test")
    kept = world.generate(64, "test", geometry=True)
    assert torch.equal(plain.images, kept.images) and "masks" not in plain.info
    masks, boxes = kept.info["masks"], kept.info["boxes"]
    size = world.image_size
    assert masks.shape == (64, 1, size, size) and boxes.shape == (64, 1, 3)
    assert masks.min() >= 0 and masks.max() <= 1 and (masks.flatten(1).sum(1) > 1).all()
    # the box's centre lies in the grid cell the caption names, and the mask lies within its radius
    row, col = kept.labels["position"] // 3, kept.labels["position"] % 3
    cx, cy, r = boxes[:, 0].unbind(-1)
    assert torch.equal((cx * 3 // size).long(), col) and torch.equal((cy * 3 // size).long(), row)
    pixel = torch.arange(size) + 0.5
    dx, dy = pixel.view(1, 1, -1) - cx.view(-1, 1, 1), pixel.view(1, -1, 1) - cy.view(-1, 1, 1)
    distance = (dx**2 + dy**2).sqrt()
    assert (masks[:, 0][distance > 1.5 * r.view(-1, 1, 1) + 1] == 0).all()
    # the object's colour is painted where its mask is full
    full = masks[:, 0] > 0.99
    assert (kept.images.float().amax(1)[full] > 100).float().mean() > 0.95
    two = ShapesWorld(seed=3, num_objects=2).generate(16, "test", geometry=True)
    assert two.info["masks"].shape == (16, 2, size, size) and two.info["boxes"].shape == (16, 2, 3)
