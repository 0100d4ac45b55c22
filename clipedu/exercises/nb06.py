"""Exercises of notebook 06: gradient clipping, Adam's first step (a prediction and a derivation), clipping
against a bad batch (an experiment), the learning-rate schedule, and the collapse measure."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from clipedu.exercises import Exercise, as_number, close, compare_tensors, prediction
from clipedu.recipe import make_scheduler


# --- 1. warm-up and cosine decay -----------------------------------------------------------------------
def _scheduler_lrs(base_lr: float, warmup_steps: int, total_steps: int) -> list[float]:
    """The learning rate of optimiser steps 0 .. total_steps, read from clipedu.recipe.make_scheduler."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = make_scheduler(opt, warmup_steps, total_steps)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": nothing is trained here
        for _ in range(total_steps + 1):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return lrs


_SCHEDULES = ((2e-3, 10, 100), (1e-3, 4, 30), (0.5, 1, 12), (3e-4, 25, 26))


def _check_learning_rate(learning_rate) -> str | None:
    for base, warmup, total in _SCHEDULES:
        expected = _scheduler_lrs(base, warmup, total)
        for step, want in enumerate(expected):
            call = f"learning_rate({step}, base_lr={base}, warmup_steps={warmup}, total_steps={total})"
            raw = learning_rate(step, base, warmup, total)
            value = as_number(raw)
            if value is None:
                return f"{call} should return one number (a float), got {type(raw).__name__}."
            if close(value, want, atol=1e-12):
                continue
            where = "during the warm-up" if step < warmup else "after the warm-up"
            advice = ""
            after = (step - warmup) / max(1, total - warmup)  # the cosine's phase after the warm-up
            if step == 0 and close(value, 0.0, atol=1e-12):
                advice = (" The warm-up starts at base_lr / warmup_steps, not at 0: a step with learning rate 0 "
                          "would be wasted.")
            elif step < warmup and close(value, base * 0.5 * (1 + math.cos(math.pi * step / total)), atol=1e-12):
                advice = " There is no warm-up in your schedule: for warmup_steps steps it should rise linearly."
            elif step < warmup and close(value, base * step / warmup, atol=1e-12):
                advice = " The warm-up starts at base_lr / warmup_steps at step 0, not at 0, and rises by equal steps."
            elif step >= warmup and close(value, base * 0.5 * (1 + math.cos(math.pi * step / total)), atol=1e-12):
                advice = (" The cosine runs over the steps *after* the warm-up: its phase is "
                          "(step - warmup_steps) / (total_steps - warmup_steps).")
            elif step >= warmup and close(value, base * math.cos(0.5 * math.pi * after), atol=1e-12):
                advice = " Use the half-cosine 0.5 * (1 + cos(pi * phase)), which is flat at both ends."
            elif step >= warmup and close(value, base * 0.5 * (1 - math.cos(math.pi * after)), atol=1e-12):
                advice = " Your cosine rises; it should fall from base_lr after the warm-up to 0 at total_steps."
            return f"{call} gave {value:.6g}, expected {want:.6g} ({where}).{advice}"
    return None


def _reference_learning_rate():
    def learning_rate(step, base_lr, warmup_steps, total_steps):
        if step < warmup_steps:
            return base_lr * (1 / warmup_steps + (1 - 1 / warmup_steps) * step / warmup_steps)
        phase = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return base_lr * 0.5 * (1 + math.cos(math.pi * phase))

    return learning_rate


