"""Classifier results at a glance: a confusion matrix and a gallery of predictions."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch


def plot_confusion_matrix(matrix: torch.Tensor, class_names: Sequence[str], ax=None, title: str = "",
                          normalise: bool = True):
    """Rows are the true class, columns the predicted one (``clipedu.evaluate.confusion_matrix``).

    ``normalise=True`` shows each row as fractions, so a perfect classifier is the identity;
    the counts are written in the cells either way. Returns the axes.
    """
    matrix = torch.as_tensor(matrix).cpu()
    k = len(class_names)
    if matrix.shape != (k, k):
        raise ValueError(f"expected a ({k}, {k}) matrix for {k} class names, got {tuple(matrix.shape)}")
    shown = matrix.float() / matrix.sum(1, keepdim=True).clamp(min=1) if normalise else matrix.float()
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * k + 2, 0.45 * k + 1.6))
    ax.imshow(shown.numpy(), cmap="Blues", vmin=0, vmax=1 if normalise else None)
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] > 0.6 * float(shown.max()) else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    return ax
