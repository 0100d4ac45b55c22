"""Exercises of notebook 13: one process's share of the global loss, and gradient accumulation
that keeps the contrastive batch whole."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipedu.exercises import Exercise, as_number, close, prediction
from clipedu.losses import clip_loss

_TOL = {"rel": 1e-5, "atol": 1e-5}  # losses are compared to 1e-5


def _embeddings(b: int, e: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, e, generator=g), dim=-1)
    txt = F.normalize(img + 0.9 * torch.randn(b, e, generator=g), dim=-1)  # (b, E) paired, not equal
    return img, txt




# --- 1. one process's share of the global loss ----------------------------------------------------------
def _local_loss(img, txt, scale, rank, world):
    b = img.shape[0] // world
    rows = slice(rank * b, (rank + 1) * b)
    labels = torch.arange(b) + rank * b  # the positives of these rows sit at columns rank*b ...
    return (F.cross_entropy(scale * img[rows] @ txt.t(), labels)
            + F.cross_entropy(scale * txt[rows] @ img.t(), labels)) / 2


def _check_local_loss(local_loss) -> str | None:
    for batch, world, scale, seed in ((8, 2, 10.0, 1), (12, 3, 14.3, 2), (8, 4, 5.0, 3)):
        img, txt = _embeddings(batch, seed=seed)
        shares = []
        for rank in range(world):
            b = batch // world
            call = (f"local_loss(image_embeds, text_embeds, scale={scale}, rank={rank}, world={world}) "
                    f"on a batch of {batch}")
            got = local_loss(img.clone(), txt.clone(), scale, rank, world)
            value = as_number(got)
            if value is None:
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                return f"{call} should return one number (the mean over this process's {b} rows), got {shape}."
            expected = _local_loss(img, txt, scale, rank, world).item()
            if close(value, expected, **_TOL):
                shares.append(value)
                continue
            rows = slice(rank * b, (rank + 1) * b)
            own = torch.arange(b)
            diagnoses = [
                (_labels_not_offset(img, txt, scale, rank, world),
                 f"the labels are not offset: rows {rank * b}..{(rank + 1) * b - 1} of the global matrix have their "
                 f"positives at columns rank * b + i = {rank * b}..{(rank + 1) * b - 1}, not 0..{b - 1}"),
                (clip_loss(img[rows], txt[rows], scale),
                 f"that is the loss of this process's own {b} x {b} block: each row must be compared with all "
                 f"{batch} columns (the gathered features), so it has {batch - 1} negatives, not {b - 1}"),
                (F.cross_entropy(scale * img[rows] @ txt.t(), own + rank * b),
                 "that is the image -> text half only; average both directions (this process's texts against "
                 "all images too)"),
                (_local_loss(img, txt, 1.0, rank, world),
                 "the logits must be the cosines times the scale s"),
                (clip_loss(img, txt, scale),
                 f"that is the loss of the whole batch; this process takes only its rows "
                 f"{rank * b}..{(rank + 1) * b - 1}"),
            ]
            for wrong, message in diagnoses:
                if close(value, float(wrong), **_TOL):
                    return f"{call} gave {value:.5g}, expected {expected:.5g}: {message}."
            return (f"{call} gave {value:.5g}, expected {expected:.5g}: the mean over this process's rows of the "
                    "cross-entropy against all columns, both directions, labels offset by rank * b.")
        whole = clip_loss(img, txt, scale).item()
        if not close(sum(shares) / world, whole, **_TOL):  # cannot happen when every share is right
            return f"the {world} shares average to {sum(shares) / world:.5g}, not the global loss {whole:.5g}."
    return None


local_loss = Exercise(
    name="local_loss",
    task="local_loss(image_embeds, text_embeds, scale, rank, world) -> process `rank`'s share of the global loss",
    checker=_check_local_loss,
    hint_text="With b = B // world, this process owns rows rank*b ... rank*b + b - 1. Its image rows against all "
    "B texts give a (b, B) matrix of logits, its text rows against all B images another; the right answer "
    "of local row i is global column rank*b + i. Average the two cross-entropies.",
    solution_code="""
    import torch
    import torch.nn.functional as F


    def local_share_of(image_embeds, text_embeds, scale, rank, world):
        b = image_embeds.shape[0] // world
        rows = slice(rank * b, (rank + 1) * b)  # this device's pairs
        labels = torch.arange(b) + rank * b  # their positives among the global columns
        logits_per_image = scale * image_embeds[rows] @ text_embeds.t()  # (b, B)
        logits_per_text = scale * text_embeds[rows] @ image_embeds.t()  # (b, B)
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    """,
    reference=lambda: _local_loss,
    mistakes=[
        (lambda: _labels_not_offset, "not offset"),
        (lambda: lambda i, t, s, r, w: clip_loss(i[r * (len(i) // w):(r + 1) * (len(i) // w)],
                                                 t[r * (len(i) // w):(r + 1) * (len(i) // w)], s),
         "negatives"),
        (lambda: lambda i, t, s, r, w: F.cross_entropy(
            s * i[r * (len(i) // w):(r + 1) * (len(i) // w)] @ t.t(), torch.arange(len(i) // w) + r * (len(i) // w)),
         "both directions"),
        (lambda: lambda i, t, s, r, w: _local_loss(i, t, 1.0, r, w), "scale"),
        (lambda: lambda i, t, s, r, w: clip_loss(i, t, s), "whole batch"),
        (lambda: lambda i, t, s, r, w: (s * i @ t.t()).diagonal(), "one number"),
    ],
    success="the shares of all processes average to the global loss, and so do their gradients (DDP's mean).",
)


def _labels_not_offset(img, txt, scale, rank, world):
    """A typical mistake: labels 0..b-1 on every process, right on rank 0 only."""
    b = img.shape[0] // world
    rows = slice(rank * b, (rank + 1) * b)
    return (F.cross_entropy(scale * img[rows] @ txt.t(), torch.arange(b))
            + F.cross_entropy(scale * txt[rows] @ img.t(), torch.arange(b))) / 2


# --- 2. gradient accumulation that keeps the batch whole ------------------------------------------------
def _toy_problem(batch: int, seed: int):
    """Two linear 'towers' and a log-scale: small enough to check exactly, real enough to go wrong."""
    g = torch.Generator().manual_seed(seed)
    w_image = torch.nn.Parameter(torch.randn(10, 8, generator=g))
    w_text = torch.nn.Parameter(torch.randn(6, 8, generator=g))
    log_scale = torch.nn.Parameter(torch.tensor(2.0))
    images = torch.randn(batch, 10, generator=g)
    texts = torch.randn(batch, 6, generator=g)
    encode_images = lambda x: F.normalize(x @ w_image, dim=-1)  # noqa: E731  (n, 8)
    encode_texts = lambda x: F.normalize(x @ w_text, dim=-1)  # noqa: E731  (n, 8)
    return (w_image, w_text, log_scale), encode_images, encode_texts, images, texts


def _grads(params):
    return [None if p.grad is None else p.grad.clone() for p in params]


def _whole_batch_grads(batch, seed):
    params, enc_i, enc_t, images, texts = _toy_problem(batch, seed)
    loss = clip_loss(enc_i(images), enc_t(texts), params[2].exp())
    loss.backward()
    return loss.item(), _grads(params)


def _naive_grads(batch, seed, k):
    params, enc_i, enc_t, images, texts = _toy_problem(batch, seed)
    m = batch // k
    for j in range(k):
        part = slice(j * m, (j + 1) * m)
        (clip_loss(enc_i(images[part]), enc_t(texts[part]), params[2].exp()) / k).backward()
    return _grads(params)


def _reference_accumulate(encode_images, encode_texts, log_scale, images, texts, k):
    m = images.shape[0] // k
    parts = [slice(j * m, (j + 1) * m) for j in range(k)]
    with torch.no_grad():  # 1. every micro-batch's features, no graph
        cached_images = [encode_images(images[p]) for p in parts]  # k x (m, E)
        cached_texts = [encode_texts(texts[p]) for p in parts]
    for j, p in enumerate(parts):  # 2. one micro-batch with gradients at a time
        image_embeds = torch.cat(cached_images[:j] + [encode_images(images[p])] + cached_images[j + 1:])  # (B, E)
        text_embeds = torch.cat(cached_texts[:j] + [encode_texts(texts[p])] + cached_texts[j + 1:])  # (B, E)
        scale = log_scale.exp() if j == k - 1 else log_scale.exp().detach()  # 3. the scale's gradient once
        loss = clip_loss(image_embeds, text_embeds, scale)
        loss.backward()
    return loss


_NAMES = ("the image tower's weights", "the text tower's weights", "logit_scale")


def _check_accumulate(accumulate) -> str | None:
    for batch, k, seed in ((8, 2, 1), (12, 3, 2), (16, 4, 3)):
        call = f"accumulate(..., k={k}) on a batch of {batch}"
        loss, expected = _whole_batch_grads(batch, seed)
        params, enc_i, enc_t, images, texts = _toy_problem(batch, seed)
        result = accumulate(enc_i, enc_t, params[2], images, texts, k)
        got = _grads(params)
        if all(g is None for g in got):
            return f"{call} left every .grad empty: call .backward() on the loss of each pass."
        value = as_number(result)
        if value is not None and not close(value, loss, **_TOL):
            return (f"{call} returned the loss {value:.5g}, but the whole batch's loss is {loss:.5g}: every pass "
                    "computes the loss of the whole batch (cached features with one micro-batch fresh).")
        wrong = [n for n, g, e in zip(_NAMES, got, expected)
                 if g is None or not torch.allclose(g, e, atol=1e-5, rtol=1e-4)]
        if not wrong:
            continue
        naive = _naive_grads(batch, seed, k)
        if all(g is not None and torch.allclose(g, n, atol=1e-5, rtol=1e-4) for g, n in zip(got, naive)):
            return (f"{call}: these are the gradients of each micro-batch's own loss, where every row has only "
                    f"{batch // k - 1} negatives instead of {batch - 1}. Cache the features of all micro-batches "
                    "first and compute the loss of the whole batch in every pass.")
        if all(g is not None and torch.allclose(g * k, e, atol=1e-5, rtol=1e-4) for g, e in zip(got, expected)):
            return (f"{call}: every gradient is 1/{k} of the right one. Do not divide the loss by k: each pass "
                    "backpropagates the whole batch's loss into one micro-batch's share of the gradient.")
        if wrong == ["logit_scale"] and got[2] is not None:
            ratio = (got[2] / expected[2]).item()
            if abs(ratio - k) < 1e-3:
                return (f"{call}: the towers' gradients are right, but logit_scale's is {k} times too large. The "
                        "scale enters the loss directly in every pass, so its gradient was added once per "
                        "micro-batch; let it carry a gradient in one pass only (detach it in the others).")
            return f"{call}: the towers' gradients are right, but logit_scale's is {ratio:.3g} times the right one."
        if wrong == ["logit_scale"]:
            return (f"{call}: logit_scale got no gradient; it must carry one in exactly one pass "
                    "(detach it in the others, not in all).")
        return f"{call}: the gradient of {', '.join(wrong)} differs from the whole batch's."
    return None


accumulate = Exercise(
    name="accumulate",
    task="accumulate(encode_images, encode_texts, log_scale, images, texts, k) -> fill .grad with the whole "
    "batch's gradient, one micro-batch with a graph at a time",
    checker=_check_accumulate,
    hint_text="First, under torch.no_grad(), encode every micro-batch and keep the features. Then for each "
    "micro-batch j: encode it again with gradients, put those features in place of its cached ones "
    "(torch.cat of the pieces), take clip_loss of the whole batch and call backward. The scale "
    "log_scale.exp() appears in every pass: use log_scale.exp().detach() in all passes but one.",
    solution_code="""
    import torch

    from clipedu.losses import clip_loss


    def accumulate(encode_images, encode_texts, log_scale, images, texts, k):
        m = images.shape[0] // k
        parts = [slice(j * m, (j + 1) * m) for j in range(k)]
        with torch.no_grad():  # features of every micro-batch, no graph
            cached_images = [encode_images(images[p]) for p in parts]
            cached_texts = [encode_texts(texts[p]) for p in parts]
        for j, p in enumerate(parts):  # one micro-batch with a graph at a time
            image_embeds = torch.cat(cached_images[:j] + [encode_images(images[p])] + cached_images[j + 1:])
            text_embeds = torch.cat(cached_texts[:j] + [encode_texts(texts[p])] + cached_texts[j + 1:])
            scale = log_scale.exp() if j == k - 1 else log_scale.exp().detach()  # its gradient once
            loss = clip_loss(image_embeds, text_embeds, scale)
            loss.backward()
        return loss
    """,
    reference=lambda: _reference_accumulate,
    mistakes=[
        (lambda: _own_loss_per_micro_batch, "negatives"),
        (lambda: _scale_every_pass, "logit_scale"),
        (lambda: _divided_by_k, "1/"),
        (lambda: lambda ei, et, ls, x, y, k: clip_loss(ei(x), et(y), ls.exp()), ".backward()"),
    ],
    success="the sum of the k backward passes is the whole batch's gradient, with the memory of one micro-batch.",
)


def _own_loss_per_micro_batch(encode_images, encode_texts, log_scale, images, texts, k):
    """A typical mistake: accumulation as for classification, each micro-batch's own loss / k."""
    m = images.shape[0] // k
    for j in range(k):
        part = slice(j * m, (j + 1) * m)
        (clip_loss(encode_images(images[part]), encode_texts(texts[part]), log_scale.exp()) / k).backward()


