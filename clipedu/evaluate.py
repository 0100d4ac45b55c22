"""Measuring a CLIP: zero-shot classification, retrieval, and linear probes (notebooks 07 and 10).

- **Zero-shot**: no training on labels at all. Write each class as text ("a photo of a dog."),
  embed it, and call an image whichever class text it is most similar to. With several prompt
  templates per class, either average their (unit) embeddings and renormalise (CLIP's *prompt
  ensemble*, one vector per class) or add up the probabilities the model gives each class's prompts
  (the *probability ensemble*: right when a class is a union of different descriptions, such as
  "a circle" of any colour, size and place; notebook 07 measures both).
- **Retrieval**: rank all captions for each image (and all images for each caption); recall@K is
  how often a right one is in the top K.
- **Linear probe** (as in the CLIP paper): freeze the image encoder, take its features *before* the
  projection, fit a logistic regression on labelled examples, with the regularisation strength C
  chosen on a validation split and the model refit on train + validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from clipedu.clip import CLIP
from clipedu.data import CaptionedImages, ShapesWorld, get_dataset, to_float
from clipedu.text import eot_index


# --- embedding whole datasets ---------------------------------------------------------------------
def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_images(
    model: CLIP,
    images: CaptionedImages | torch.Tensor,
    batch_size: int = 500,
    features: bool = False,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """Unit-length image embeddings (N, E) of uint8 images, on the CPU.

    ``features=True`` returns the image tower's features before the projection instead (N, D):
    what a linear probe reads.
    """
    if isinstance(images, CaptionedImages):
        images = images.images
    model.eval()
    device = _device_of(model)
    out = []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size].to(device), mean, std)
        if features:
            out.append(model.vision(x).features.float().cpu())
        else:
            out.append(model.encode_image(x).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model: CLIP, tokenizer, texts: Sequence[str], batch_size: int = 1000) -> torch.Tensor:
    """Unit-length text embeddings (M, E), on the CPU.

    The text encoder is causal, so the output at <eot> never depends on the padding after it: each
    batch is cut after its longest text's <eot>, which gives the same embeddings for a fraction of
    the work (prompts are a few tokens; CLIP's context is 77).
    """
    model.eval()
    device = _device_of(model)
    context, eot = model.cfg.text.context_length, model.cfg.text.eot_token_id
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size]), context_length=context, truncate=True)
        length = int(eot_index(tokens, eot).max()) + 1
        out.append(model.encode_text(tokens[:, :length].to(device)).float().cpu())
    return torch.cat(out)


# --- zero-shot --------------------------------------------------------------------------------------
ENSEMBLES = ("embedding", "probability")


def prompt_embeddings(
    model: CLIP, tokenizer, class_names: Sequence[str], templates: Sequence[str] = ("{}",)
) -> torch.Tensor:
    """(K, T, E) unit vectors: every template filled with every class name, class-major."""
    if not class_names:
        raise ValueError("zero-shot needs at least one class name")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"every template needs a {{}} for the class name, got {list(templates)}")
    prompts = [t.format(name) for name in class_names for t in templates]  # class-major order
    return encode_texts(model, tokenizer, prompts).view(len(class_names), len(templates), -1)


def embedding_ensemble(prompt_embeds: torch.Tensor) -> torch.Tensor:
    """(K, T, E) prompt embeddings -> (K, E) unit vectors: each class's mean, renormalised (CLIP)."""
    return F.normalize(prompt_embeds.mean(dim=1), dim=-1)


def zero_shot_classifier(
    model: CLIP, tokenizer, class_names: Sequence[str], templates: Sequence[str] = ("{}",)
) -> torch.Tensor:
    """(K, E) unit vectors, one per class: the mean of its prompts' embeddings, renormalised."""
    return embedding_ensemble(prompt_embeddings(model, tokenizer, class_names, templates))


def probability_ensemble(image_embeds: torch.Tensor, prompt_embeds: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, K) log p(class | image): the model's softmax over all K*T prompts, summed over each
    class's T prompts.

    p(prompt | image) = softmax(scale * cosine) over every prompt, as in the training loss, so
    log p(class | image) = logsumexp_t(scale * cos[k, t]) - logsumexp_{k', t}(scale * cos[k', t]).
    """
    if prompt_embeds.dim() != 3:
        raise ValueError(f"prompt_embeds must be (classes, templates, dim), got shape {tuple(prompt_embeds.shape)}")
    if image_embeds.shape[-1] != prompt_embeds.shape[-1]:
        raise ValueError(f"image embeddings have {image_embeds.shape[-1]} dimensions but the prompts "
                         f"have {prompt_embeds.shape[-1]}")
    scaled = scale * torch.einsum("ne,kte->nkt", image_embeds.float(), prompt_embeds.float())  # (N, K, T)
    per_class = scaled.logsumexp(dim=-1)  # (N, K)
    return per_class - per_class.logsumexp(dim=-1, keepdim=True)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ...}: how often the label is among the k highest scores."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of scores but {labels.shape[0]} labels")
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (N, k)
    hits = ranked == labels[:, None]
    return {f"top{k}": hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


@dataclass
class ZeroShotResult:
    attribute: str
    top1: float
    top5: float
    predictions: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,)
    logits: torch.Tensor  # (N, K) cosines (embedding ensemble) or log-probabilities (probability ensemble)
    class_names: list[str]
    confusion: torch.Tensor  # (K, K)

    def __repr__(self) -> str:
        k = len(self.class_names)
        return f"ZeroShotResult({self.attribute}: top1={self.top1:.3f}, top5={self.top5:.3f}, K={k})"


def zero_shot(
    model: CLIP,
    tokenizer,
    data: CaptionedImages,
    attribute: str = "class",
    templates: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    image_embeds: torch.Tensor | None = None,
    ensemble: str = "embedding",
) -> ZeroShotResult:
    """Zero-shot classification of ``data`` by one attribute (``"class"`` for CIFAR and digits;
    ``"shape"``, ``"colour"``, ``"size"``, ``"position"`` or ``"colour_shape"`` for ShapesWorld).

    ``templates`` default to the data's own for that attribute; pass precomputed
    ``image_embeds`` to score several prompt sets against the same images. ``ensemble`` says how a
    class's prompts combine: ``"embedding"`` averages their embeddings (CLIP's prompt ensemble),
    ``"probability"`` adds up the probabilities the model gives them (:func:`probability_ensemble`).
    """
    if attribute not in data.labels:
        raise ValueError(f"{data.name!r} has no labels for {attribute!r}; it has {sorted(data.labels)}")
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    class_names = list(class_names or data.class_names[attribute])
    templates = list(templates or data.templates.get(attribute) or ["{}"])
    prompts = prompt_embeddings(model, tokenizer, class_names, templates)  # (K, T, E)
    if image_embeds is None:
        image_embeds = encode_images(model, data)
    if ensemble == "embedding":
        logits = image_embeds @ embedding_ensemble(prompts).t()  # (N, K) cosines
    else:
        logits = probability_ensemble(image_embeds, prompts, model.scale.item())  # (N, K)
    labels = data.labels[attribute]
    acc = topk_accuracy(logits, labels, ks=(1, min(5, len(class_names))))
    predictions = logits.argmax(dim=1)
    return ZeroShotResult(
        attribute=attribute,
        top1=acc["top1"],
        top5=acc[f"top{min(5, len(class_names))}"],
        predictions=predictions,
        labels=labels,
        logits=logits,
        class_names=class_names,
        confusion=confusion_matrix(predictions, labels, len(class_names)),
    )


# --- retrieval --------------------------------------------------------------------------------------
def retrieval_recall(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    relevant: torch.Tensor | None = None,
) -> dict[str, float]:
    """Recall@K both ways, for images with one or several captions.

    ``text_to_image`` (M,): which image each text describes. Image -> text: a hit when any of the
    image's captions is in the top K. Text -> image: a hit when its image is in the top K.
    ``relevant`` (N, M) booleans, optional: count a hit whenever a relevant pair is in the top K
    (e.g. any caption whose attributes all match the image), not only the paired one.
    """
    n, m = image_embeds.shape[0], text_embeds.shape[0]
    if text_to_image.shape != (m,):
        raise ValueError(f"text_to_image must have one entry per text ({m}), got shape {tuple(text_to_image.shape)}")
    sims = image_embeds @ text_embeds.t()  # (N, M)
    if relevant is None:
        relevant = torch.zeros(n, m, dtype=torch.bool)
        relevant[text_to_image, torch.arange(m)] = True
    elif relevant.shape != (n, m):
        raise ValueError(f"relevant must be ({n}, {m}), got {tuple(relevant.shape)}")
    out = {}
    for k in ks:
        top_texts = sims.topk(min(k, m), dim=1).indices  # (N, k)
        out[f"image_to_text_R@{k}"] = relevant.gather(1, top_texts).any(dim=1).float().mean().item()
        top_images = sims.t().topk(min(k, n), dim=1).indices  # (M, k)
        out[f"text_to_image_R@{k}"] = relevant.t().gather(1, top_images).any(dim=1).float().mean().item()
    return out


def caption_pairs(data: CaptionedImages, per_image: int = 1) -> tuple[list[str], torch.Tensor]:
    """The first ``per_image`` captions of each image, flattened, and the image each belongs to."""
    texts, owner = [], []
    for i, caps in enumerate(data.captions):
        for c in caps[:per_image]:
            texts.append(c)
            owner.append(i)
    return texts, torch.tensor(owner)


# --- linear probes ----------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    accuracy: float  # on the test set, after refitting on train + validation with the best C
    best_c: float
    validation: dict[float, float] = field(default_factory=dict)  # C -> validation accuracy

    def __repr__(self) -> str:
        return f"ProbeResult(accuracy={self.accuracy:.3f}, best_c={self.best_c:g})"


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [(x - mean) / std for x in (train, *others)]


def linear_probe(
    train_x: torch.Tensor | np.ndarray,
    train_y: torch.Tensor | np.ndarray,
    test_x: torch.Tensor | np.ndarray,
    test_y: torch.Tensor | np.ndarray,
    cs: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
    validation_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 1000,
    protocol: str = "course",
) -> ProbeResult:
    """Logistic regression (L-BFGS) on frozen features, C chosen on a validation split.

    ``protocol="course"`` (the default) is a simplification of the CLIP paper's probe: features
    are standardised with the training set's mean and std (L-BFGS converges in far fewer steps on
    unit-scale inputs) and C is picked from the handful of values ``cs``.

    ``protocol="clip-paper"`` follows the CLIP paper (Radford et al., 2021, appendix A.3): raw
    features, and the L2 penalty lambda (C = 1 / lambda in scikit-learn) searched over 97 values
    spaced 8 per decade from 1e-6 to 1e6 (the paper's "96 logarithmically spaced steps") by a
    parametric binary search on the validation split: try every second decade, then around the best
    value so far halve the step (one decade, a half, a quarter, an eighth) until it is 1/8 of a
    decade. ``cs`` is ignored; about 15 fits instead of 97. See :func:`clip_paper_search`.

    Either way the final model is refit on train + validation with the best C.
    """
    if protocol not in ("course", "clip-paper"):
        raise ValueError(f'protocol must be "course" or "clip-paper", got {protocol!r}')
    # Imported here: scikit-learn's linear models take seconds to import, and only probes need them.
    from sklearn.linear_model import LogisticRegression

    x, y = np.asarray(train_x, dtype=np.float64), np.asarray(train_y)
    tx, ty = np.asarray(test_x, dtype=np.float64), np.asarray(test_y)
    if x.ndim != 2 or tx.ndim != 2 or x.shape[1] != tx.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {x.shape} and {tx.shape}")
    if len(x) != len(y) or len(tx) != len(ty):
        raise ValueError(f"features and labels disagree in length: {len(x)}/{len(y)} and {len(tx)}/{len(ty)}")
    if len(np.unique(y)) < 2:
        raise ValueError("a probe needs at least two classes in the training labels")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_val = max(1, int(round(validation_fraction * len(x))))
    val, fit = order[:n_val], order[n_val:]
    if len(np.unique(y[fit])) < 2:  # tiny few-shot sets: validate on the training points
        fit = val = order
    if protocol == "clip-paper":
        def score(c: float) -> float:
            clf = LogisticRegression(C=c, max_iter=max_iter).fit(x[fit], y[fit])
            return float((clf.predict(x[val]) == y[val]).mean())

        best, validation = clip_paper_search(score)
        clf = LogisticRegression(C=best, max_iter=max_iter).fit(x, y)
        return ProbeResult(float((clf.predict(tx) == ty).mean()), best, validation)
    validation = {}
    for c in cs:
        xf, xv = _standardise(x[fit], x[val])
        clf = LogisticRegression(C=c, max_iter=max_iter)
        clf.fit(xf, y[fit])
        validation[c] = float((clf.predict(xv) == y[val]).mean())
    best = max(validation, key=lambda c: (validation[c], -abs(np.log10(c))))  # ties: the milder C
    xa, xt = _standardise(x, tx)
    clf = LogisticRegression(C=best, max_iter=max_iter).fit(xa, y)
    return ProbeResult(float((clf.predict(xt) == ty).mean()), best, validation)


@dataclass
class BoxProbeResult:
    error: tuple[float, ...]  # mean absolute test error of each target (e.g. centre x, centre y, radius)
    best_alpha: float
    validation: dict[float, float] = field(default_factory=dict)  # alpha -> mean validation error
    predictions: torch.Tensor | None = None  # (N_test, T) what the head says for each test example

    def __repr__(self) -> str:
        return f"BoxProbeResult(error={tuple(round(e, 3) for e in self.error)}, best_alpha={self.best_alpha:g})"


def _ridge(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Ridge regression in closed form: W = (X^T X + alpha I)^-1 X^T Y for centred X and Y."""
    gram = x.T @ x + alpha * torch.eye(x.shape[1], dtype=x.dtype)  # (D, D)
    return torch.linalg.solve(gram, x.T @ y)  # (D, T)


def box_probe(
    train_x: torch.Tensor | np.ndarray,
    train_y: torch.Tensor | np.ndarray,
    test_x: torch.Tensor | np.ndarray,
    test_y: torch.Tensor | np.ndarray,
    alphas: Sequence[float] = (1e-1, 1.0, 10.0, 100.0, 1000.0),
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> BoxProbeResult:
    """A linear regression probe: ridge regression from frozen features (N, D) to numbers (N, T),
    such as an object's centre and radius in pixels. Features are standardised with the training
    mean and std, the L2 strength ``alpha`` is chosen on a validation split by the mean absolute
    error, and the final fit uses train + validation. Returns the test error of each target and the
    head's test predictions."""
    def as64(a):
        return torch.as_tensor(np.asarray(a), dtype=torch.float64)

    x, y, tx, ty = as64(train_x), as64(train_y), as64(test_x), as64(test_y)
    if x.ndim != 2 or tx.ndim != 2 or x.shape[1] != tx.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(x.shape)} and {tuple(tx.shape)}")
    if y.ndim == 1:
        y, ty = y[:, None], ty[:, None]
    if len(x) != len(y) or len(tx) != len(ty) or y.shape[1] != ty.shape[1]:
        raise ValueError(f"features and targets disagree: {tuple(x.shape)}/{tuple(y.shape)} and "
                         f"{tuple(tx.shape)}/{tuple(ty.shape)}")

    def fit_predict(fx, fy, px, alpha):
        mean, std, centre = fx.mean(0), fx.std(0) + 1e-6, fy.mean(0)
        w = _ridge((fx - mean) / std, fy - centre, alpha)
        return (px - mean) / std @ w + centre

    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(x)))
    n_val = max(1, int(round(validation_fraction * len(x))))
    val, fit = order[:n_val], order[n_val:]
    validation = {a: float((fit_predict(x[fit], y[fit], x[val], a) - y[val]).abs().mean()) for a in alphas}
    best = min(validation, key=lambda a: (validation[a], -a))  # ties: the stronger penalty
    predictions = fit_predict(x, y, tx, best)  # (N_test, T)
    error = (predictions - ty).abs().mean(0)
    return BoxProbeResult(tuple(float(e) for e in error), best, validation, predictions.float())


