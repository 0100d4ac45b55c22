import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from clipedu.geometry import (  # noqa: E402
    alignment,
    gap_vector,
    loss_vs_temperature,
    modality_gap,
    neighbour_agreement,
    pair_cosines,
    pca,
    project,
    shift_gap,
    uniformity,
)
from clipedu.losses import clip_loss  # noqa: E402
from clipedu.viz.geometry import plot_cosine_histograms, plot_projection, projection_explorer  # noqa: E402


def unit(n, d=8, seed=0, offset=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if offset is not None:
        x = x + offset
    return F.normalize(x, dim=-1)


# --- PCA and projections -----------------------------------------------------------------------------------
def test_pca_finds_the_long_axis_and_matches_sklearn():
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g) * torch.tensor([5.0, 2.0, 1.0, 0.5, 0.1]) + 3.0
    result = pca(x, 2)
    assert result.points.shape == (200, 2) and result.components.shape == (2, 5)
    assert result.components[0].abs().argmax() == 0 and result.components[0, 0] > 0  # the sign rule
    torch.testing.assert_close(result.components @ result.components.t(), torch.eye(2), atol=1e-5, rtol=0)
    ref = PCA(2).fit(x.numpy())
    torch.testing.assert_close(result.explained, torch.tensor(ref.explained_variance_ratio_).float(), atol=1e-5,
                               rtol=1e-4)
    signs = torch.sign((result.points * torch.tensor(ref.transform(x.numpy())).float()).sum(0))
    torch.testing.assert_close(result.points, torch.tensor(ref.transform(x.numpy())).float() * signs, atol=1e-4,
                               rtol=1e-4)
    with pytest.raises(ValueError, match="k must be"):
        pca(x, 6)


def test_pca_is_repeatable_under_sign_flips():
    x = unit(50)
    torch.testing.assert_close(pca(x).points, pca(x.clone()).points)


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_project_gives_two_columns(method):
    x = torch.cat([unit(30, seed=1, offset=3.0), unit(30, seed=2, offset=-3.0)])  # two clusters
    kwargs = {"n_epochs": 50} if method == "umap" else {}
    points = project(x, method, **kwargs)
    assert points.shape == (60, 2) and torch.isfinite(points).all()
    # Each point's nearest neighbour in the picture is from its own cluster.
    d = torch.cdist(points, points) + torch.eye(60) * 1e9
    nearest = d.argmin(1)
    assert ((nearest < 30) == (torch.arange(60) < 30)).float().mean() > 0.95
    torch.testing.assert_close(project(x, method, **kwargs), points)  # seeded: the same picture again


def test_project_checks_its_input():
    with pytest.raises(ValueError, match="method"):
        project(unit(10), "isomap")
    with pytest.raises(ValueError, match=r"\(N, E\)"):
        project(torch.zeros(5))


def test_neighbour_agreement():
    x = torch.cat([unit(20, seed=1, offset=5.0), unit(20, seed=2, offset=-5.0)])
    labels = (torch.arange(40) >= 20).long()
    assert neighbour_agreement(x, labels, k=5) == 1.0
    assert neighbour_agreement(x, 1 - labels, k=5) == 1.0
    mixed = torch.arange(40) % 2  # a label that ignores the clusters
    assert 0.3 < neighbour_agreement(x, mixed, k=5) < 0.7
    with pytest.raises(ValueError, match="k must be"):
        neighbour_agreement(x, labels, k=40)
    with pytest.raises(ValueError, match="one label per point"):
        neighbour_agreement(x, labels[:3])


# --- the gap ---------------------------------------------------------------------------------------------
def test_gap_of_two_clouds():
    image, text = unit(100, seed=1, offset=2.0), unit(120, seed=2, offset=-2.0)
    gap = gap_vector(image, text)
    torch.testing.assert_close(gap, image.mean(0) - text.mean(0))
    assert modality_gap(image, text) == pytest.approx(gap.norm().item())
    assert modality_gap(image, text) > 1.0
    assert modality_gap(image, image) == 0.0
    assert 0 <= modality_gap(unit(50, seed=3), -unit(50, seed=3)) <= 2


def test_shift_gap_closes_and_widens():
    image, text = unit(200, seed=1, offset=1.0), unit(200, seed=2, offset=-1.0)
    before = modality_gap(image, text)
    closer = shift_gap(image, text, 1.0)
    wider = shift_gap(image, text, -0.5)
    assert modality_gap(*closer) < 0.25 * before
    assert modality_gap(*wider) > before
    for x in (*closer, *wider):
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(200))
    same = shift_gap(image, text, 0.0)
    torch.testing.assert_close(same[0], image)
    torch.testing.assert_close(same[1], text)
    # A given gap vector is used as it is.
    fixed = shift_gap(image, text, 1.0, gap=torch.zeros(8))
    torch.testing.assert_close(fixed[0], image)