def _cached_passes(encode_images, encode_texts, log_scale, images, texts, k, scale_every_pass, divide_by_k):
    """Accumulation with cached features, with one of two typical mistakes switched on."""
    m = images.shape[0] // k
    parts = [slice(j * m, (j + 1) * m) for j in range(k)]
    with torch.no_grad():
        ci, ct = [encode_images(images[p]) for p in parts], [encode_texts(texts[p]) for p in parts]
    for j, p in enumerate(parts):
        img = torch.cat(ci[:j] + [encode_images(images[p])] + ci[j + 1:])
        txt = torch.cat(ct[:j] + [encode_texts(texts[p])] + ct[j + 1:])
        keep_graph = scale_every_pass or j == k - 1
        loss = clip_loss(img, txt, log_scale.exp() if keep_graph else log_scale.exp().detach())
        (loss / k if divide_by_k else loss).backward()
    return None if divide_by_k else loss


def _scale_every_pass(encode_images, encode_texts, log_scale, images, texts, k):
    """A typical mistake: the scale keeps its graph in every pass, so its gradient is counted k times."""
    return _cached_passes(encode_images, encode_texts, log_scale, images, texts, k, True, False)


def _divided_by_k(encode_images, encode_texts, log_scale, images, texts, k):
    """A typical mistake: the habit from classification, dividing each pass's loss by k."""
    return _cached_passes(encode_images, encode_texts, log_scale, images, texts, k, False, True)