learning_rate = Exercise(
    name="learning_rate",
    task="learning_rate(step, base_lr, warmup_steps, total_steps) -> the learning rate of optimiser step `step`",
    checker=_check_learning_rate,
    hint_text="Two pieces. While step < warmup_steps the rate rises on a straight line from base_lr / warmup_steps "
    "(step 0) to base_lr (step warmup_steps). After that, phase = (step - warmup_steps) / (total_steps - "
    "warmup_steps) goes from 0 to 1 and the rate is base_lr * 0.5 * (1 + cos(pi * phase)).",
    solution_code="""
    import math


    def learning_rate(step, base_lr, warmup_steps, total_steps):
        if step < warmup_steps:
            return base_lr * (1 / warmup_steps + (1 - 1 / warmup_steps) * step / warmup_steps)
        phase = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 -> 1 after the warm-up
        return base_lr * 0.5 * (1 + math.cos(math.pi * phase))
    """,
    reference=_reference_learning_rate,
    mistakes=[
        (lambda: lambda t, b, w, n: b * 0.5 * (1 + math.cos(math.pi * t / n)), "no warm-up"),
        (lambda: lambda t, b, w, n: b * t / w if t < w else b * 0.5 * (1 + math.cos(math.pi * (t - w) / (n - w))),
         "not at 0"),
        (lambda: lambda t, b, w, n: _reference_learning_rate()(t, b, w, n) if t < w
         else b * 0.5 * (1 + math.cos(math.pi * t / n)), "after the warm-up"),
        (lambda: lambda t, b, w, n: _reference_learning_rate()(t, b, w, n) if t < w
         else b * math.cos(0.5 * math.pi * (t - w) / (n - w)), "half-cosine"),
        (lambda: lambda t, b, w, n: _reference_learning_rate()(t, b, w, n) if t < w
         else b * 0.5 * (1 - math.cos(math.pi * (t - w) / (n - w))), "rises"),
        (lambda: lambda t, b, w, n: [b], "one number"),
    ],
    success="that is the recipe's schedule: make_scheduler gives the same rate at every step.",
)


# --- 2. gradient clipping by the global norm -------------------------------------------------------------
def _grad_cases() -> list[tuple[list[torch.Tensor], float]]:
    g = torch.Generator().manual_seed(6)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    big = [torch.randn(s, generator=g) * 2 for s in shapes]  # total norm about 8: clipped
    small = [torch.randn(s, generator=g) * 0.05 for s in shapes]  # total norm about 0.2: untouched
    one_big = [torch.randn(s, generator=g) * (3.0 if k == 0 else 0.01) for k, s in enumerate(shapes)]
    return [(big, 1.0), (small, 1.0), (one_big, 2.0), (big, 5.0)]