def segmentation_scores(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Scores of a dense labelling, class 0 being the background: ``where`` is the IoU of "object"
    (any class but 0) between prediction and truth; ``what`` the accuracy of the class where both
    say object; ``mIoU`` the mean over classes of each class's IoU (classes absent from both are
    skipped); ``accuracy`` the share of positions labelled right."""
    if predicted.shape != target.shape:
        raise ValueError(f"predicted and target labels differ in shape: {tuple(predicted.shape)} and "
                         f"{tuple(target.shape)}")
    predicted, target = predicted.long(), target.long()
    pred_object, true_object = predicted > 0, target > 0
    both = pred_object & true_object
    union = (pred_object | true_object).sum()
    ious = []
    for c in range(num_classes):
        u = ((predicted == c) | (target == c)).sum()
        if u > 0:
            ious.append(float(((predicted == c) & (target == c)).sum() / u))
    return {
        "where": float(both.sum() / union) if union > 0 else float("nan"),
        "what": float((predicted[both] == target[both]).float().mean()) if both.any() else float("nan"),
        "mIoU": sum(ious) / len(ious),
        "accuracy": float((predicted == target).float().mean()),
    }


CLIP_PAPER_STEPS_PER_DECADE = 8  # lambda from 1e-6 to 1e6: 12 decades, 96 steps, 97 values


def clip_paper_search(score: Callable[[float], float]) -> tuple[float, dict[float, float]]:
    """The CLIP paper's parametric binary search for the probe's L2 penalty.

    ``score(C)`` is the validation accuracy of a probe with ``C = 1 / lambda``. The grid is
    lambda = 10**(k / 8) for k = -48..48. The search scores every second decade (k = -48, -32, ...,
    48), then, around the best k so far, k - step and k + step for step = 8, 4, 2, 1 grid steps.
    Ties go to the lambda nearer 1 (the paper does not say). Returns (best C, {C: score} of every C
    tried).
    """
    lo, hi = -6 * CLIP_PAPER_STEPS_PER_DECADE, 6 * CLIP_PAPER_STEPS_PER_DECADE
    tried: dict[int, float] = {}

    def c_of(k: int) -> float:
        return float(10.0 ** (-k / CLIP_PAPER_STEPS_PER_DECADE))  # C = 1 / lambda

    def visit(k: int) -> None:
        if lo <= k <= hi and k not in tried:
            tried[k] = score(c_of(k))

    def best_k() -> int:
        return max(tried, key=lambda k: (tried[k], -abs(k)))  # ties: the lambda nearer 1, as the course's

    step = 2 * CLIP_PAPER_STEPS_PER_DECADE
    for k in range(lo, hi + 1, step):
        visit(k)
    while step > 1:
        step //= 2
        centre = best_k()
        visit(centre - step)
        visit(centre + step)
    return c_of(best_k()), {c_of(k): tried[k] for k in sorted(tried)}


def few_shot_indices(labels: torch.Tensor | np.ndarray, shots: int, seed: int = 0) -> np.ndarray:
    """Indices of ``shots`` examples of every class (fewer where a class has fewer)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def few_shot_curve(
    train_x, train_y, test_x, test_y, shots: Sequence[int] = (1, 2, 4, 8, 16), repeats: int = 3, seed: int = 0,
    cs: Sequence[float] = (1e-2, 1e-1, 1.0, 10.0),
) -> dict[int, tuple[float, float]]:
    """{k: (mean accuracy, std over repeats)} of probes fit on k labelled examples per class."""
    train_x, train_y = np.asarray(train_x), np.asarray(train_y)
    out = {}
    for k in shots:
        accs = []
        for r in range(repeats):
            idx = few_shot_indices(train_y, k, seed + r)
            accs.append(linear_probe(train_x[idx], train_y[idx], test_x, test_y, cs=cs, seed=seed + r).accuracy)
        out[k] = (float(np.mean(accs)), float(np.std(accs)))
    return out