# --- 3. a prediction: the per-device loss of an untrained model ------------------------------------------
predict_per_device = prediction(
    "predict_per_device",
    "B = 16 pairs on N = 4 devices, each taking the loss of its own 4 pairs. For the untrained model, is the "
    "mean of the four losses near 'ln 16' or near 'ln 4'?",
    "ln 4",
    choices=("ln 16", "ln 4"),
    why="Each device's softmax runs over its own b = 4 captions, and a model that cannot tell them apart gives "
    "each about 1/4: a loss of about ln 4 = 1.39 per device, so their mean too. The question got easier, "
    "the model did not get better.",
    hint="Section 1: a model that cannot tell the pairs apart scores ln of the number of candidates in each softmax.",
)


# --- 4. the gradient on the scale (a derivation) ---------------------------------------------------------
def _scale_cases():
    cases = []
    for b, seed, s in ((6, 1, 14.3), (10, 2, 3.0), (4, 3, 50.0)):
        img, txt = _embeddings(b, e=8, seed=seed)
        cases.append((img.double(), txt.double(), s))
    return cases


def _softmaxes(img, txt, s):
    cos = img @ txt.t()  # (B, B)
    p, q = (s * cos).softmax(dim=1), (s * cos).softmax(dim=0)  # rows: texts per image; columns: images per text
    return cos, p, q, torch.eye(len(img), dtype=cos.dtype)


