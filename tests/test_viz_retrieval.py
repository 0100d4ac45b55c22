"""The pure functions behind notebook 07's retrieval grids, and the plots drawn from them."""

import matplotlib
import pytest
import torch
import torch.nn.functional as F

from clipedu.evaluate import retrieval_recall, swap_margins
from clipedu.viz import retrieval as vr

matplotlib.use("Agg")


def _embeds(n=12, e=8, seed=0, noise=0.6):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, e, generator=g), dim=-1)
    txt = F.normalize(img + noise * torch.randn(n, e, generator=g), dim=-1)
    return img, txt


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("k", [1, 3, 12])
def test_top_matches_are_the_brute_force_ranking(k):
    img, txt = _embeds()
    m = vr.top_matches(txt, img, k=k)  # text -> image
    assert m.indices.shape == (12, k) and m.scores.shape == (12, k)
    sims = txt @ img.t()
    for q in range(12):
        expected = sorted(range(12), key=lambda j: -sims[q, j].item())[:k]
        assert m.indices[q].tolist() == expected
        torch.testing.assert_close(m.scores[q], sims[q, expected])
    assert (m.scores[:, :-1] >= m.scores[:, 1:]).all()  # best first


def test_k_beyond_the_gallery_returns_everything_and_ties_keep_index_order():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # items 0 and 2 tie
    m = vr.top_matches(torch.tensor([[1.0, 0.0]]), gallery, k=10)
    assert m.indices.tolist() == [[0, 2, 1]]
    assert m.scores.tolist() == [[1.0, 1.0, 0.0]]


def test_top_matches_rejects_bad_input():
    img, txt = _embeds()
    with pytest.raises(ValueError, match="same embedding width"):
        vr.top_matches(txt, img[:, :4])
    with pytest.raises(ValueError, match="k must be a positive int"):
        vr.top_matches(txt, img, k=0)
    with pytest.raises(ValueError, match=r"shape \(N, E\)"):
        vr.top_matches(txt[0], img)


def test_marks_tell_own_relevant_and_wrong_apart():
    matches = vr.Matches(torch.tensor([[2, 0, 1], [1, 2, 0]]), torch.zeros(2, 3))
    relevant = torch.tensor([[True, False, False], [False, False, True]])
    assert vr.match_marks(matches, own=[2, 1], relevant=relevant) == [
        ["own", "relevant", "wrong"],
        ["own", "relevant", "wrong"],
    ]
    assert vr.match_marks(matches) == [["wrong"] * 3] * 2
    with pytest.raises(ValueError, match="one gallery index per query"):
        vr.match_marks(matches, own=[0])
    with pytest.raises(ValueError, match="booleans"):
        vr.match_marks(matches, relevant=relevant.int())


def test_recall_at_one_from_top_matches_equals_the_evaluation_code():
    img, txt = _embeds(n=20, seed=3, noise=1.0)
    owner = torch.arange(20)
    curve = vr.recall_curve(img, txt, owner, ks=[1, 5])
    reference = retrieval_recall(img, txt, owner, ks=[1, 5])
    assert curve["image_to_text"] == [reference["image_to_text_R@1"], reference["image_to_text_R@5"]]
    by_hand = (vr.top_matches(txt, img, k=1).indices[:, 0] == owner).float().mean().item()
    assert curve["text_to_image"][0] == pytest.approx(by_hand)
    assert curve["image_to_text"][0] <= curve["image_to_text"][1]
    with pytest.raises(ValueError, match="positive ints"):
        vr.recall_curve(img, txt, owner, ks=[0])


def test_swap_margins_give_the_swapped_caption_accuracy():
    img, true = _embeds(n=30, seed=1, noise=0.5)
    _, swapped = _embeds(n=30, seed=2, noise=0.5)
    margins = swap_margins(img, true, swapped)
    assert margins.shape == (30,)
    expected = ((img * true).sum(1) > (img * swapped).sum(1)).float().mean().item()
    assert (margins > 0).float().mean().item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="shape of image_embeds"):
        swap_margins(img, true[:5], swapped)


@pytest.mark.parametrize("k", [1, 4])
def test_plots_draw_a_panel_per_match(k):
    import matplotlib.pyplot as plt

    img, txt = _embeds(n=10)
    images = _images(10)
    captions = [f"caption number {j} with some words to wrap around the axis" for j in range(10)]
    t2i = vr.top_matches(txt[:3], img, k=k)
    fig = vr.plot_text_to_images(images, captions[:3], t2i, own=[0, 1, 2], relevant=torch.eye(3, 10, dtype=torch.bool))
    assert len(fig.axes) == 3 * (k + 1)
    plt.close(fig)
    i2t = vr.top_matches(img[:2], txt, k=k)
    fig = vr.plot_image_to_texts(images[:2], captions, i2t, own=[0, 1])
    assert len(fig.axes) == 2 * 2
    plt.close(fig)
    with pytest.raises(ValueError, match="query captions"):
        vr.plot_text_to_images(images, captions[:2], t2i)
    with pytest.raises(ValueError, match="uint8"):
        vr.plot_text_to_images(images.float(), captions[:3], t2i)


def test_curve_and_margin_plots():
    import matplotlib.pyplot as plt

    img, txt = _embeds(n=16)
    ks = [1, 2, 5]
    ax = vr.plot_recall_curve(vr.recall_curve(img, txt, torch.arange(16), ks=ks), ks, label="model")
    assert len(ax.lines) == 2
    plt.close(ax.figure)
    margins = {"plain": torch.randn(50), "hard negatives": torch.randn(50) + 1}
    ax = vr.plot_swap_margins(margins)
    assert len(ax.get_legend().get_texts()) == 2
    plt.close(ax.figure)
    fig = vr.plot_swapped_examples(_images(3), ["a", "b", "c"], ["x", "y", "z"],
                                   {k: v[:3] for k, v in margins.items()}, cols=2)
    assert len(fig.axes) == 4
    plt.close(fig)
    with pytest.raises(ValueError, match="at least one model"):
        vr.plot_swap_margins({})
    with pytest.raises(ValueError, match="3 values for 2 values of K"):
        vr.plot_recall_curve({"image_to_text": [0.1, 0.2, 0.3]}, [1, 2])