def shots_matching(curve: Mapping[int, float | tuple[float, float]], accuracy: float) -> float:
    """How many labelled examples per class the curve needs to reach ``accuracy``.

    ``curve`` maps shots (examples per class) to accuracy, or to (mean, std) as
    :func:`few_shot_curve` returns: "a prompt is worth N labelled examples". At the first measured point that reaches
    ``accuracy``, the answer is interpolated linearly in log2(shots) with the point before it.
    If the first point already reaches it, that point's shots (the prompt is worth *at most* that
    many); if no point reaches it, ``inf``.
    """
    if not curve:
        raise ValueError("the curve has no points")
    points = sorted((int(k), float(v[0] if isinstance(v, tuple | list) else v)) for k, v in curve.items())
    if points[0][0] < 1:
        raise ValueError(f"shots must be positive, got {points[0][0]}")
    if points[0][1] >= accuracy:
        return float(points[0][0])
    for (k0, a0), (k1, a1) in zip(points, points[1:]):
        if a1 >= accuracy:
            t = (accuracy - a0) / (a1 - a0)  # a0 < accuracy <= a1, so 0 < t <= 1
            return 2 ** (math.log2(k0) + t * (math.log2(k1) - math.log2(k0)))
    return math.inf


def pixel_features(data: CaptionedImages, size: int | None = None) -> torch.Tensor:
    """The raw-pixel baseline: images (optionally downsampled to ``size``) as flat float vectors."""
    x = data.images.float() / 255
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.flatten(1)