def _ref_scale_grad(img, txt, s):
    cos, p, q, y = _softmaxes(img, txt, s)
    return (((p - y) + (q - y)) * cos).sum() / (2 * len(img))


def _check_scale_grad(fn) -> str | None:
    for img, txt, s in _scale_cases():
        b = len(img)
        call = f"my_scale_grad(image_embeds ({b}, 8), text_embeds ({b}, 8), scale={s})"
        leaf = torch.tensor(s, dtype=torch.float64, requires_grad=True)
        clip_loss(img, txt, leaf).backward()
        expected = leaf.grad.item()  # autograd's answer
        got = as_number(fn(img.clone(), txt.clone(), s))
        if got is None:
            return f"{call} should return one number, dL/ds."
        if close(got, expected, rel=1e-6, atol=1e-9):
            continue
        cos, p, q, y = _softmaxes(img, txt, s)
        wrong = [
            (-expected, "the sign is reversed: the gradient is (1/2B) sum_ij [(p_ij - y_ij) + (q_ij - y_ij)] cos_ij"),
            (s * expected, "that is dL/d(log s) = s dL/ds, the gradient on logit_scale; the question is dL/ds"),
            (((p - y) * cos).sum().item() / b, "you kept only the image-to-text direction (the row softmax p); "
             "the loss averages two cross-entropies, so the column softmax q adds its own term, each halved"),
            (((p + q) * cos).sum().item() / (2 * b), "you left out the labels: each direction contributes "
             "(softmax - onehot), so the positives' cosines are subtracted"),
            (2 * b * expected, "the sum needs its normalisation: the loss is a mean over B rows and B columns, "
             "halved, so divide the sum by 2B"),
        ]
        for value, message in wrong:
            if close(got, value, rel=1e-6, atol=1e-9):
                return f"{call} gave {got:.6g}, autograd gives {expected:.6g}: {message}."
        return f"{call} gave {got:.6g}; autograd's gradient of clip_loss with respect to the scale is {expected:.6g}."
    return None


