"""Training curves: loss, temperature, learning rate and how alike the embeddings are."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
from IPython.display import display


def plot_history(history, axes=None, title: str | None = None):
    """Four panels: loss (with ln(batch), the loss of a model that cannot tell pairs apart),
    temperature, learning rate, and the mean cosine between different embeddings in a batch
    (near 1 means collapse). Returns the figure."""
    if axes is None:
        fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    else:
        fig = axes[0].figure
    steps = history.step
    ax = axes[0]
    ax.plot(steps, history.loss, label="loss")
    if history.batch_size > 1:
        ax.axhline(math.log(history.batch_size), color="grey", ls="--", lw=1, label="ln(batch): chance")
    ax.set_xlabel("step")
    ax.set_title("contrastive loss")
    ax.legend(fontsize=8)
    axes[1].plot(steps, history.temperature, color="C1")
    axes[1].set_yscale("log")
    axes[1].set_title("temperature 1/exp(logit_scale)")
    axes[1].set_xlabel("step")
    axes[2].plot(steps, history.lr, color="C2")
    axes[2].set_title("learning rate")
    axes[2].set_xlabel("step")
    axes[3].plot(steps, history.image_similarity, label="images")
    axes[3].plot(steps, history.text_similarity, label="texts")
    axes[3].set_ylim(-0.1, 1.05)
    axes[3].set_title("mean cosine between different items")
    axes[3].set_xlabel("step")
    axes[3].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


class LivePlot:
    """A training callback that redraws :func:`plot_history` in place every ``every`` logged steps.

    It updates one display slot, so the progress bar above it stays where it is.
    """

    def __init__(self, every: int = 5):
        self.every, self.calls, self.handle = every, 0, None

    def __call__(self, trainer) -> None:
        self.calls += 1
        if self.calls % self.every:
            return
        fig = plot_history(trainer.history)
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)
