"""The pure functions behind notebook 05's widgets, called with several slider values."""

import math
import re

import matplotlib
import pytest
import torch
import torch.nn.functional as F

from clipedu.losses import clip_loss
from clipedu.viz import contrastive as vc

matplotlib.use("Agg")

TAUS = [1e-3, 0.01, 0.07, 0.3, 1.0, 3.0]


def _embeds(b=6, e=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, e, generator=g), dim=-1)
    txt = F.normalize(img + 0.7 * torch.randn(b, e, generator=g), dim=-1)
    return img, txt


def _sims(b=6, seed=0):
    img, txt = _embeds(b, seed=seed)
    return img @ txt.t()  # (B, B)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("row", [0, 3, 5])
def test_probabilities_sum_to_one_and_loss_is_minus_log_of_the_positive(tau, row):
    view = vc.temperature_view(_sims(), row, tau)
    assert view["probs"].shape == (6,)
    assert abs(view["probs"].sum().item() - 1) < 1e-5
    assert (view["probs"] >= 0).all()
    expected = F.cross_entropy((_sims()[row] / tau).unsqueeze(0).double(), torch.tensor([row]).long()).item()
    assert view["loss"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    if view["p_positive"] > 1e-300:
        assert view["loss"] == pytest.approx(-math.log(view["p_positive"]), rel=1e-5, abs=1e-9)
    assert view["scale"] == pytest.approx(1 / tau)


@pytest.mark.parametrize("tau", [0.01, 0.07, 0.5])
def test_row_losses_average_to_clip_loss(tau):
    img, txt = _embeds()
    sims = img @ txt.t()
    image_to_text = sum(vc.temperature_view(sims, i, tau)["loss"] for i in range(6)) / 6
    text_to_image = sum(vc.temperature_view(sims.t(), j, tau)["loss"] for j in range(6)) / 6
    expected = clip_loss(img, txt, 1 / tau).item()
    assert (image_to_text + text_to_image) / 2 == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("row", [0, 4])
def test_gradients_match_autograd(tau, row):
    sims = _sims().double()
    s = sims[row].clone().requires_grad_()
    loss = F.cross_entropy((s / tau).unsqueeze(0), torch.tensor([row]))
    (grad_sim,) = torch.autograd.grad(loss, s)
    view = vc.temperature_view(sims, row, tau)
    torch.testing.assert_close(view["grad_similarities"].double(), grad_sim, rtol=1e-4, atol=1e-6)
    onehot = F.one_hot(torch.tensor(row), 6).float()
    torch.testing.assert_close(view["grad_logits"], view["probs"] - onehot)  # closed form p - y
    assert view["grad_positive"] == pytest.approx(grad_sim[row].item(), rel=1e-4, abs=1e-6)
    others = [j for j in range(6) if j != row]
    assert view["negative_index"] == others
    torch.testing.assert_close(view["grad_negatives"].double(), grad_sim[others], rtol=1e-4, atol=1e-6)
    assert view["grad_positive"] <= 0 and (view["grad_negatives"] >= 0).all()
    # the gradient on a row sums to zero: what the positive gains, the negatives lose
    assert abs(view["grad_logits"].sum().item()) < 1e-5


@pytest.mark.parametrize("tau", [0.02, 0.07, 1.0])
def test_gradient_on_the_logit_scale_matches_autograd(tau):
    sims = _sims().double()
    log_scale = torch.tensor(math.log(1 / tau), dtype=torch.float64, requires_grad=True)
    loss = F.cross_entropy((log_scale.exp() * sims[2]).unsqueeze(0), torch.tensor([2]))
    (grad,) = torch.autograd.grad(loss, log_scale)
    assert vc.temperature_view(sims, 2, tau)["grad_logit_scale"] == pytest.approx(grad.item(), rel=1e-5, abs=1e-8)


def test_low_temperature_is_one_hot_and_high_temperature_is_uniform():
    sims = _sims()
    for row in range(6):
        cold = vc.temperature_view(sims, row, 1e-4)
        winner = int(sims[row].argmax())
        assert cold["probs"][winner].item() == pytest.approx(1.0, abs=1e-6)
        assert cold["effective_candidates"] == pytest.approx(1.0, abs=1e-3)
        hot = vc.temperature_view(sims, row, 1e4)
        torch.testing.assert_close(hot["probs"], torch.full((6,), 1 / 6), atol=1e-3, rtol=0)
        assert hot["loss"] == pytest.approx(math.log(6), abs=1e-3)
        assert hot["effective_candidates"] == pytest.approx(6, abs=1e-2)
    # a row whose positive is its largest entry: colder means a smaller loss
    row = next(i for i in range(6) if int(sims[i].argmax()) == i)
    losses = [vc.temperature_view(sims, row, t)["loss"] for t in (1.0, 0.3, 0.07, 0.01)]
    assert losses == sorted(losses, reverse=True)


def test_positives_spread_the_target_like_clip_loss_positive_mask():
    img, txt = _embeds()
    mask = torch.eye(6, dtype=torch.bool)
    mask[0, 3] = mask[3, 0] = True
    sims, tau = img @ txt.t(), 0.1
    view = vc.temperature_view(sims, 0, tau, positives=mask[0])
    torch.testing.assert_close(view["target"], torch.tensor([0.5, 0, 0, 0.5, 0, 0]))
    assert vc.temperature_view(sims, 0, tau, positives=[0, 3])["loss"] == pytest.approx(view["loss"])
    # the image-to-text half of clip_loss with the mask is the mean of these row losses
    rows = sum(vc.temperature_view(sims, i, tau, positives=mask[i])["loss"] for i in range(6)) / 6
    cols = sum(vc.temperature_view(sims.t(), j, tau, positives=mask.t()[j])["loss"] for j in range(6)) / 6
    assert (rows + cols) / 2 == pytest.approx(clip_loss(img, txt, 1 / tau, positive_mask=mask).item(), rel=1e-5)
    # the duplicate is no longer pushed down once its target share exceeds its probability
    plain = vc.temperature_view(sims, 0, tau)
    assert plain["grad_similarities"][3] > 0
    assert view["grad_similarities"][3] < plain["grad_similarities"][3]


def test_extra_columns_are_more_negatives():
    g = torch.Generator().manual_seed(3)
    sims = torch.rand(4, 9, generator=g) * 2 - 1
    view = vc.temperature_view(sims, 1, 0.1)
    assert view["probs"].shape == (9,) and len(view["grad_negatives"]) == 8


@pytest.mark.parametrize(
    "args, words",
    [
        ((torch.zeros(3), 0, 0.1), "shape (B, M)"),
        ((torch.zeros(3, 3), 3, 0.1), "row must be an int in [0, 3)"),
        ((torch.zeros(3, 3), 0, 0.0), "positive number"),
        ((torch.zeros(3, 3), 0, -1.0), "positive number"),
        ((torch.zeros(3, 2), 2, 0.1), "has no positive"),
    ],
)
def test_bad_input_is_a_clear_error(args, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        vc.temperature_view(*args)


def test_positives_must_include_the_row():
    with pytest.raises(ValueError, match="own text"):
        vc.temperature_view(torch.zeros(3, 3), 0, 0.1, positives=[1, 2])


# --- rankings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 6, 50])
def test_rank_texts_and_images_are_sorted_top_k(k):
    img, txt = _embeds()
    sims = img @ txt.t()
    for i in range(6):
        r = vc.rank_texts(img, txt, i, k)
        assert len(r.indices) == min(k, 6)
        assert r.scores == sorted(r.scores, reverse=True)
        assert r.indices[0] == int(sims[i].argmax())
        torch.testing.assert_close(torch.tensor(r.scores), sims[i, r.indices])
        c = vc.rank_images(img, txt, i, k)
        assert c.indices[0] == int(sims[:, i].argmax())
        torch.testing.assert_close(torch.tensor(c.scores), sims[c.indices, i])


def test_identical_embeddings_rank_their_partner_first():
    e = F.normalize(torch.randn(10, 8), dim=-1)
    for i in range(10):
        assert vc.rank_texts(e, e, i, 1).indices == [i]
        assert vc.rank_images(e, e, i, 1).indices == [i]


def test_rank_rejects_bad_indices_and_shapes():
    img, txt = _embeds()
    with pytest.raises(ValueError, match="image index"):
        vc.rank_texts(img, txt, 6)
    with pytest.raises(ValueError, match="text index"):
        vc.rank_images(img, txt, -1)
    with pytest.raises(ValueError, match="same width"):
        vc.rank_texts(img, txt[:, :4], 0)
    with pytest.raises(ValueError, match="k must be"):
        vc.rank_texts(img, txt, 0, 0)


def test_ranking_html_marks_own_and_fitting_captions_and_escapes():
    ranking = vc.Ranking([2, 0, 1], [0.9, 0.5, -0.1])
    text = vc.ranking_html(ranking, ["a <b>", "b", "c"], own=2, fitting=[0])
    assert text.index("&#9733;") < text.index("&#10003;")  # own first (rank 1), then the fitting one
    assert "a &lt;b&gt;" in text and "+0.900" in text and "-0.100" in text


# --- plots and widgets draw their default state --------------------------------------------------
def test_plots_return_figures():
    import matplotlib.pyplot as plt

    img, txt = _embeds()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    ax = vc.plot_similarity_matrix(img @ txt.t(), captions=[f"caption {j}" for j in range(6)], images=images)
    assert len(ax.texts) == 36
    assert len(ax.patches) == 6  # the diagonal framed
    mask = torch.eye(6, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = True
    assert len(vc.plot_similarity_matrix(img @ txt.t(), positives=mask).patches) == 8
    with pytest.raises(ValueError, match="positives"):
        vc.plot_similarity_matrix(img @ txt.t(), positives=mask[:3])
    fig = vc.plot_temperature_view(vc.temperature_view(img @ txt.t(), 1, 0.07))
    assert len(fig.axes) == 3
    fig2 = vc.plot_image_ranking(images, vc.rank_images(img, txt, 0, 4), own=0)
    assert len(fig2.axes) == 4
    assert vc.figure_png(fig2)[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close("all")


def _find(widget, cls):
    found = []
    if cls in getattr(widget, "_dom_classes", ()):
        found.append(widget)
    for child in getattr(widget, "children", ()):
        found += _find(child, cls)
    return found


def test_temperature_explorer_draws_and_updates():
    pytest.importorskip("ipywidgets")
    img, txt = _embeds()
    w = vc.temperature_explorer(img @ txt.t(), captions=[f"caption {j}" for j in range(6)])
    (slider,) = _find(w, "clipedu-tau")
    (row,) = _find(w, "clipedu-row")
    (loss,) = _find(w, "clipedu-loss")
    (readout,) = _find(w, "clipedu-readout")
    (plot,) = _find(w, "clipedu-plot")
    assert slider.description == "tau" and row.description == "row"
    assert not slider.continuous_update
    assert "loss" in loss.value
    before = (loss.value, readout.value)
    expected = vc.temperature_view(img @ txt.t(), 0, 0.5)["loss"]
    slider.value = 0.5
    assert (loss.value, readout.value) != before
    assert f"{expected:.4f}" in loss.value
    row.value = 3
    assert "row 3" in loss.value
    assert plot is not None


def test_similarity_explorer_draws_and_updates():
    pytest.importorskip("ipywidgets")
    img, txt = _embeds()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    captions = [f"caption {j}" for j in range(6)]
    w = vc.similarity_explorer(images, captions, img, txt, k=3)
    (slider,) = _find(w, "clipedu-image")
    (menu,) = _find(w, "clipedu-caption")
    (table,) = _find(w, "clipedu-text-ranking")
    assert slider.description == "image" and menu.description == "caption"
    first = table.value
    slider.value = 4
    assert table.value != first and "image 4" in table.value
    menu.value = 2
    with pytest.raises(ValueError, match="captions"):
        vc.similarity_explorer(images, captions[:3], img, txt)
