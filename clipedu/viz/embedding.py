"""The embedding space (notebook 09): projections to 2-d, the modality gap, and the temperature.

Pure functions compute what is drawn; the tests call them directly:

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

Plots: :func:`plot_projection`, :func:`plot_cosine_histograms`; :func:`projection_explorer` is a
thin widget that recolours precomputed projections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PROJECTIONS = ("pca", "tsne", "umap")
PROJECTION_TITLES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}


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
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        options.setdefault("perplexity", min(30.0, (len(x) - 1) / 3))
        options.setdefault("init", "pca")
        options.setdefault("learning_rate", "auto")  # scikit-learn's default from 1.2 on; older ones used 200
        with threadpool_limits(threads):
            points = TSNE(2, random_state=seed, **options).fit_transform(x.numpy())
        return torch.from_numpy(points).float()
    if method == "umap":
        try:
            import umap
        except ImportError as err:  # an optional dependency on some installs
            raise ImportError("UMAP needs the umap-learn package: pip install umap-learn") from err
        import warnings

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
    from clipedu.losses import clip_loss

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


# --- plots ----------------------------------------------------------------------------------------------
def _colours(count: int, palette=None) -> list:
    import matplotlib.pyplot as plt

    if palette is not None:
        if len(palette) < count:
            raise ValueError(f"the palette has {len(palette)} colours for {count} classes")
        return [tuple(c / 255 for c in p) if max(p) > 1 else tuple(p) for p in palette[:count]]
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]


def plot_projection(points, labels, names: Sequence[str] | None = None, modality=None, ax=None,
                    title: str = "", palette=None, size: float = 9.0, legend: bool = True):
    """A 2-d scatter: colour = ``labels`` (class indices, with ``names``), marker = ``modality``.

    ``modality`` (N,) booleans or 0/1, True/1 for a text embedding: images are drawn as dots and
    texts as crosses. ``palette``: one RGB colour per class (0-255 or 0-1). Returns the axes.
    """
    import matplotlib.pyplot as plt

    points = torch.as_tensor(points).detach().float().cpu()
    labels = torch.as_tensor(labels).long().cpu()
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"expected 2-d points (N, 2), got {tuple(points.shape)}")
    if labels.shape != (len(points),):
        raise ValueError(f"expected one label per point ({len(points)}), got {tuple(labels.shape)}")
    count = int(labels.max()) + 1 if names is None else len(names)
    names = list(names) if names is not None else [str(i) for i in range(count)]
    colours = _colours(count, palette)
    kinds = [(torch.ones(len(points), dtype=torch.bool), "o", "")]
    if modality is not None:
        is_text = torch.as_tensor(modality).bool().cpu()
        kinds = [(~is_text, "o", "image"), (is_text, "x", "text")]
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    for mask, marker, _ in kinds:
        for c in range(count):
            sel = mask & (labels == c)
            if sel.any():
                ax.scatter(points[sel, 0], points[sel, 1], s=size, color=colours[c], marker=marker,
                           linewidths=0.8, alpha=0.75)
    if legend:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], ls="", marker="o", color=colours[c], label=names[c]) for c in range(count)]
        if modality is not None:
            handles += [Line2D([], [], ls="", marker=m, color="grey", label=lab) for _, m, lab in kinds]
        ax.legend(handles=handles, fontsize=6, loc="best", markerscale=0.8, framealpha=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return ax


def plot_cosine_histograms(matched, unmatched, ax=None, title: str = "", bins: int = 60):
    """Densities of matched and unmatched pair cosines on one axis, with their means marked."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 2.8))
    edges = np.linspace(-1, 1, bins + 1)
    for values, label, colour in ((unmatched, "unmatched pairs", "C7"), (matched, "matched pairs", "C3")):
        v = torch.as_tensor(values).float().cpu().numpy()
        ax.hist(v, bins=edges, density=True, alpha=0.6, color=colour, label=f"{label} (mean {v.mean():.2f})")
        ax.axvline(v.mean(), color=colour, lw=1, ls="--")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax


def projection_explorer(points: dict, labels: dict, names: dict, modality=None, palettes: dict | None = None,
                        attribute: str | None = None, method: str | None = None):
    """Recolour precomputed projections: a menu for the method and one for the attribute.

    ``points``: method name -> (N, 2); ``labels``: attribute -> (N,) class indices; ``names``:
    attribute -> class names; ``palettes``: attribute -> colours (optional). Nothing is recomputed,
    so a change redraws at once.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    if not points or not labels:
        raise ValueError("give at least one projection and one attribute")
    palettes = palettes or {}
    method_menu = widgets.Dropdown(options=[(PROJECTION_TITLES.get(m, m), m) for m in points],
                                   value=method or next(iter(points)), description="projection")
    attribute_menu = widgets.Dropdown(options=list(labels), value=attribute or next(iter(labels)),
                                      description="colour by")

    def draw(method, attribute):
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        plot_projection(points[method], labels[attribute], names[attribute], modality, ax,
                        title=f"{PROJECTION_TITLES.get(method, method)}, coloured by {attribute}",
                        palette=palettes.get(attribute))
        fig.tight_layout()
        plt.show()

    out = widgets.interactive_output(draw, {"method": method_menu, "attribute": attribute_menu})
    box = widgets.VBox([widgets.HBox([method_menu, attribute_menu]), out])
    display(box)
    return box