def _clip_reference(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    factor = min(1.0, max_norm / (float(total) + 1e-6))
    return [g * factor for g in grads]


def _check_clip(clip_gradients) -> str | None:
    for grads, max_norm in _grad_cases():
        total = float(torch.sqrt(sum((g**2).sum() for g in grads)))
        call = f"clip_gradients(grads, max_norm={max_norm}) on gradients with total norm {total:.3f}"
        got = clip_gradients([g.clone() for g in grads], max_norm)
        if not isinstance(got, (list, tuple)) or len(got) != len(grads):
            return f"{call} should return a list of {len(grads)} tensors, one per parameter, got {type(got).__name__}."
        expected = _clip_reference(grads, max_norm)
        for k, (g, e) in enumerate(zip(got, expected)):
            problem = compare_tensors(f"gradient {k}", g, e.float(), atol=1e-5)
            if problem is None:
                continue
            if isinstance(g, torch.Tensor) and g.shape == e.shape:
                if total < max_norm:
                    return (f"{call}: the total norm is already below max_norm, so the gradients must stay as "
                            f"they are; clipping only ever scales down. {problem}")
                per_tensor = grads[k] * min(1.0, max_norm / (float(grads[k].norm()) + 1e-6))
                if torch.allclose(g.float(), per_tensor.float(), atol=1e-5):
                    return (f"{call}: you clipped each tensor by its own norm; clip_grad_norm_ uses one norm over "
                            f"all parameters together, so every gradient is scaled by the same factor. {problem}")
                if torch.allclose(g.float(), grads[k].clamp(-max_norm, max_norm), atol=1e-5):
                    return (f"{call}: you clamped each entry; clipping by norm scales the whole gradient by "
                            f"max_norm / total_norm, keeping its direction. {problem}")
                if torch.allclose(g.float(), grads[k] * max_norm / total, atol=1e-5):
                    return (f"{call}: you always rescale to max_norm; clipping only ever scales down, when the "
                            f"total norm is above max_norm. {problem}")
            return f"{call}: {problem}"
    return None


clip_gradients = Exercise(
    name="clip_gradients",
    task="clip_gradients(grads, max_norm) -> the gradients scaled so their joint norm is at most max_norm",
    checker=_check_clip,
    hint_text="Treat all the gradients as one long vector: total = sqrt(sum over tensors of (g ** 2).sum()). "
    "If total > max_norm, multiply every tensor by max_norm / total (the same factor for all); otherwise "
    "leave them alone. torch.nn.utils.clip_grad_norm_ adds 1e-6 to total to avoid dividing by zero.",
    solution_code="""
    import torch


    def clip_gradients(grads, max_norm):
        total = torch.sqrt(sum((g**2).sum() for g in grads))  # the norm of all gradients as one vector
        factor = min(1.0, max_norm / (float(total) + 1e-6))  # only ever scale down
        return [g * factor for g in grads]  # one factor for all: the direction is kept
    """,
    reference=lambda: _clip_reference,
    mistakes=[
        (lambda: lambda grads, m: [g * min(1.0, m / (float(g.norm()) + 1e-6)) for g in grads],
         "each tensor by its own"),
        (lambda: lambda grads, m: [g.clamp(-m, m) for g in grads], "clamped each entry"),
        (lambda: lambda grads, m: [g * m / float(torch.sqrt(sum((x**2).sum() for x in grads))) for g in grads],
         "scales down"),
        (lambda: lambda grads, m: torch.cat([g.flatten() for g in grads]), "list of 3 tensors"),
    ],
    success="that is clip_grad_norm_: one norm over all parameters, and a step never longer than max_norm.",
)


# --- 3. how alike a batch of embeddings is ----------------------------------------------------------------
def _embedding_cases() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    spread = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    direction = torch.randn(1, 16, generator=g)
    collapsed = F.normalize(direction + 0.05 * torch.randn(6, 16, generator=g), dim=-1)
    opposite = torch.cat([direction.expand(4, 16), -direction.expand(4, 16)])  # (8, 16)
    half = F.normalize(opposite + 0.1 * torch.randn(8, 16, generator=g), dim=-1)
    return [("8 random unit vectors", spread), ("6 nearly equal unit vectors", collapsed),
            ("4 vectors and their 4 opposites", half), ("2 unit vectors", spread[:2])]


def _mean_cosine_reference(embeds: torch.Tensor) -> float:
    b = embeds.shape[0]
    sims = embeds @ embeds.t()  # (B, B)
    return ((sims.sum() - sims.diagonal().sum()) / (b * (b - 1))).item()


def _check_mean_cosine(mean_off_diagonal_cosine) -> str | None:
    for name, embeds in _embedding_cases():
        b = embeds.shape[0]
        call = f"mean_off_diagonal_cosine(embeds) on {name} ({b}, {embeds.shape[1]})"
        raw = mean_off_diagonal_cosine(embeds.clone())
        value = as_number(raw)
        if value is None:
            shape = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
            return f"{call} should return one number, got {shape}: average the B x B cosines off the diagonal."
        expected = _mean_cosine_reference(embeds)
        if close(value, expected, 1e-4, atol=1e-12) or abs(value - expected) < 1e-5:
            continue
        sims = embeds @ embeds.t()
        if abs(value - sims.mean().item()) < 1e-5:
            return (f"{call} gave {value:.4f}, expected {expected:.4f}: you averaged over the diagonal too. Each "
                    f"vector's cosine with itself is 1, which pulls the mean towards 1; leave the {b} diagonal "
                    f"entries out and divide by B * (B - 1) = {b * (b - 1)}.")
        if abs(value - (sims.sum() - sims.diagonal().sum()).item() / (b * b)) < 1e-5:
            return (f"{call} gave {value:.4f}, expected {expected:.4f}: there are B * (B - 1) = {b * (b - 1)} "
                    f"pairs off the diagonal, not B * B = {b * b}.")
        return f"{call} gave {value:.4f}, expected {expected:.4f}."
    return None


mean_off_diagonal_cosine = Exercise(
    name="mean_off_diagonal_cosine",
    task="mean_off_diagonal_cosine(embeds) -> the mean cosine between different rows of (B, E) unit vectors",
    checker=_check_mean_cosine,
    hint_text="embeds @ embeds.T is the (B, B) matrix of cosines (the rows are unit vectors). Its diagonal is "
    "each vector with itself (always 1): leave it out, and average the B * (B - 1) other entries.",
    solution_code="""
    def mean_off_diagonal_cosine(embeds):
        b = embeds.shape[0]
        sims = embeds @ embeds.t()  # (B, B) cosines: rows are unit vectors
        return (sims.sum() - sims.diagonal().sum()) / (b * (b - 1))
    """,
    reference=lambda: lambda e: _mean_cosine_reference(e),
    mistakes=[
        (lambda: lambda e: (e @ e.t()).mean(), "diagonal too"),
        (lambda: lambda e: ((e @ e.t()).sum() - e.shape[0]) / e.shape[0] ** 2, "not B * B"),
        (lambda: lambda e: e @ e.t(), "one number"),
    ],
    success="that is the number History logs as image_similarity and text_similarity: near 1, the batch has collapsed.",
)


# --- 4. a prediction: how far does Adam's first step move an entry? --------------------------------------
predict_adam_step = prediction(
    "predict_adam_step",
    "After Adam's first step, how far has an entry whose gradient is 1000 times larger than another's moved, "
    "compared with that other entry: 'the same distance', 'about 30 times as far' or 'about 1000 times as far'?",
    "the same distance",
    choices=("the same distance", "about 30 times as far", "about 1000 times as far"),
    why="At the first step Adam's bias-corrected averages are m = g and v = g^2, so each entry moves by "
    "lr * g / (|g| + eps): the learning rate, in the direction of minus the gradient, whatever the gradient's size "
    "(unless |g| is near eps = 1e-8).",
    hint="Adam divides the running mean of the gradient by the square root of the running mean of its square. "
    "After one step, each running mean has seen a single gradient.",
)


# --- 5. a derivation: Adam's first step in closed form -----------------------------------------------------
_ADAM_CASES = ((1e-3, 0.9, 0.999, 1e-8), (0.1, 0.5, 0.99, 1e-8), (2e-3, 0.9, 0.98, 1e-6))


def _adam_step(grad: torch.Tensor, lr: float, beta1: float, beta2: float, eps: float) -> torch.Tensor:
    """The change of a parameter at 0 after one torch.optim.Adam step with gradient ``grad``."""
    p = torch.nn.Parameter(torch.zeros_like(grad, dtype=torch.float64))
    p.grad = grad.to(torch.float64).clone()
    torch.optim.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps).step()
    return p.detach()