# --- the standard report of a trained model ------------------------------------------------------
def heldout_pair_accuracy(model: CLIP, tokenizer, heldout: CaptionedImages, image_embeds=None) -> float:
    """Zero-shot over all colour x shape pairs ("the red triangle", ...) on images whose pair never
    appeared in training: can the model compose words it learned separately?"""
    pairs = [(c, s) for c in ShapesWorld.COLOURS for s in ShapesWorld.SHAPES]
    names = [f"{c} {s}" for c, s in pairs]
    return zero_shot(model, tokenizer, heldout, "colour_shape", templates=["the {}"], class_names=names,
                     image_embeds=image_embeds).top1


def shapes_zero_shot(model: CLIP, tokenizer, test: CaptionedImages, heldout: CaptionedImages,
                     test_embeds: torch.Tensor | None = None) -> dict[str, float]:
    """ShapesWorld's zero-shot top-1: shape, colour, size and position on ``test``, and
    ``heldout_pairs`` (64-way colour x shape) on ``heldout``, each with the data's whole-description
    prompts summed as probabilities, and as ``<name>_embedding_mean`` with CLIP's average of them.
    Each prompt set is embedded once and read both ways."""
    test_embeds = encode_images(model, test) if test_embeds is None else test_embeds
    cases = [(a, test, test_embeds, a) for a in ("shape", "colour", "size", "position")]
    cases.append(("heldout_pairs", heldout, encode_images(model, heldout), "colour_shape"))
    out = {}
    for name, data, images, attribute in cases:
        prompts = prompt_embeddings(model, tokenizer, data.class_names[attribute], data.templates[attribute])
        labels = data.labels[attribute]
        summed = probability_ensemble(images, prompts, model.scale.item()).argmax(dim=1)
        averaged = (images @ embedding_ensemble(prompts).t()).argmax(dim=1)
        out[name] = (summed == labels).float().mean().item()
        out[f"{name}_embedding_mean"] = (averaged == labels).float().mean().item()
    return out


