"""Exercises of notebook 15: counting what trains, a prediction about forgetting, the gradient a head
sends into the tower, and how that gradient depends on the head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipedu.exercises import Exercise, as_number, close, compare_tensors, prediction


# --- 1. what trains -----------------------------------------------------------------------------------------
def _models():
    tower = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 4))
    frozen = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 4))
    for p in frozen[0].parameters():
        p.requires_grad_(False)
    probe = nn.ModuleDict({"tower": nn.Linear(8, 8), "head": nn.Linear(8, 3)})
    probe["tower"].requires_grad_(False)
    return [tower, frozen, probe]


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _check_trainable(fn) -> str | None:
    for module in _models():
        expected, everything = _trainable(module), sum(p.numel() for p in module.parameters())
        got = as_number(fn(module))
        if got is None:
            return f"return one number, the count of trainable parameters; got {type(fn(module)).__name__}."
        if got == expected:
            continue
        if got == everything:
            return (f"you counted all {everything} parameters; {everything - expected} of them are frozen "
                    "(requires_grad is False) and the optimiser never changes them.")
        if got == sum(1 for p in module.parameters() if p.requires_grad):
            return f"you counted parameter tensors ({int(got)}), not the numbers in them: sum p.numel()."
        return f"expected {expected} trainable parameters, got {got:g}."
    return None


trainable = Exercise(
    name="trainable",
    task="my_trainable(module) -> the number of parameters the optimiser can change (requires_grad True)",
    checker=_check_trainable,
    hint_text="module.parameters() yields every parameter tensor; keep those with p.requires_grad and add up "
    "p.numel().",
    solution_code="""
    def my_trainable(module):
        return sum(p.numel() for p in module.parameters() if p.requires_grad)  # frozen ones do not count
    """,
    reference=lambda: _trainable,
    mistakes=[
        (lambda: lambda m: sum(p.numel() for p in m.parameters()), "frozen"),
        (lambda: lambda m: sum(1 for p in m.parameters() if p.requires_grad), "tensors"),
    ],
    success="that is the cost a method pays in memory for gradients and optimiser state.",
)


# --- 2. a prediction ---------------------------------------------------------------------------------------
predict_forgetting = prediction(
    "predict_forgetting",
    "The whole image tower is fine-tuned on shape labels only. Afterwards, zero-shot colour "
    "accuracy (the same text tower, the fine-tuned image tower): does it 'stay' near where it was or "
    "'drop' far below?",
    "drop",
    choices=("stay", "drop"),
    why="Zero-shot needs the image features to stay where the text tower's embeddings expect them. "
    "Fine-tuning moves every weight of the image tower to serve the shape head alone; nothing holds "
    "the features in place, and colour, which the shape head does not need, is not kept.",
    hint="Which loss still rewards the image tower for agreeing with the text tower while it fine-tunes?",
)


# --- 3. the gradient a head sends into the tower (a derivation) ---------------------------------------------
def _gradient_cases():
    g = torch.Generator().manual_seed(4)
    cases = []
    for n, d, k in ((5, 4, 3), (8, 6, 4), (3, 7, 2)):
        cases.append((torch.randn(k, d, generator=g, dtype=torch.float64),
                      torch.randn(k, generator=g, dtype=torch.float64),
                      torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(k, (n,), generator=g)))
    return cases


def _feature_gradient(weight, bias, features, labels):
    p = (features @ weight.T + bias).softmax(dim=-1)  # (N, K)
    y = F.one_hot(labels, weight.shape[0]).to(p.dtype)
    return (p - y) @ weight / len(features)  # (N, D)


def _check_gradient(fn) -> str | None:
    for weight, bias, features, labels in _gradient_cases():
        n, d = features.shape
        call = f"my_feature_gradient(weight {tuple(weight.shape)}, bias, features ({n}, {d}), labels)"
        f = features.clone().requires_grad_(True)
        F.cross_entropy(f @ weight.T + bias, labels).backward()
        expected = f.grad  # autograd's answer
        got = fn(weight.clone(), bias.clone(), features.clone(), labels.clone())
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            got = got.to(torch.float64)
            if close(got, expected * n):
                return (f"{call}: every row is {n} times too large. The loss is the *mean* over the {n} "
                        "examples, so each example's gradient carries 1/N.")
            if close(got, -expected):
                return f"{call}: the sign is flipped: the gradient is W^T (p - y), probabilities minus targets."
        return compare_tensors(f"{call} (checked against autograd)", got, expected, atol=1e-8)
    return None


feature_gradient = Exercise(
    name="feature_gradient",
    task="my_feature_gradient(weight (K, D), bias (K,), features (N, D), labels (N,)) -> d loss / d features, "
    "(N, D), for the mean cross-entropy of a linear head",
    checker=_check_gradient,
    hint_text="With z = W f + b, d loss_i / d z_i = (p_i - y_i) (notebook 05), and d z_i / d f_i = W. The mean "
    "over N examples puts 1/N in front: (P - Y) @ W / N.",
    solution_code="""
    import torch.nn.functional as F


    def my_feature_gradient(weight, bias, features, labels):
        p = (features @ weight.T + bias).softmax(dim=-1)  # (N, K) the head's probabilities
        y = F.one_hot(labels, weight.shape[0]).to(p.dtype)  # (N, K) the targets
        return (p - y) @ weight / len(features)  # (N, D): chain rule through z = W f + b, mean over N
    """,
    reference=lambda: _feature_gradient,
    mistakes=[
        (lambda: lambda w, b, f, y: _feature_gradient(w, b, f, y) * len(f), "1/N"),
        (lambda: lambda w, b, f, y: -_feature_gradient(w, b, f, y), "sign is flipped"),
        (lambda: lambda w, b, f, y: (F.one_hot(y, w.shape[0]).to(w.dtype)) @ w / len(f), "checked against autograd"),
    ],
    success="the head's error (p - y), sent back through W: a head that is already right sends almost nothing.",
    kind="derive",
)


# --- 4. an experiment: how much a head pushes the tower, by its quality ------------------------------------
def experiment_setup():
    """Features (N, D) of a separable 4-class problem, its labels (N,), a random head and a fitted
    probe head, as (weight, bias) pairs: (features, labels, (w_random, b_random), (w_probe, b_probe)).
    The same numbers on every call."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 2
    labels = torch.arange(200) % 4
    features = centres[labels] + torch.randn(200, 16, generator=g)
    w_random, b_random = torch.randn(4, 16, generator=g) * 0.25, torch.zeros(4)
    w, b = w_random.clone().requires_grad_(True), b_random.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([w, b], lr=0.5)
    for _ in range(200):  # a probe: the head alone, fit on the frozen features
        loss = F.cross_entropy(features @ w.T + b, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return features, labels, (w_random, b_random), (w.detach(), b.detach())


def _push(t: float) -> float:
    features, labels, (w0, b0), (w1, b1) = experiment_setup()
    w, b = (1 - t) * w0 + t * w1, (1 - t) * b0 + t * b1
    return float(_feature_gradient(w, b, features, labels).norm(dim=1).mean() * len(features))


def _check_experiment(fn) -> str | None:
    measured = fn()
    if not isinstance(measured, dict):
        return f"return a dict {{t: mean gradient norm}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return f"you measured {len(measured)} setting(s); take at least 3 values of t from 0 (random) to 1 (probe)."
    for t in measured:
        got_t = as_number(t)
        if got_t is None or not 0 <= got_t <= 1:
            return f"each key is a mixing weight t from 0 (the random head) to 1 (the probe head); got {t!r}."
    for t, value in sorted(measured.items()):
        got = as_number(value)
        if got is None:
            return f"the value for t={t} should be one number, got {type(value).__name__}."
        expected = _push(float(t))
        if close(got, expected, rel=1e-4, atol=1e-6):
            continue
        features, labels, (w0, b0), (w1, b1) = experiment_setup()
        head_norm = float(((1 - t) * w0 + t * w1).norm())
        if close(got, head_norm, rel=1e-4, atol=1e-6):
            return (f"for t={t} you reported the norm of the head's weights ({got:.4g}); measure the gradient "
                    "that reaches the features, one (D,) row per example, and average the rows' norms.")
        return (f"for t={t} the checker measured {expected:.4g} (the mean over examples of the norm of each "
                f"example's gradient, with the loss summed, not averaged, over examples), you reported {got:.4g}.")
    return None


def _reference_experiment():
    return {t: _push(t) for t in (0.0, 0.5, 1.0)}


head_push = Exercise(
    name="head_push",
    task="my_experiment() -> {t: mean norm of each example's feature gradient} for heads (1 - t) random + t probe, "
    "at least 3 values of t",
    checker=_check_experiment,
    hint_text="features, labels, (w0, b0), (w1, b1) = nb15.experiment_setup(); for each t mix the heads, take "
    "the loss summed over examples (F.cross_entropy(..., reduction='sum')), its gradient with respect to the "
    "features (requires_grad), and the mean of the rows' norms.",
    solution_code="""
    import torch.nn.functional as F

    from clipedu.exercises import nb15


    def my_experiment():
        features, labels, (w0, b0), (w1, b1) = nb15.experiment_setup()
        pushes = {}
        for t in (0.0, 0.5, 1.0):  # the one thing changed: how good the head is
            w, b = (1 - t) * w0 + t * w1, (1 - t) * b0 + t * b1
            f = features.clone().requires_grad_(True)
            F.cross_entropy(f @ w.T + b, labels, reduction="sum").backward()
            pushes[t] = f.grad.norm(dim=1).mean().item()  # how hard each example pushes its features
        return pushes
    """,
    reference=lambda: _reference_experiment,
    mistakes=[
        (lambda: lambda: {0.0: 1.0, 0.5: 0.5, 1.0: 0.1}, "the checker measured"),
        (lambda: lambda: {0.0: _push(0.0), 1.0: _push(1.0)}, "at least 3"),
        (lambda: lambda: {t: float(((1 - t) * experiment_setup()[2][0] + t * experiment_setup()[3][0]).norm())
                          for t in (0.0, 0.5, 1.0)}, "norm of the head's weights"),
    ],
    success="measured: the better the head, the less it pushes the features it reads.",
    kind="experiment",
)
