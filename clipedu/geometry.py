"""The geometry of the embedding space (notebook 09): projections to 2-d, the modality gap,
alignment and uniformity, and the temperature.

- :func:`pca` (by SVD, with a fixed sign per component) and :func:`project`, which also runs
  t-SNE (scikit-learn) and UMAP (``umap-learn``) on the same points.
- :func:`gap_vector` and :func:`modality_gap`: the difference between the centroid of the image
  embeddings and that of the text embeddings, and its length (Liang et al., 2022).
  :func:`shift_gap` moves both modalities along it and renormalises.
- :func:`neighbour_agreement`: how well a space (or its 2-d picture) keeps an attribute's neighbourhoods.
- :func:`pair_cosines`: cosines of matched and of unmatched (image, text) pairs.
- :func:`uniformity` and :func:`alignment` (Wang & Isola, 2020): how evenly embeddings spread over
  the sphere, and how close matched pairs are.
- :func:`loss_vs_temperature`: the contrastive loss of fixed embeddings at many temperatures.

:mod:`clipedu.viz.geometry` draws projections and cosine histograms.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from clipedu.losses import clip_loss

PROJECTIONS = ("pca", "tsne", "umap")


def _embeddings(x, name: str = "embeddings") -> torch.Tensor:
    x = torch.as_tensor(x).detach()
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"expected {name} of shape (N, E) with N >= 1, got {tuple(x.shape)}")
    return x.float().cpu()


# --- projections ------------------------------------------------------------------------------------
@dataclass
class PCAResult:
    points: torch.Tensor  # (N, k) the data in the first k principal directions
    components: torch.Tensor  # (k, D) unit directions, largest variance first
    mean: torch.Tensor  # (D,) subtracted before projecting
    explained: torch.Tensor  # (k,) share of the total variance along each direction


def pca(x, k: int = 2) -> PCAResult:
    """Principal component analysis by SVD of the centred data.

    A direction and its negative explain the same variance; each component's sign is fixed so that
    its largest entry (in absolute value) is positive, so results do not flip between runs.
    """
    x = _embeddings(x).double()
    if not 1 <= k <= min(x.shape):
        raise ValueError(f"k must be between 1 and {min(x.shape)} for data of shape {tuple(x.shape)}, got {k}")
    mean = x.mean(dim=0)  # (D,)
    centred = x - mean  # (N, D)
    _, s, vt = torch.linalg.svd(centred, full_matrices=False)  # vt (min(N, D), D), rows = directions
    components = vt[:k]  # (k, D)
    signs = components.gather(1, components.abs().argmax(dim=1, keepdim=True)).sign()  # (k, 1)
    components = components * signs
    variance = s**2
    return PCAResult(
        points=(centred @ components.t()).float(),
        components=components.float(),
        mean=mean.float(),
        explained=(variance[:k] / variance.sum()).float(),
    )


def project(x, method: str = "pca", seed: int = 0, threads: int | None = 1, **options) -> torch.Tensor:
    """(N, E) -> (N, 2) with ``"pca"``, ``"tsne"`` (scikit-learn) or ``"umap"`` (umap-learn).

    ``options`` go to the method: e.g. ``perplexity`` for t-SNE, ``n_neighbors``, ``min_dist`` or
    ``n_epochs`` for UMAP. t-SNE and UMAP keep neighbourhoods, not distances: two clusters far apart
    in their picture may not be far apart in the space.

    ``threads``: OpenMP threads for t-SNE (None: the library's default). One is the default
    because on a busy machine scikit-learn's threads and PyTorch's wait on each other: t-SNE of a
    few hundred points then takes tens of seconds instead of one or two.
    """
    x = _embeddings(x)
    if method == "pca":
        return pca(x, 2).points
    if method == "tsne":
        # Imported here: scikit-learn's manifold module takes seconds to import, and only t-SNE needs it.
        from sklearn.manifold import TSNE

        options.setdefault("perplexity", min(30.0, (len(x) - 1) / 3))
        options.setdefault("init", "pca")
        options.setdefault("learning_rate", "auto")  # scikit-learn's default from 1.2 on; older ones used 200
        with threadpool_limits(threads):
            points = TSNE(2, random_state=seed, **options).fit_transform(x.numpy())
        return torch.from_numpy(points).float()
    if method == "umap":
        try:  # imported here: heavy (numba compiles on import), and missing on some installs
            import umap
        except ImportError as err:
            raise ImportError("UMAP needs the umap-learn package: pip install umap-learn") from err

        options.setdefault("n_neighbors", min(15, len(x) - 1))
        with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": intended, for repeatability
            warnings.simplefilter("ignore", UserWarning)
            reducer = umap.UMAP(n_components=2, random_state=seed, **options)
            return torch.from_numpy(np.asarray(reducer.fit_transform(x.numpy()))).float()
    raise ValueError(f"method must be one of {PROJECTIONS}, got {method!r}")


def neighbour_agreement(x, labels, k: int = 10) -> float:
    """How often a point's ``k`` nearest neighbours (Euclidean, itself excluded) share its label.

    Computed in any space, the full embeddings or a 2-d projection, it says how well the
    neighbourhoods keep an attribute; for balanced classes a random arrangement gives about
    1 / (number of classes).
    """
    x = _embeddings(x, "points")
    labels = torch.as_tensor(labels).cpu()
    if labels.shape != (len(x),):
        raise ValueError(f"expected one label per point ({len(x)}), got {tuple(labels.shape)}")
    if not 1 <= k < len(x):
        raise ValueError(f"k must be between 1 and {len(x) - 1}, got {k}")
    d = torch.cdist(x.double(), x.double())  # (N, N)
    d.fill_diagonal_(float("inf"))
    nearest = d.topk(k, largest=False).indices  # (N, k)
    return (labels[nearest] == labels[:, None]).float().mean().item()


# --- the modality gap ---------------------------------------------------------------------------------
def _pair(image_embeds, text_embeds) -> tuple[torch.Tensor, torch.Tensor]:
    image, text = _embeddings(image_embeds, "image embeddings"), _embeddings(text_embeds, "text embeddings")
    if image.shape[1] != text.shape[1]:
        raise ValueError(
            f"image and text embeddings must have the same width, got {image.shape[1]} and {text.shape[1]}"
        )
    return image, text


def gap_vector(image_embeds, text_embeds) -> torch.Tensor:
    """(E,) the centroid of the image embeddings minus the centroid of the text embeddings.

    Both are expected unit length (as CLIP compares them); the two sets need not be the same size.
    """
    image, text = _pair(image_embeds, text_embeds)
    return image.mean(dim=0) - text.mean(dim=0)


def modality_gap(image_embeds, text_embeds) -> float:
    """The length of :func:`gap_vector`: 0 when the two clouds share a centre, up to 2 at most."""
    return gap_vector(image_embeds, text_embeds).norm().item()


def shift_gap(image_embeds, text_embeds, fraction: float, gap: torch.Tensor | None = None):
    """Move images by ``-fraction * gap / 2`` and texts by ``+fraction * gap / 2``, then renormalise.

    ``fraction = 1`` brings the two centroids together (before renormalising); negative values
    widen the gap. ``gap`` defaults to :func:`gap_vector` of these embeddings. Returns (images, texts).
    """
    image, text = _pair(image_embeds, text_embeds)
    gap = gap_vector(image, text) if gap is None else torch.as_tensor(gap).float().cpu()
    half = 0.5 * float(fraction) * gap  # (E,)
    return F.normalize(image - half, dim=-1), F.normalize(text + half, dim=-1)


def pair_cosines(image_embeds, text_embeds) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines of the N matched pairs (image i, text i), and of the N (N - 1) unmatched ones (i != j)."""
    image, text = _pair(image_embeds, text_embeds)
    if image.shape[0] != text.shape[0]:
        raise ValueError(f"matched pairs need as many texts as images, got {image.shape[0]} and {text.shape[0]}")
    sims = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()  # (N, N)
    off = ~torch.eye(len(sims), dtype=torch.bool)
    return sims.diagonal().clone(), sims[off]


def uniformity(x, t: float = 2.0) -> float:
    """Wang & Isola's uniformity: log of the mean of exp(-t ||x_i - x_j||^2) over pairs i != j.

    0 when every embedding is the same point; lower (more negative) the more evenly the embeddings
    cover the sphere. Embeddings are normalised first.
    """
    x = F.normalize(_embeddings(x).double(), dim=-1)
    if len(x) < 2:
        raise ValueError("uniformity needs at least two embeddings")
    sq = (2 - 2 * x @ x.t()).clamp(min=0)  # (N, N) squared distances of unit vectors
    off = ~torch.eye(len(x), dtype=torch.bool)
    return torch.log(torch.exp(-t * sq[off]).mean()).item()


def alignment(image_embeds, text_embeds, alpha: float = 2.0) -> float:
    """Wang & Isola's alignment: the mean of ||x_i - y_i||^alpha over matched pairs (0 = identical)."""
    matched, _ = pair_cosines(image_embeds, text_embeds)
    return ((2 - 2 * matched.double()).clamp(min=0) ** (alpha / 2)).mean().item()


def loss_vs_temperature(image_embeds, text_embeds, temperatures: Sequence[float],
                        batch_size: int = 128) -> torch.Tensor:
    """The symmetric contrastive loss of fixed embeddings at each temperature, averaged over batches.

    The pairs are cut into consecutive batches of ``batch_size`` (a last, smaller batch is dropped,
    so every batch has the same chance level ln(batch_size)). Returns (len(temperatures),) losses.
    """
    image, text = _pair(image_embeds, text_embeds)
    if image.shape[0] != text.shape[0]:
        raise ValueError(f"matched pairs need as many texts as images, got {image.shape[0]} and {text.shape[0]}")
    batches = image.shape[0] // batch_size
    if batches == 0:
        raise ValueError(f"{image.shape[0]} pairs do not fill one batch of {batch_size}")
    out = []
    for tau in temperatures:
        if not tau > 0:
            raise ValueError(f"temperatures must be positive, got {tau}")
        losses = [clip_loss(image[k * batch_size:(k + 1) * batch_size], text[k * batch_size:(k + 1) * batch_size],
                            1.0 / tau) for k in range(batches)]
        out.append(torch.stack(losses).mean())
    return torch.stack(out)