def _adam_grads() -> torch.Tensor:
    g = torch.Generator().manual_seed(60)
    sizes = 10.0 ** torch.arange(-9, 3, dtype=torch.float64)  # 1e-9 .. 1e2: some near eps, some large
    signs = torch.where(torch.rand(12, generator=g) < 0.5, -1.0, 1.0).double()
    return torch.cat([sizes * signs, torch.zeros(1, dtype=torch.float64)])  # (13,), one zero gradient


def _check_adam_first_step(fn) -> str | None:
    grad = _adam_grads()
    for lr, b1, b2, eps in _ADAM_CASES:
        call = f"adam_first_step(grad, lr={lr}, beta1={b1}, beta2={b2}, eps={eps})"
        got = fn(grad.clone(), lr, b1, b2, eps)
        expected = _adam_step(grad, lr, b1, b2, eps)
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            return compare_tensors(call, got, expected)
        got = got.detach().double()
        if torch.allclose(got, expected, rtol=1e-4, atol=1e-12):
            continue
        diagnoses = [
            (-expected, "the sign is flipped: Adam, like any descent, moves against the gradient"),
            (-lr * grad, "that is plain gradient descent, -lr * g; Adam divides the mean gradient m by sqrt(v)"),
            (-lr * (1 - b1) * grad / ((1 - b2) ** 0.5 * grad.abs() + eps),
             f"you left out the bias correction: after one step m = (1 - beta1) g and v = (1 - beta2) g^2 start "
             f"from 0, and Adam divides them by 1 - beta1 and 1 - beta2 (without it the step is "
             f"{(1 - b1) / (1 - b2) ** 0.5:.3g} times too long here)"),
            (-lr * torch.sign(grad), "that is -lr * sign(g), right for large gradients; for a gradient near eps the "
             "denominator sqrt(v) + eps = |g| + eps is not |g|: keep eps"),
            (-lr * grad / (grad.abs() + eps) ** 2 * grad.abs(), "eps is added to sqrt(v) = |g|, outside the root"),
        ]
        for wrong, message in diagnoses:
            if torch.allclose(got, wrong, rtol=1e-4, atol=1e-12):
                return f"{call}: {message}."
        return compare_tensors(call, got, expected, atol=1e-12)
    return None