def report(model: CLIP, tokenizer, dataset: str = "shapes", n: int = 1000, seed: int = 0,
           **data_options) -> dict[str, float]:
    """The numbers the CLI and the benchmarks print for a dataset's test split.

    ShapesWorld: zero-shot top-1 for shape, colour, size and position, and for the held-out colour x
    shape pairs, with the data's whole-description prompts summed as probabilities (a class is a
    union of descriptions; ``zero_shot_<attribute>_embedding_mean`` gives CLIP's embedding average
    beside it), then retrieval recall@1/5/10 over ``n`` test pairs, counted strictly (the paired
    caption) and leniently (any caption whose attributes all match the image). Other data:
    zero-shot top-1 and top-5 over the classes (CLIP's embedding average) and recall@K; data
    without class labels (a folder of your own pictures) gets recall@K alone. ``data_options`` go
    to :func:`~clipedu.data.get_dataset` for data other than ShapesWorld (a folder's CSV columns).
    """
    metrics: dict[str, float] = {}
    if dataset in ("shapes", "shapes2"):
        test = get_dataset(dataset, "test", n=n, seed=seed + 1000)
        embeds = encode_images(model, test)
        if dataset == "shapes":
            held = get_dataset(dataset, "heldout", n=n, seed=seed + 1000)
            scores = shapes_zero_shot(model, tokenizer, test, held, test_embeds=embeds)
            metrics.update({f"zero_shot_{name}": value for name, value in scores.items()})
        else:
            metrics["swapped_caption_accuracy"] = swapped_caption_accuracy(model, tokenizer, test, embeds)
        texts, owner = caption_pairs(test)
        text_embeds = encode_texts(model, tokenizer, texts)
        metrics.update(retrieval_recall(embeds, text_embeds, owner))
        same = torch.ones(len(test), len(texts), dtype=torch.bool)
        for values in test.labels.values():
            same &= values[:, None] == values[owner][None, :]
        lenient = retrieval_recall(embeds, text_embeds, owner, relevant=same)
        metrics.update({f"{k}_lenient": v for k, v in lenient.items()})
    else:
        test = get_dataset(dataset, "test", **data_options).sample(n, seed)
        embeds = encode_images(model, test)
        if "class" in test.labels:  # a folder's pictures have captions only: nothing to classify
            result = zero_shot(model, tokenizer, test, "class", image_embeds=embeds)
            metrics.update(zero_shot_top1=result.top1, zero_shot_top5=result.top5)
        texts, owner = caption_pairs(test)
        metrics.update(retrieval_recall(embeds, encode_texts(model, tokenizer, texts), owner))
    return metrics


