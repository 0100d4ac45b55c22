import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from clipedu.transformer import Transformer  # noqa: E402
from clipedu.viz.architecture import (  # noqa: E402
    encoder_decoder_mask,
    influence_matrix,
    mask_patterns,
    plot_architectures,
    plot_flow,
    plot_mask,
    plot_mask_patterns,
    plot_residual_blocks,
)


def test_the_three_patterns():
    p = mask_patterns(5)
    assert set(p) == {"encoder-only", "decoder-only", "encoder-decoder"}
    assert p["encoder-only"].all() and p["encoder-only"].shape == (5, 5)
    expected_causal = torch.tensor([[j <= i for j in range(5)] for i in range(5)])
    assert torch.equal(p["decoder-only"], expected_causal)
    assert p["encoder-decoder"].shape == (5, 5) and p["encoder-decoder"].dtype == torch.bool


def test_encoder_decoder_blocks():
    s, t = 3, 4
    m = encoder_decoder_mask(s, t)
    assert m.shape == (7, 7)
    assert m[:s, :s].all()  # encoder: bidirectional
    assert not m[:s, s:].any()  # the encoder never reads the target
    assert m[s:, :s].all()  # cross-attention: the decoder reads the whole source
    assert torch.equal(m[s:, s:], torch.ones(t, t, dtype=torch.bool).tril())  # decoder: causal
    assert torch.equal(mask_patterns(7, n_source=3)["encoder-decoder"], m)
    with pytest.raises(ValueError, match="at least one source"):
        encoder_decoder_mask(0, 2)
    with pytest.raises(ValueError, match="at least 2"):
        mask_patterns(1)


def test_influence_matrix_measures_the_mask():
    torch.manual_seed(0)
    stack = Transformer(16, 2, 2).eval()
    x = torch.randn(2, 6, 16)
    full = influence_matrix(stack, x)
    causal = influence_matrix(lambda t: stack(t, is_causal=True), x)
    assert full.shape == causal.shape == (6, 6)
    assert (full > 0).all()
    allowed = mask_patterns(6)["decoder-only"]
    assert torch.equal(causal > 0, allowed)  # the future has exactly zero influence
    assert (causal[~allowed] == 0).all()


def test_influence_matrix_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        influence_matrix(lambda t: t, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="must return"):
        influence_matrix(lambda t: t.mean(1), torch.zeros(1, 3, 4))


def test_plots_draw():
    for fig in (plot_mask_patterns(6), plot_architectures(), plot_residual_blocks(),
                plot_flow([("images", "(B, 3, 32, 32)"), ("patches", "(B, 16, D)")])):
        assert fig.axes
        plt.close(fig)
    ax = plot_mask(encoder_decoder_mask(2, 3), labels=list("abcde"), split=2)
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcde")
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="square"):
        plot_mask(torch.ones(2, 3))
    with pytest.raises(ValueError, match="labels"):
        plot_mask(torch.ones(2, 2), labels=["a"])


def test_confusion_matrix_plot():
    from clipedu.evaluate import confusion_matrix
    from clipedu.viz.classification import plot_confusion_matrix

    m = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    ax = plot_confusion_matrix(m, ["a", "b", "c"], title="t")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "1", "1", "1"]
    plt.close(ax.figure)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        plot_confusion_matrix(m, ["a", "b"])