adam_first_step = Exercise(
    name="adam_first_step",
    task="adam_first_step(grad, lr, beta1, beta2, eps) -> the change of every entry at Adam's first step, in "
    "closed form",
    checker=_check_adam_first_step,
    hint_text="Start from m = v = 0. One step: m = beta1 m + (1 - beta1) g, v = beta2 v + (1 - beta2) g^2; the "
    "bias-corrected m_hat = m / (1 - beta1), v_hat = v / (1 - beta2); the change is -lr * m_hat / (sqrt(v_hat) + eps). "
    "Simplify: the betas cancel.",
    solution_code="""
    def adam_first_step(grad, lr, beta1, beta2, eps):
        # m_hat = g and v_hat = g^2 after one step: the betas cancel in the bias correction
        return -lr * grad / (grad.abs() + eps)
    """,
    reference=lambda: lambda grad, lr, b1, b2, eps: -lr * grad / (grad.abs() + eps),
    mistakes=[
        (lambda: lambda grad, lr, b1, b2, eps: lr * grad / (grad.abs() + eps), "sign is flipped"),
        (lambda: lambda grad, lr, b1, b2, eps: -lr * grad, "plain gradient descent"),
        (lambda: lambda grad, lr, b1, b2, eps: -lr * (1 - b1) * grad / ((1 - b2) ** 0.5 * grad.abs() + eps),
         "bias correction"),
        (lambda: lambda grad, lr, b1, b2, eps: -lr * torch.sign(grad), "keep eps"),
        (lambda: lambda grad, lr, b1, b2, eps: float(-lr), "torch.Tensor"),
    ],
    success="each entry moves by the learning rate, against its gradient's sign, whatever the gradient's size: "
    "that is why section 3 can bound how far logit_scale travels by the sum of the learning rates.",
    kind="derive",
)


# --- 6. an experiment: gradient clipping, Adam and one bad batch ------------------------------------------
_SPIKE = 9  # the index of the bad batch's gradient


def experiment_setup():
    """20 gradients of one parameter of 500 entries, the same on every call: each the downhill direction's
    opposite plus noise (norm about 1.4), except grads[9], a bad batch 1000 times larger in a random
    direction; and ``downhill`` (500,), the unit vector a good step follows."""
    g = torch.Generator().manual_seed(6)
    d = torch.randn(500, generator=g)
    d = d / d.norm()
    grads = [d + torch.randn(500, generator=g) / 500**0.5 for _ in range(20)]
    grads[_SPIKE] = 1000 * torch.randn(500, generator=g) / 500**0.5
    return grads, -d


def _progress(grads, downhill, max_norm, what="progress"):
    p = torch.nn.Parameter(torch.zeros(500))
    optimizer = torch.optim.Adam([p], lr=1e-2)
    for step, grad in enumerate(grads):
        p.grad = grad.clone()
        if max_norm is not None and what != "unclipped":
            torch.nn.utils.clip_grad_norm_([p], max_norm)
        optimizer.step()
        if step == _SPIKE:
            after_spike = p.detach().clone()
    if what == "norm":
        return (p.detach() - after_spike).norm().item()
    if what == "whole run":
        return (p.detach() @ downhill).item()
    return ((p.detach() - after_spike) @ downhill).item()


def _check_clipping_experiment(fn) -> str | None:
    grads, downhill = experiment_setup()
    measured = fn()
    if not isinstance(measured, dict):
        return f"return a dict {{max_norm: progress downhill after the bad batch}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} setting(s); take at least 3 (no clipping, None, and two values of "
                "max_norm, e.g. 10.0 and 1.0) to see a trend.")
    for max_norm in measured:
        if max_norm is not None and (isinstance(max_norm, bool) or not isinstance(max_norm, (int, float))
                                     or max_norm <= 0):
            return f"each key is max_norm, a positive number, or None for no clipping; got {max_norm!r}."
    if None not in measured:
        return "include the baseline, None (no clipping), to compare the clipped runs with."
    order = [None] + sorted(k for k in measured if k is not None)
    for max_norm in order:
        value = measured[max_norm]
        got = as_number(value)
        if got is None:
            return (f"for max_norm={max_norm} you returned {type(value).__name__}; the measurement is one number, "
                    "(p after the last step - p after the bad batch) @ downhill.")
        expected = _progress(grads, downhill, max_norm)
        if abs(got - expected) <= 1e-3 * max(1.0, abs(expected)):
            continue

        def near(x, got=got):
            return abs(got - x) <= 1e-3 * max(1.0, abs(x))

        if near(-expected):
            return (f"for max_norm={max_norm} the sign is flipped: measure along `downhill`, the way a good step "
                    f"goes; the checker got {expected:+.4f}.")
        if near(_progress(grads, downhill, max_norm, "norm")):
            return (f"for max_norm={max_norm} you measured the length of the move; the question is how far it went "
                    f"*downhill*: (p_end - p_after_bad_batch) @ downhill, {expected:+.4f}.")
        if near(_progress(grads, downhill, max_norm, "whole run")):
            return (f"for max_norm={max_norm} you measured progress over the whole run, from step 0; measure from "
                    f"just after the bad batch (grads[9]) to the end: {expected:+.4f}.")
        if max_norm is not None and near(_progress(grads, downhill, None)):
            return (f"for max_norm={max_norm} you got the unclipped run's number: clip after setting p.grad and "
                    "before optimizer.step(), with torch.nn.utils.clip_grad_norm_([p], max_norm).")
        return (f"for max_norm={max_norm} the checker ran Adam (lr 1e-2) on the same gradients and measured "
                f"{expected:+.4f} downhill after the bad batch; you reported {got:+.4f}.")
    return None


