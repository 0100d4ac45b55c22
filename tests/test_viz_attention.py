"""The measurements behind notebook 02's plots: softmax saturation, one query's weights, cost."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from clipedu.viz import attention as ap  # noqa: E402


def test_without_the_scale_the_softmax_saturates_as_d_grows():
    r = ap.softmax_saturation([4, 64, 1024], n_keys=16, samples=300)
    # Raw dot products of unit-variance vectors have std sqrt(d).
    for d, std in zip(r["dims"], r["score_std"]):
        assert std == pytest.approx(math.sqrt(d), rel=0.15)
    unscaled, scaled = r["max_weight_unscaled"], r["max_weight_scaled"]
    assert unscaled[0] < unscaled[1] < unscaled[2] and unscaled[2] > 0.9
    assert max(scaled) - min(scaled) < 0.05  # with the scale, the same peakedness at every width
    assert r["entropy_unscaled"][2] < 0.2 < 2.0 < min(r["entropy_scaled"]) <= math.log(16)
    assert r["jacobian_unscaled"][2] < 0.5 * r["jacobian_scaled"][2]  # saturated: little gradient


def test_one_query_weights_are_distributions():
    scaled, unscaled = ap.one_query_weights(256, n_keys=10)
    for w in (scaled, unscaled):
        assert w.shape == (10,) and torch.all(w >= 0)
        torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    assert unscaled.max() > scaled.max()
    torch.testing.assert_close(ap.one_query_weights(256, 10)[0], scaled)  # seeded: the same every time


def test_attention_flops_is_four_n_squared_d_per_head():
    assert ap.attention_flops(10, 8) == 4 * 100 * 8
    assert ap.attention_flops(256, 64, heads=8, batch=2) == 2 * 8 * 4 * 256**2 * 64


def test_time_attention_measures_both_paths():
    rows = ap.time_attention([16, 32], head_dim=8, heads=2, repeats=1)
    assert [r["n"] for r in rows] == [16, 32]
    for r in rows:
        assert r["explicit"] > 0 and r["fused"] > 0
        assert r["weights_bytes"] == 2 * r["n"] ** 2 * 4
        assert r["flops"] == ap.attention_flops(r["n"], 8, 2)


def test_loglog_slope_recovers_the_exponent():
    xs = [64, 128, 256, 512]
    assert ap.loglog_slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)
    assert ap.loglog_slope(xs, [x for x in xs]) == pytest.approx(1.0)


def test_plots_draw():
    rows = ap.time_attention([16, 32], head_dim=8, heads=1, repeats=1)
    mask = torch.zeros(3, 3).masked_fill(~torch.ones(3, 3, dtype=torch.bool).tril(), float("-inf"))
    figures = (ap.plot_saturation(ap.softmax_saturation([4, 16], samples=50)), ap.plot_attention_cost(rows, "cpu"),
               ap.plot_matrix(torch.rand(3, 4), rows=list("abc"), title="w"), ap.plot_matrix(mask, fmt=".0f"),
               ap.plot_matrix(torch.ones(3, 3, dtype=torch.bool).tril(), fmt="d"))
    for fig in figures:
        assert fig.axes
        plt.close(fig)


@pytest.mark.parametrize("d", [2, 64, 1024])
def test_head_width_widget_draws_for_several_slider_values(d):
    box = ap.head_width_widget(n_keys=8, default=64)
    slider = box.children[0]
    assert slider.value == 64
    slider.value = d
    plt.close("all")


def test_time_attention_restores_the_thread_setting():
    before = torch.get_num_threads()
    ap.time_attention([8], head_dim=4, heads=1, repeats=1, min_time=0.0, cpu_threads=1)
    assert torch.get_num_threads() == before
