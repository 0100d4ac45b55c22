"""Exercises of notebook 05: the loss of a model that knows nothing (a prediction), InfoNCE for one row, the
symmetric loss, the temperature on embeddings that mean nothing (an experiment), and the gradient (p - y) / tau."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipedu.exercises import Exercise, as_number, close, compare_tensors, prediction
from clipedu.losses import clip_loss


def _similarity_cases() -> list[tuple[torch.Tensor, int, float]]:
    """(similarities (B, B), row, tau): rows whose positive is not the largest entry included."""
    g = torch.Generator().manual_seed(5)
    cases = []
    for b, row, tau in ((4, 0, 0.07), (6, 3, 0.5), (5, 4, 1.0), (8, 2, 0.02)):
        img = F.normalize(torch.randn(b, 16, generator=g), dim=-1)
        txt = F.normalize(img + 0.8 * torch.randn(b, 16, generator=g), dim=-1)
        cases.append((img @ txt.t(), row, tau))  # (B, B) cosines, not symmetric
    return cases


def _as_number(name: str, got, advice: str) -> tuple[float | None, str | None]:
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            return None, (
                f"{name} should be a single number (a 0-dim tensor or a float), got a tensor of shape "
                f"{tuple(got.shape)}: {advice}."
            )
        return float(got.detach()), None
    try:
        return float(got), None
    except (TypeError, ValueError):
        return None, f"{name} should be a number, got {type(got).__name__}."


# --- 1. InfoNCE for one row ---------------------------------------------------------------------------
def _row_loss(sims: torch.Tensor, row: int, tau: float) -> float:
    return -(sims[row] / tau).log_softmax(0)[row].item()


def _check_infonce_row(infonce_row) -> str | None:
    for sims, row, tau in _similarity_cases():
        call = f"infonce_row(similarities, row={row}, tau={tau}) on a {tuple(sims.shape)} matrix"
        value, problem = _as_number(call, infonce_row(sims.clone(), row, tau),
                                    "the loss of one row is one entry of -log p, the positive's")
        if problem:
            return problem
        expected = _row_loss(sims, row, tau)
        if close(value, expected):
            continue
        p = (sims[row] / tau).softmax(0)[row].item()
        diagnoses = [
            (_row_loss(sims, row, 1.0), "you did not divide the similarities by the temperature tau"),
            (_row_loss(sims * tau * tau, row, tau), "you multiplied by tau; the logits are similarities / tau"),
            (-expected, "the sign is flipped: the loss is minus the log-probability of the positive"),
            (-p, "that is minus the probability itself; the loss is minus its log"),
            (1 - p, "that is 1 - p; the loss is -log p"),
            (-(sims[:, row] / tau).log_softmax(0)[row].item(),
             f"you took the softmax over column {row} (text {row} against every image); this exercise wants "
             f"row {row}: image {row} against every text"),
            (-(sims[row] / tau).log_softmax(0)[0].item() if row != 0 else float("nan"),
             f"the positive of row {row} is entry {row} (on the diagonal), not entry 0"),
        ]
        for wrong, message in diagnoses:
            if close(value, wrong):
                return f"{call} gave {value:.5g}, expected {expected:.5g}: {message}."
        return f"{call} gave {value:.5g}, expected {expected:.5g} (= -log softmax(similarities[row] / tau)[row])."
    return None


infonce_row = Exercise(
    name="infonce_row",
    task="infonce_row(similarities, row, tau) -> the InfoNCE loss of image `row`: -log softmax(sims[row] / tau)[row]",
    checker=_check_infonce_row,
    hint_text="The logits of row i are similarities[i] / tau, a vector of B numbers. Softmax turns them into "
    "probabilities over the B texts; the loss is minus the log of the probability at position i. "
    "`.log_softmax(dim=0)` does softmax and log in one stable step.",
    solution_code="""
    def infonce_row(similarities, row, tau):
        logits = similarities[row] / tau  # (B,) image `row` against every text
        return -logits.log_softmax(dim=0)[row]  # the positive sits on the diagonal
    """,
    reference=lambda: lambda sims, row, tau: -(sims[row] / tau).log_softmax(0)[row],
    mistakes=[
        (lambda: lambda sims, row, tau: -sims[row].log_softmax(0)[row], "temperature tau"),
        (lambda: lambda sims, row, tau: (sims[row] / tau).log_softmax(0)[row], "sign"),
        (lambda: lambda sims, row, tau: -(sims[row] / tau).softmax(0)[row], "its log"),
        (lambda: lambda sims, row, tau: -(sims[:, row] / tau).log_softmax(0)[row], "column"),
        (lambda: lambda sims, row, tau: -(sims[row] / tau).log_softmax(0), "single number"),
    ],
    success="that is InfoNCE for one image: a B-way classification whose right answer is its own caption.",
)


# --- 2. the symmetric loss from a logits matrix -------------------------------------------------------
def _logit_cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [torch.randn(b, b, generator=g) * 3 + torch.eye(b) * 2 for b in (3, 5, 8)]  # (B, B), not symmetric


def _symmetric(logits: torch.Tensor) -> float:
    labels = torch.arange(logits.shape[0])
    return ((F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2).item()


def _check_symmetric(symmetric_loss) -> str | None:
    for logits in _logit_cases():
        b = logits.shape[0]
        call = f"symmetric_loss(logits) on a ({b}, {b}) matrix"
        value, problem = _as_number(call, symmetric_loss(logits.clone()),
                                    "average each direction over the batch, then the two directions")
        if problem:
            return problem
        expected = _symmetric(logits)
        if close(value, expected):
            continue
        labels = torch.arange(b)
        rows = F.cross_entropy(logits, labels).item()
        cols = F.cross_entropy(logits.t(), labels).item()
        diagnoses = [
            (rows, f"that is only the image-to-text direction (softmax over each row, {rows:.5g}); average it "
                   "with the text-to-image direction (softmax over each column)"),
            (cols, f"that is only the text-to-image direction (softmax over each column, {cols:.5g}); average "
                   "it with the image-to-text direction (softmax over each row)"),
            (rows + cols, "that is the sum of the two directions; CLIP takes their average (divide by 2)"),
            (b * expected, "you summed over the batch; take the mean over the B rows and columns"),
            (-expected, "the sign is flipped: each term is minus a log-probability"),
        ]
        for wrong, message in diagnoses:
            if close(value, wrong):
                return f"{call} gave {value:.5g}, expected {expected:.5g}: {message}."
        return (
            f"{call} gave {value:.5g}, expected {expected:.5g}: the mean over rows of -log softmax(row)[i], the "
            f"same over columns, then the average of the two (rows alone give {rows:.5g}, columns {cols:.5g})."
        )
    return None


symmetric_loss = Exercise(
    name="symmetric_loss",
    task="symmetric_loss(logits) -> CLIP's loss from a (B, B) logits matrix: the mean of both directions",
    checker=_check_symmetric,
    hint_text="Two classification problems share one matrix. Image to text: log_softmax over dim=1, the "
    "diagonal, minus the mean. Text to image: the same over dim=0. The loss is their average. "
    "(F.cross_entropy(logits, labels) with labels = torch.arange(B) does one direction.)",
    solution_code="""
    import torch
    import torch.nn.functional as F


    def symmetric_loss(logits):
        labels = torch.arange(logits.shape[0])
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    """,
    reference=lambda: lambda logits: torch.tensor(_symmetric(logits)),
    mistakes=[
        (lambda: lambda logits: F.cross_entropy(logits, torch.arange(len(logits))), "only the image-to-text"),
        (lambda: lambda logits: F.cross_entropy(logits.t(), torch.arange(len(logits))), "only the text-to-image"),
        (lambda: lambda logits: F.cross_entropy(logits, torch.arange(len(logits)))
         + F.cross_entropy(logits.t(), torch.arange(len(logits))), "average"),
        (lambda: lambda logits: len(logits) * _symmetric(logits), "mean over the B"),
        (lambda: lambda logits: torch.stack([-logits.log_softmax(1).diagonal(), -logits.log_softmax(0).diagonal()]),
         "single number"),
    ],
    success="that is the loss CLIP trains on, the line inside clipedu.losses.clip_loss.",
)


# --- 3. the gradient (p - y) / tau --------------------------------------------------------------------
def _gradient(sims_row: torch.Tensor, positive: int, tau: float) -> torch.Tensor:
    s = sims_row.detach().clone().double().requires_grad_()
    loss = -(s / tau).log_softmax(0)[positive]
    (grad,) = torch.autograd.grad(loss, s)
    return grad.float()


def _check_gradient(loss_gradient) -> str | None:
    for sims, row, tau in _similarity_cases():
        s = sims[row]
        call = f"loss_gradient(similarities_row, positive={row}, tau={tau})"
        got = loss_gradient(s.clone(), row, tau)
        expected = _gradient(s, row, tau)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
            return compare_tensors(call, got, expected)
        got = got.detach().float()
        if torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
            continue
        p = (s / tau).softmax(0)
        y = F.one_hot(torch.tensor(row), len(s)).float()
        diagnoses = [
            (p - y, "that is d loss / d logit = p - y; the logits are similarities / tau, so the chain rule "
                    "divides by tau"),
            (p / tau, "you forgot to subtract the target y (1 at the positive, 0 elsewhere): the positive's "
                      "gradient must be negative"),
            ((y - p) / tau, "the sign is flipped: the gradient is (p - y) / tau, negative on the positive"),
            ((p - y) * tau, "you multiplied by tau; the chain rule through logits = similarities / tau divides"),
        ]
        for wrong, message in diagnoses:
            if torch.allclose(got, wrong, atol=1e-4, rtol=1e-4):
                return f"{call}: {message}."
        return compare_tensors(call, got, expected, atol=1e-4)
    return None


loss_gradient = Exercise(
    name="loss_gradient",
    task="loss_gradient(similarities_row, positive, tau) -> d loss / d similarity, the (M,) vector (p - y) / tau",
    checker=_check_gradient,
    hint_text="The loss is -log softmax(z)[positive] with z = similarities_row / tau. Its derivative in z is "
    "softmax(z) minus the one-hot target; then the chain rule through z = s / tau.",
    solution_code="""
    import torch


    def loss_gradient(similarities_row, positive, tau):
        p = (similarities_row / tau).softmax(dim=0)  # (M,)
        y = torch.zeros_like(p)
        y[positive] = 1.0  # the one-hot target
        return (p - y) / tau  # chain rule through z = s / tau
    """,
    reference=lambda: lambda s, positive, tau: (
        (s / tau).softmax(0) - F.one_hot(torch.tensor(positive), len(s)).float()
    ) / tau,
    mistakes=[
        (lambda: lambda s, positive, tau: (s / tau).softmax(0) - F.one_hot(torch.tensor(positive), len(s)).float(),
         "divides by tau"),
        (lambda: lambda s, positive, tau: (s / tau).softmax(0) / tau, "subtract the target"),
        (lambda: lambda s, positive, tau: (F.one_hot(torch.tensor(positive), len(s)).float() - (s / tau).softmax(0))
         / tau, "sign"),
        (lambda: lambda s, positive, tau: ((s / tau).softmax(0) - 1.0)[positive], "shape"),
    ],
    success="every negative is pushed down in proportion to how much probability it steals, and the "
    "positive is pulled up by exactly what they steal together (the vector sums to zero).",    kind="derive",
)


# --- 4. a prediction: the loss of a model that cannot tell the pairs apart ---------------------------
predict_uniform_loss = prediction(
    "predict_uniform_loss",
    "A model gives all 8 captions of a batch the same logit for every image (and all 8 images the same for "
    "every caption). What is its symmetric loss? One number.",
    round(math.log(8), 3),
    why="Every softmax is uniform, so the positive gets p = 1/8 in each row and each column: -log(1/8) = ln 8 "
    "= 2.079 in both directions, and their average is the same. The cell prints ln 8 next to the untrained "
    "model's loss, which is close to it.",
    hint="What probability does a uniform softmax over 8 captions give the right one? The loss is minus its log; "
    "the two directions are averaged, not added.",
    wrong=(0.125, 8.0, 2 * math.log(8), 0.0),
)


# --- 5. an experiment: the temperature on embeddings that mean nothing -------------------------------
def experiment_setup():
    """16 random image embeddings and 16 random text embeddings (unit vectors in 32 dimensions), unrelated to
    each other and the same on every call: a model that has learned nothing."""
    g = torch.Generator().manual_seed(50)
    images = F.normalize(torch.randn(16, 32, generator=g), dim=-1)
    texts = F.normalize(torch.randn(16, 32, generator=g), dim=-1)
    return images, texts


def _check_temperature_experiment(fn) -> str | None:
    images, texts = experiment_setup()
    measured = fn()
    if not isinstance(measured, dict):
        return f"return a dict {{tau: the loss at that temperature}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} temperature(s); take at least 3, CLIP's start 0.07 among them, to "
                "see a trend (e.g. 1.0, 0.07 and 0.01).")
    for tau in measured:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 1e-3 <= tau <= 100:
            return f"each key is a temperature tau, a number from 0.001 to 100; got {tau!r}."
    if not any(abs(tau - 0.07) < 1e-9 for tau in measured):
        return "include the baseline, CLIP's starting temperature tau = 0.07, to compare the others with."
    for tau, value in sorted(measured.items()):
        got = as_number(value)
        if got is None:
            return (f"for tau = {tau} you returned {type(value).__name__}; the measurement is one number, "
                    "clip_loss(images, texts, 1 / tau).")
        expected = clip_loss(images, texts, 1 / tau).item()
        if abs(got - expected) <= 1e-4 * max(1.0, abs(expected)):
            continue
        if abs(got - clip_loss(images, texts, tau).item()) <= 1e-4 * max(1.0, abs(got)):
            return (f"for tau = {tau} you passed tau itself as the scale; clip_loss takes s = 1 / tau (the logits "
                    f"are cosines / tau), which gives {expected:.4f}.")
        labels = torch.arange(len(images))
        rows = F.cross_entropy(images @ texts.t() / tau, labels).item()
        if abs(got - rows) <= 1e-4 * max(1.0, abs(rows)):
            return (f"for tau = {tau} you measured only the image-to-text direction; CLIP's loss averages it with "
                    f"text-to-image: clip_loss gives {expected:.4f}.")
        return (f"for tau = {tau} the checker measured clip_loss(images, texts, 1 / tau) = {expected:.4f} on the "
                f"same embeddings; you reported {got:.4f}.")
    return None


def _reference_temperature_experiment():
    images, texts = experiment_setup()
    return {tau: clip_loss(images, texts, 1 / tau).item() for tau in (1.0, 0.07, 0.01)}


temperature_experiment = Exercise(
    name="temperature_experiment",
    task="my_experiment() -> {tau: clip_loss of the setup's random embeddings at scale 1 / tau}, for at least 3 "
    "temperatures, 0.07 included",
    checker=_check_temperature_experiment,
    hint_text="images, texts = nb05.experiment_setup(); for each tau: clip_loss(images, texts, 1 / tau).item() "
    "(the third argument is the scale s = 1 / tau).",
    solution_code="""
    from clipedu.exercises import nb05
    from clipedu.losses import clip_loss


    def my_experiment():
        images, texts = nb05.experiment_setup()  # (16, 32) each: random, unrelated unit vectors
        return {tau: clip_loss(images, texts, 1 / tau).item() for tau in (1.0, 0.07, 0.01)}  # s = 1 / tau
    """,
    reference=lambda: _reference_temperature_experiment,
    mistakes=[
        (lambda: lambda: {1.0: 2.77, 0.07: 2.77, 0.01: 2.77}, "the checker measured"),
        (lambda: lambda: {tau: v for tau, v in list(_reference_temperature_experiment().items())[:2]}, "at least 3"),
        (lambda: lambda: {tau: clip_loss(*experiment_setup(), 1 / tau).item() for tau in (1.0, 0.1, 0.01)},
         "baseline"),
        (lambda: lambda: {tau: clip_loss(*experiment_setup(), tau).item() for tau in (1.0, 0.07, 0.01)},
         "scale"),
        (lambda: lambda: {tau: F.cross_entropy(experiment_setup()[0] @ experiment_setup()[1].t() / tau,
                                               torch.arange(16)).item() for tau in (1.0, 0.07, 0.01)},
         "only the image-to-text"),
        (lambda: lambda: {tau: torch.ones(2) for tau in (1.0, 0.07, 0.01)}, "one number"),
    ],
    success="on embeddings that mean nothing the loss levels off at ln 16 = 2.77 at high temperatures and grows "
    "as tau falls: a sharp softmax makes confident guesses, and here every guess is a lottery. A model that knows "
    "nothing is best off with a flat softmax.",
    kind="experiment",
)