def _reference_clipping_experiment():
    grads, downhill = experiment_setup()
    return {m: _progress(grads, downhill, m) for m in (None, 10.0, 1.0)}


clipping_experiment = Exercise(
    name="clipping_experiment",
    task="my_experiment() -> {max_norm: how far Adam moves downhill in the 10 steps after a bad batch}, for None "
    "(no clipping) and at least two values of max_norm",
    checker=_check_clipping_experiment,
    hint_text="grads, downhill = nb06.experiment_setup(). For each max_norm: p = torch.nn.Parameter(torch.zeros(500)), "
    "optimizer = torch.optim.Adam([p], lr=1e-2); for each gradient: p.grad = g.clone(), clip_grad_norm_([p], "
    "max_norm) unless None, optimizer.step(), and keep a copy of p after step 9. Measure (p - that copy) @ downhill.",
    solution_code="""
    import torch

    from clipedu.exercises import nb06


    def my_experiment():
        grads, downhill = nb06.experiment_setup()  # 20 gradients of a (500,) parameter; grads[9] is the bad batch
        progress = {}
        for max_norm in (None, 10.0, 1.0):  # the one thing changed; None: no clipping
            p = torch.nn.Parameter(torch.zeros(500))
            optimizer = torch.optim.Adam([p], lr=1e-2)
            for step, g in enumerate(grads):
                p.grad = g.clone()
                if max_norm is not None:
                    torch.nn.utils.clip_grad_norm_([p], max_norm)
                optimizer.step()
                if step == 9:
                    after_bad_batch = p.detach().clone()
            progress[max_norm] = ((p.detach() - after_bad_batch) @ downhill).item()  # distance gone downhill
        return progress
    """,
    reference=lambda: _reference_clipping_experiment,
    mistakes=[
        (lambda: lambda: {None: 0.1, 10.0: 0.5, 1.0: 1.0}, "the checker ran Adam"),
        (lambda: lambda: {None: 0.05, 1.0: 1.2}, "at least 3"),
        (lambda: lambda: {m: _progress(*experiment_setup(), m) for m in (100.0, 10.0, 1.0)}, "baseline"),
        (lambda: lambda: {m: -_progress(*experiment_setup(), m) for m in (None, 10.0, 1.0)}, "sign is flipped"),
        (lambda: lambda: {m: _progress(*experiment_setup(), m, "norm") for m in (None, 10.0, 1.0)}, "length"),
        (lambda: lambda: {m: _progress(*experiment_setup(), m, "whole run") for m in (None, 10.0, 1.0)}, "whole run"),
        (lambda: lambda: {m: _progress(*experiment_setup(), None) for m in (None, 10.0, 1.0)}, "unclipped run"),
    ],
    success="unclipped, the bad batch fills Adam's v (the running mean of squared gradients) and every step after "
    "it is tiny: almost no progress. Clipped, it weighs at most max_norm, and the closer max_norm is to the usual "
    "norm (about 1.4 here), the less it slows what follows. Clipping below the usual norm costs nothing: Adam "
    "divides by the gradients' size, so shrinking them all alike leaves its steps as they were.",
    kind="experiment",
)