def test_pair_cosines():
    image = unit(6, seed=1)
    matched, unmatched = pair_cosines(image, image)
    torch.testing.assert_close(matched, torch.ones(6))
    assert unmatched.shape == (30,)
    torch.testing.assert_close(unmatched.sort().values, (image @ image.t())[~torch.eye(6, dtype=bool)].sort().values)
    with pytest.raises(ValueError, match="as many texts"):
        pair_cosines(image, image[:5])
    with pytest.raises(ValueError, match="same width"):
        pair_cosines(image, unit(6, d=4))


def test_uniformity_and_alignment():
    same = F.normalize(torch.ones(20, 8), dim=-1)
    assert uniformity(same) == pytest.approx(0.0, abs=1e-9)
    spread = uniformity(unit(400, d=3))
    clustered = uniformity(unit(400, d=3, offset=torch.tensor([4.0, 0, 0])))
    assert spread < clustered < 0
    # Evenly spread on a circle: the mean over pairs can be written down.
    angles = torch.arange(8) * 2 * math.pi / 8
    circle = torch.stack([angles.cos(), angles.sin()], 1)
    sq = 2 - 2 * torch.cos(angles[:, None] - angles[None, :])
    expected = math.log(torch.exp(-2 * sq[~torch.eye(8, dtype=bool)]).mean().item())
    assert uniformity(circle) == pytest.approx(expected, rel=1e-6)
    x = unit(10)
    assert alignment(x, x) == pytest.approx(0.0, abs=1e-9)
    assert alignment(x, -x) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="two"):
        uniformity(x[:1])


def test_loss_vs_temperature_matches_clip_loss():
    image, text = unit(256, seed=1), unit(256, seed=2)
    text = F.normalize(text + 2 * image, dim=-1)  # matched pairs are close
    losses = loss_vs_temperature(image, text, [1.0, 0.1], batch_size=128)
    expected = (clip_loss(image[:128], text[:128], 10.0) + clip_loss(image[128:], text[128:], 10.0)) / 2
    torch.testing.assert_close(losses[1], expected)
    # At a very high temperature every caption looks alike: the loss approaches ln(batch).
    assert loss_vs_temperature(image, text, [1e4])[0].item() == pytest.approx(math.log(128), rel=1e-3)
    with pytest.raises(ValueError, match="fill one batch"):
        loss_vs_temperature(image[:10], text[:10], [0.1])
    with pytest.raises(ValueError, match="positive"):
        loss_vs_temperature(image, text, [0.0])


# --- plots and the widget -------------------------------------------------------------------------------
def test_plots():
    points = torch.randn(40, 2)
    labels = torch.arange(40) % 4
    ax = plot_projection(points, labels, ["a", "b", "c", "d"], modality=torch.arange(40) >= 20, title="t")
    assert ax.get_title() == "t"
    assert len(ax.get_legend().get_texts()) == 4 + 2  # four classes, image and text
    ax = plot_projection(points, labels, palette=[(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)], legend=False)
    assert ax.get_legend() is None
    with pytest.raises(ValueError, match="one label per point"):
        plot_projection(points, labels[:5])
    with pytest.raises(ValueError, match="palette"):
        plot_projection(points, labels, palette=[(1, 0, 0)])
    ax = plot_cosine_histograms(torch.rand(50), torch.rand(500) - 0.5, title="h")
    assert "mean" in ax.get_legend().get_texts()[0].get_text()
    plt.close("all")


def test_projection_explorer_draws_and_recolours():
    plt.close("all")
    points = {"pca": torch.randn(30, 2), "umap": torch.randn(30, 2)}
    labels = {"colour": torch.arange(30) % 3, "shape": torch.arange(30) % 2}
    names = {"colour": ["r", "g", "b"], "shape": ["o", "x"]}
    box = projection_explorer(points, labels, names, modality=torch.arange(30) >= 15,
                              palettes={"colour": [(255, 0, 0), (0, 255, 0), (0, 0, 255)]})
    assert len(plt.get_fignums()) == 1  # drawn in its default state
    method, attribute = box.children[0].children
    method.value, attribute.value = "umap", "shape"
    assert len(plt.get_fignums()) == 3
    plt.close("all")
    with pytest.raises(ValueError, match="at least one"):
        projection_explorer({}, labels, names)
