"""Linear probes and few-shot curves, drawn (notebook 10).

- :func:`plot_probe_bars` -- probe accuracy per attribute, one bar per encoder, chance marked.
- :func:`plot_few_shot_curves` -- accuracy against labelled examples per class, one panel per
  attribute, the zero-shot accuracy as a horizontal line and the crossing marked
  (:func:`clipedu.evaluate.shots_matching`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib.pyplot as plt

from clipedu.evaluate import shots_matching


def plot_probe_bars(
    results: Mapping[str, Mapping[str, float]],
    chance: Mapping[str, float] | None = None,
    title: str = "linear probe accuracy on the test images",
    ax=None,
):
    """Grouped bars: ``results[encoder][attribute]`` = accuracy, one group per attribute."""
    encoders = list(results)
    if not encoders:
        raise ValueError("no results to draw")
    attributes = list(results[encoders[0]])
    if ax is None:
        _, ax = plt.subplots(figsize=(min(12, 2.4 * len(attributes) + 2), 3.4))
    width = 0.8 / len(encoders)
    for i, name in enumerate(encoders):
        xs = [a + (i - (len(encoders) - 1) / 2) * width for a in range(len(attributes))]
        values = [results[name][attr] for attr in attributes]
        bars = ax.bar(xs, values, width, label=name)
        for x, v, bar in zip(xs, values, bars):
            ax.text(x, v + 0.01, f"{v:.0%}", ha="center", va="bottom", fontsize=7, color=bar.get_facecolor())
    for a, attr in enumerate(attributes):
        if chance and attr in chance:
            ax.hlines(
                chance[attr],
                a - 0.45,
                a + 0.45,
                colors="grey",
                linestyles="--",
                lw=1,
                label="chance" if a == 0 else None,
            )
    ax.set_xticks(range(len(attributes)), attributes)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(encoders) + 1, frameon=False)
    ax.figure.tight_layout()
    return ax.figure


def plot_few_shot_curves(
    curves: Mapping[str, Mapping[int, tuple[float, float]]],
    zero_shot: Mapping[str, float] | None = None,
    chance: Mapping[str, float] | None = None,
    label: str = "linear probe",
):
    """One panel per attribute: mean accuracy (error bars: std over repeats) against shots on a
    log-2 axis, the zero-shot accuracy as a horizontal line, and where the curve crosses it."""
    if not curves:
        raise ValueError("no curves to draw")
    cols = min(2, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    for ax, (attr, curve) in zip(axes.flat, curves.items()):
        ks = sorted(curve)
        means = [curve[k][0] for k in ks]
        stds = [curve[k][1] for k in ks]
        ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=label)
        if zero_shot and attr in zero_shot:
            zs = zero_shot[attr]
            ax.axhline(zs, color="C3", lw=1.5, label=f"zero-shot (prompts) {zs:.0%}")
            worth = shots_matching(curve, zs)
            if math.isfinite(worth) and worth > ks[0]:
                ax.axvline(worth, color="C3", ls=":", lw=1)
                ax.annotate(
                    f"≈ {worth:.1f} shots",
                    (worth, zs),
                    textcoords="offset points",
                    xytext=(4, -12),
                    fontsize=8,
                    color="C3",
                )
        if chance and attr in chance:
            ax.axhline(chance[attr], color="grey", ls="--", lw=1, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("labelled examples per class")
        ax.set_title(attr)
        ax.legend(fontsize=7, loc="lower right")
    for row in axes:
        row[0].set_ylabel("test accuracy")
    fig.tight_layout()
    return fig
