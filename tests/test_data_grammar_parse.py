"""parse_caption reads back exactly what ShapesWorld's grammar wrote, and refuses what is unclear."""

import random

import pytest

from clipedu.data import ShapesWorld, mirror_caption
from clipedu.data.grammar import COLOURS, POSITIONS, SHAPE_WORDS, SIZES, parse_caption, single_caption


def test_round_trip_over_every_attribute_combination():
    rng = random.Random(0)
    for colour in COLOURS:
        for shape in SHAPE_WORDS:
            for size in SIZES:
                for position in range(len(POSITIONS)):
                    for _ in range(3):
                        caption = single_caption(rng, colour, shape, size, position)
                        expected = {"colour": colour, "shape": shape, "size": size, "position": POSITIONS[position]}
                        assert parse_caption(caption) == expected, caption


def test_round_trip_on_generated_data_and_mirrored_captions():
    data = ShapesWorld().generate(200, "train")
    mirrored_column = {0: 2, 1: 1, 2: 0}
    for i, captions in enumerate(data.captions):
        truth = {k: data.class_names[k][int(data.labels[k][i])] for k in ("colour", "shape", "size", "position")}
        for caption in captions:
            assert parse_caption(caption) == truth, caption
        row, col = divmod(int(data.labels["position"][i]), 3)
        flipped = parse_caption(mirror_caption(captions[0]))
        assert flipped["position"] == POSITIONS[3 * row + mirrored_column[col]]


@pytest.mark.parametrize(
    "caption, attribute, expected",
    [
        ("a small red circle", "position", None),  # no place word at all
        ("a shape in the top left", "colour", None),  # no colour
        ("a red blue circle in the middle", "colour", None),  # two colours disagree
        ("a crimson scarlet circle in the middle", "colour", "red"),  # two synonyms agree
        ("a circle at the top and at the bottom", "position", None),
        ("a lemon box on the left", "position", "centre left"),
        ("a lemon box at the top", "position", "top centre"),
        ("a tiny hoop in the center", "shape", "ring"),
        ("", "size", None),
    ],
)
def test_missing_and_conflicting_words_give_none(caption, attribute, expected):
    assert parse_caption(caption)[attribute] == expected


def test_bad_input():
    with pytest.raises(ValueError, match="expected a str"):
        parse_caption(None)