scale_gradient = Exercise(
    name="scale_gradient",
    task="my_scale_grad(image_embeds (B, E), text_embeds (B, E), scale) -> dL/ds of clip_loss, in closed form",
    checker=_check_scale_grad,
    hint_text="Every logit is s cos_ij, so dL/ds = sum_ij (dL/dlogit_ij) cos_ij. With the row softmax p and "
    "the column softmax q of the logits, dL/dlogit_ij = [(p_ij - y_ij) + (q_ij - y_ij)] / (2B), y the identity.",
    solution_code="""
    import torch


    def my_scale_grad(image_embeds, text_embeds, scale):
        cos = image_embeds @ text_embeds.t()  # (B, B)
        p, q = (scale * cos).softmax(dim=1), (scale * cos).softmax(dim=0)  # rows and columns
        y = torch.eye(len(cos), dtype=cos.dtype)
        return (((p - y) + (q - y)) * cos).sum() / (2 * len(cos))
    """,
    reference=lambda: _ref_scale_grad,
    mistakes=[
        (lambda: lambda i, t, s: -_ref_scale_grad(i, t, s), "sign"),
        (lambda: lambda i, t, s: s * _ref_scale_grad(i, t, s), "log s"),
        (lambda: lambda i, t, s: (lambda c, p, q, y: ((p - y) * c).sum() / len(c))(*_softmaxes(i, t, s)),
         "column softmax"),
        (lambda: lambda i, t, s: (lambda c, p, q, y: ((p + q) * c).sum() / (2 * len(c)))(*_softmaxes(i, t, s)),
         "labels"),
    ],
    success="the scale grows while the positives' cosines beat the softmax-weighted average cosine: a sharper "
    "softmax pays only when the pairs are told apart.",
    kind="derive",
)


