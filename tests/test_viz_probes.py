"""The pure function behind notebook 10's "how many shots is a prompt worth", and its plots."""

import math

import matplotlib
import pytest

from clipedu.evaluate import shots_matching
from clipedu.viz import probes as vp

matplotlib.use("Agg")

CURVE = {1: 0.2, 2: 0.4, 4: 0.5, 8: 0.7, 16: 0.8}


def test_shots_matching_interpolates_in_log2_shots():
    assert shots_matching(CURVE, 0.4) == pytest.approx(2.0)  # on a point
    assert shots_matching(CURVE, 0.3) == pytest.approx(2**0.5)  # half way from 1 to 2 in log2
    assert shots_matching(CURVE, 0.6) == pytest.approx(2**2.5)  # half way from 4 to 8
    assert shots_matching({k: (v, 0.01) for k, v in CURVE.items()}, 0.6) == pytest.approx(2**2.5)  # (mean, std)


def test_shots_matching_edges_and_first_crossing():
    assert shots_matching(CURVE, 0.1) == 1.0  # the first point already reaches it: at most 1
    assert shots_matching(CURVE, 0.9) == math.inf  # never reached
    bumpy = {1: 0.2, 2: 0.6, 4: 0.5, 8: 0.9}
    assert shots_matching(bumpy, 0.55) == pytest.approx(2 ** (0.875))  # the first crossing counts
    with pytest.raises(ValueError):
        shots_matching({}, 0.5)


def test_plots_draw():
    fig = vp.plot_probe_bars(
        {"clip": {"shape": 0.9, "size": 1.0}, "pixels": {"shape": 0.5, "size": 0.9}},
        chance={"shape": 1 / 8, "size": 0.5},
    )
    assert len(fig.axes[0].patches) == 4
    curves = {"shape": {k: (v, 0.02) for k, v in CURVE.items()}, "colour": {1: (0.9, 0.0), 2: (1.0, 0.0)}}
    fig = vp.plot_few_shot_curves(curves, zero_shot={"shape": 0.6, "colour": 0.5}, chance={"shape": 0.125})
    assert len(fig.axes) == 2
    with pytest.raises(ValueError):
        vp.plot_probe_bars({})
