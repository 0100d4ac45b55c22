"""ShapesWorld's caption grammar: many ways to say the same picture.

If every picture had one fixed caption per class, the text encoder could memorise strings instead
of reading them. So each attribute has synonyms ("circle", "disc"), the words come in different
orders ("a big red star at the top", "top: a big crimson star") and some words are optional.
Every caption still names every attribute of the picture, so it is always true and complete.

The tables below are the whole grammar; tests parse captions back with them.
"""

from __future__ import annotations

import random

from clipedu.tokenizer import split_words

COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
SIZES = ("small", "large")
POSITIONS = (
    "top left", "top centre", "top right",
    "centre left", "centre", "centre right",
    "bottom left", "bottom centre", "bottom right",
)  # row-major 3x3 grid: position index = 3 * row + column
RELATIONS = ("left of", "right of", "above", "below")  # of the first object to the second

COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "lemon", "golden"),
    "green": ("green", "emerald"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "azure", "cobalt"),
    "purple": ("purple", "violet"),
    "pink": ("pink", "magenta", "rose"),
}
SHAPE_WORDS = {
    "circle": ("circle", "disc", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "cross": ("cross", "plus"),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
    "ring": ("ring", "donut", "hoop"),
    "heart": ("heart",),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}

ROW_WORDS = (("top", "upper"), (), ("bottom", "lower"))  # the middle row has no word of its own
COLUMN_WORDS = (("left",), (), ("right",))
MIDDLE_WORDS = ("centre", "center", "middle")


def position_phrases(position: int) -> tuple[list[str], list[str]]:
    """Ways to say one grid cell: (after the object: "in the top left", before it: "top-left")."""
    row, col = divmod(position, 3)
    rows, cols = ROW_WORDS[row], COLUMN_WORDS[col]
    if rows and cols:  # a corner
        names = [f"{r} {c}" for r in rows for c in cols] + [f"{r}-{c}" for r in rows for c in cols]
        after = [f"in the {n}" for n in names] + [f"at the {r} {c}" for r in rows for c in cols]
        after += [f"in the {r}-{c} corner" for r in rows for c in cols]
    elif rows:  # top or bottom edge, middle column ("upper" needs a noun: "upper middle")
        names = [rows[0]] + [f"{r} {m}" for r in rows for m in MIDDLE_WORDS]
        after = [f"at the {rows[0]}"] + [f"in the {r} {m}" for r in rows for m in MIDDLE_WORDS]
    elif cols:  # left or right side, middle row
        names = list(cols) + [f"{m} {c}" for m in MIDDLE_WORDS for c in cols]
        after = [f"on the {c}" for c in cols] + [f"on the {c} side" for c in cols]
        after += [f"in the {m} {c}" for m in MIDDLE_WORDS for c in cols]
    else:  # the centre cell
        names = list(MIDDLE_WORDS)
        after = [f"in the {m}" for m in MIDDLE_WORDS]
    return after, names


_POSITION_PHRASES = [position_phrases(p) for p in range(len(POSITIONS))]


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def describe(rng: random.Random, colour: str, shape: str, size: str, article: bool = True) -> str:
    """One object: "a big crimson disc", "a small box coloured blue", "a red big circle"..."""
    c = rng.choice(COLOUR_WORDS[colour])
    s = rng.choice(SHAPE_WORDS[shape])
    z = rng.choice(SIZE_WORDS[size])
    form = rng.random()
    if form < 0.55:
        text = f"{z} {c} {s}"
    elif form < 0.7:
        text = f"{z}, {c} {s}"
    elif form < 0.85:
        text = f"{z} {s} {rng.choice(('coloured', 'colored', 'in'))} {c}"
    else:
        text = f"{c} {z} {s}"  # unusual order on purpose: meaning must not depend on word order
    return with_article(text) if article else text


# Sentence frames for one object: D is the object, A a place after it, P a place before it.
_SINGLE_FRAMES = (
    "{D} {A}",
    "{D} {A}",
    "{P}: {D}",
    "{A}, {D}",
    "there is {D} {A}",
    "a photo of {D} {A}",
    "{D}, {P}",
    "{D} {A} on a dark background",
    "{d} {A}",
    "{A} there is {D}",
)


def single_caption(rng: random.Random, colour: str, shape: str, size: str, position: int) -> str:
    """A caption naming the colour, shape, size and grid position of one object."""
    frame = rng.choice(_SINGLE_FRAMES)
    after, before = _POSITION_PHRASES[position]
    if "{d}" in frame:
        return frame.format(d=describe(rng, colour, shape, size, article=False), A=rng.choice(after))
    return frame.format(D=describe(rng, colour, shape, size), A=rng.choice(after), P=rng.choice(before))


# Frames for two objects where X is left of Y (or X above Y). Swapping which object fills X and
# which fills Y gives a caption with the same words that is false for the picture.
_LEFT_FRAMES = (
    "{X} to the left of {Y}",
    "{X} left of {Y}",
    "{X} is to the left of {Y}",
    "{Y} to the right of {X}",
    "{Y} right of {X}",
    "{X} on the left and {Y} on the right",
)
_ABOVE_FRAMES = (
    "{X} above {Y}",
    "{X} is above {Y}",
    "{Y} below {X}",
    "{X} over {Y}",
    "{Y} under {X}",
    "{X} at the top and {Y} at the bottom",
)


def pair_caption(
    rng: random.Random, first: tuple[str, str, str], second: tuple[str, str, str], relation: str
) -> tuple[str, str]:
    """(caption, swapped caption) for two objects given as (colour, shape, size).

    ``relation`` is where the first object is relative to the second. The swapped caption uses
    the same frame with the two descriptions exchanged: "a red circle left of a blue square"
    becomes "a blue square left of a red circle".
    """
    a = describe(rng, *first)
    b = describe(rng, *second)
    if relation == "left of":
        frame, x, y = rng.choice(_LEFT_FRAMES), a, b
    elif relation == "right of":
        frame, x, y = rng.choice(_LEFT_FRAMES), b, a
    elif relation == "above":
        frame, x, y = rng.choice(_ABOVE_FRAMES), a, b
    elif relation == "below":
        frame, x, y = rng.choice(_ABOVE_FRAMES), b, a
    else:
        raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
    return frame.format(X=x, Y=y), frame.format(X=y, Y=x)


# --- reading a caption back ---------------------------------------------------------------------
_SYNONYM_OF = {
    attribute: {word: value for value, words in table.items() for word in words}
    for attribute, table in (("colour", COLOUR_WORDS), ("shape", SHAPE_WORDS), ("size", SIZE_WORDS))
}
_ROW_OF = {word: row for row, words in enumerate(ROW_WORDS) for word in words}
_COLUMN_OF = {word: col for col, words in enumerate(COLUMN_WORDS) for word in words}


def parse_caption(text: str) -> dict[str, str | None]:
    """The colour, shape, size and position a one-object caption names, read with the tables above.

    >>> parse_caption("top-left: a big crimson disc")
    {'colour': 'red', 'shape': 'circle', 'size': 'large', 'position': 'top left'}

    Each value is the attribute's canonical name (``COLOURS``, ``SIZES``, ``POSITIONS``, the shape
    names), or None when the caption names none, or names two that disagree ("a red blue circle"),
    so a model's caption counts as right only when it says one thing and that thing is true. A
    position needs at least one place word ("top", "left", "middle", ...); "top" alone is the top
    centre, "left" alone the centre left. Written for one-object captions: in two-object captions
    "left of" is a relation, not a place.
    """
    words = split_words(text)
    found: dict[str, str | None] = {}
    for attribute, synonym_of in _SYNONYM_OF.items():
        named = {synonym_of[w] for w in words if w in synonym_of}
        found[attribute] = named.pop() if len(named) == 1 else None
    rows = {_ROW_OF[w] for w in words if w in _ROW_OF}
    cols = {_COLUMN_OF[w] for w in words if w in _COLUMN_OF}
    says_middle = any(w in MIDDLE_WORDS for w in words)
    if len(rows) > 1 or len(cols) > 1 or not (rows or cols or says_middle):
        found["position"] = None
    else:
        row, col = (rows.pop() if rows else 1), (cols.pop() if cols else 1)
        found["position"] = POSITIONS[3 * row + col]
    return found
