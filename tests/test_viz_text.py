import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from clipedu import preset  # noqa: E402
from clipedu.text import TextTransformer  # noqa: E402
from clipedu.tokenizer import WordTokenizer  # noqa: E402
from clipedu.viz.text import (  # noqa: E402
    causal_demo,
    causal_widget,
    plot_position_differences,
    position_differences,
    replace_word,
    text_outputs,
)

CAPTION = "a small red circle in the top left"


@pytest.fixture(scope="module")
def tokenizer():
    return WordTokenizer.build([CAPTION, "a big blue square at the bottom"], context_length=12)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = preset("tiny", text_width=32, text_layers=2, text_heads=2, vocab_size=tokenizer.vocab_size,
                 context_length=12).text
    return TextTransformer(cfg, embed_dim=16).eval()


def test_text_outputs_match_the_model(model, tokenizer):
    tokens = tokenizer([CAPTION])
    torch.testing.assert_close(text_outputs(model, tokens), model(tokens).tokens)
    assert not torch.allclose(text_outputs(model, tokens, causal=False), model(tokens).tokens)


@pytest.mark.parametrize("position", [1, 3, 6])
def test_a_change_never_moves_earlier_outputs(model, tokenizer, position):
    pair = replace_word(tokenizer, CAPTION, position, "blue")
    assert (pair[0] != pair[1]).nonzero().flatten().tolist() == [position]
    causal = position_differences(model, pair[0], pair[1])
    assert causal.shape == (12,)
    assert (causal[:position] == 0).all()  # exactly zero: the past cannot see the future
    assert (causal[position:] > 0).all()
    full = position_differences(model, pair[:1], pair[1:], causal=False)
    assert (full > 0).all()


def test_replace_word_checks_its_input(tokenizer):
    with pytest.raises(ValueError, match="1..8"):
        replace_word(tokenizer, CAPTION, 0, "blue")
    with pytest.raises(ValueError, match="1..8"):
        replace_word(tokenizer, CAPTION, 9, "blue")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        replace_word(tokenizer, CAPTION, 2, "hexagon")


def test_position_differences_checks_shapes(model):
    with pytest.raises(ValueError, match="same length"):
        position_differences(model, torch.tensor([1, 2]), torch.tensor([1, 5, 2]))


def test_plots_and_widget(model, tokenizer):
    ax, diffs = causal_demo(model, tokenizer, CAPTION, 4, "square")
    assert set(diffs) == {"causal (CLIP)", "no mask"}
    assert len(diffs["no mask"]) == 12  # 8 words + <sot> + <eot> + two pads
    assert (diffs["causal (CLIP)"][:4] == 0).all()
    assert ax.get_xticklabels()[4].get_text() == "circle->square"
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="labels"):
        plot_position_differences({"a": torch.zeros(3)}, ["x"])
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_position_differences({}, [])
    box = causal_widget(model, tokenizer, CAPTION, ["blue", "square"])
    assert box.children
    plt.close("all")