def swapped_caption_accuracy(model: CLIP, tokenizer, data: CaptionedImages, image_embeds=None) -> float:
    """Two-object scenes: how often the true caption beats the same words with the objects swapped
    ("a red circle left of a blue square" vs "a blue square left of a red circle"). Chance is 0.5."""
    if data.hard_negatives is None:
        raise ValueError(f"{data.name!r} has no swapped captions (use two-object ShapesWorld)")
    if image_embeds is None:
        image_embeds = encode_images(model, data)
    true = encode_texts(model, tokenizer, [c[0] for c in data.captions])
    swapped = encode_texts(model, tokenizer, [c[0] for c in data.hard_negatives])
    return (swap_margins(image_embeds, true, swapped) > 0).float().mean().item()


def swap_margins(image_embeds: torch.Tensor, true_embeds: torch.Tensor, swapped_embeds: torch.Tensor) -> torch.Tensor:
    """(N,) cos(image i, its caption) - cos(image i, the caption with the two objects swapped).

    Above 0: the model prefers the true caption; :func:`swapped_caption_accuracy` is the fraction of
    margins above 0.
    """
    for name, x in (("image_embeds", image_embeds), ("true_embeds", true_embeds), ("swapped_embeds", swapped_embeds)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] == 0:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected {name} of shape (N, E) with N >= 1, got {got}")
        if x.shape != image_embeds.shape:
            raise ValueError(f"{name} must have the shape of image_embeds {tuple(image_embeds.shape)}, "
                             f"got {tuple(x.shape)}")
    images, true, swapped = (x.detach().float().cpu() for x in (image_embeds, true_embeds, swapped_embeds))
    return (images * true).sum(1) - (images * swapped).sum(1)