# --- 5. an experiment: the loss over k blocks of one batch ---------------------------------------------
def experiment_setup():
    """Fixed embeddings of 256 pairs, like a partly trained model's (each text near its image), and the
    scale: (image_embeds (256, 32), text_embeds (256, 32), scale). The same numbers on every call."""
    g = torch.Generator().manual_seed(13)
    img = F.normalize(torch.randn(256, 32, generator=g), dim=-1)
    txt = F.normalize(img + 0.8 * torch.randn(256, 32, generator=g), dim=-1)
    return img, txt, 10.0


def _blocks_loss(k: int) -> float:
    from clipedu.distributed import per_device_clip_loss

    img, txt, scale = experiment_setup()
    return per_device_clip_loss(img, txt, scale, chunks=k).item()


def _check_blocks(fn) -> str | None:
    measured = fn()
    if not isinstance(measured, dict):
        return f"return a dict {{k: loss over k blocks}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} value(s) of k; an experiment needs at least 3 to show a trend "
                "(e.g. 1, 4, 16).")
    for k in measured:
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0 or 256 % k:
            return f"each key is a number of blocks k that divides the batch of 256 (1, 2, 4, ..., 256); got {k!r}."
    if 1 not in measured:
        return "include the baseline k = 1, the loss over the whole batch."
    whole = _blocks_loss(1)
    for k, value in sorted(measured.items()):
        got = as_number(value)
        if got is None:
            return f"the loss for k={k} should be one number, got {type(value).__name__}."
        expected = _blocks_loss(k)
        if close(got, expected, rel=1e-4, atol=1e-5):
            continue
        if k > 1 and close(got, whole, rel=1e-4, atol=1e-5):
            return (f"for k={k} you reported {got:.4f}, the loss of the whole batch; cut the batch into {k} blocks "
                    f"of {256 // k} pairs, take each block's own loss and average them ({expected:.4f}).")
        if close(got, math.log(256 / k), rel=1e-4, atol=1e-5):
            return (f"for k={k} you reported ln({256 // k}) = {got:.4f}, the loss of a model that guesses; the "
                    f"checker measured the loss of these embeddings, {expected:.4f}.")
        return (f"for k={k} the checker measured a loss of {expected:.4f} over {k} blocks, you reported "
                f"{got:.4f}. Use per_device_clip_loss(image_embeds, text_embeds, scale, chunks=k).")
    return None


def _reference_blocks():
    return {k: _blocks_loss(k) for k in (1, 4, 16)}


blocks_loss = Exercise(
    name="blocks_loss",
    task="my_experiment() -> {k: loss}: the mean of the CLIP losses of k blocks of nb13.experiment_setup()'s "
    "batch, for at least 3 values of k, k = 1 among them",
    checker=_check_blocks,
    hint_text="image_embeds, text_embeds, scale = nb13.experiment_setup(); for each k, "
    "per_device_clip_loss(image_embeds, text_embeds, scale, chunks=k).item().",
    solution_code="""
    from clipedu.distributed import per_device_clip_loss
    from clipedu.exercises import nb13


    def my_experiment():
        image_embeds, text_embeds, scale = nb13.experiment_setup()  # 256 pairs
        return {k: per_device_clip_loss(image_embeds, text_embeds, scale, chunks=k).item()
                for k in (1, 4, 16)}  # the one thing changed: how many blocks the loss is cut into
    """,
    reference=lambda: _reference_blocks,
    mistakes=[
        (lambda: lambda: {1: 3.0, 4: 2.0, 16: 1.0}, "the checker measured"),
        (lambda: lambda: {1: _blocks_loss(1), 16: _blocks_loss(16)}, "at least 3"),
        (lambda: lambda: {k: _blocks_loss(1) for k in (1, 4, 16)}, "whole batch"),
        (lambda: lambda: {k: math.log(256 / k) for k in (1, 4, 16)}, "guesses"),
        (lambda: lambda: {k: _blocks_loss(k) for k in (2, 4, 16)}, "baseline"),
    ],
    success="the same embeddings, a lower loss the more blocks: fewer negatives per row make an easier question, "
    "not a better model.",
    kind="experiment",
)
