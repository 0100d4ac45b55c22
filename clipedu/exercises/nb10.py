"""Exercises of notebook 10: standardising with training statistics, choosing C on validation, and
how many labelled examples a prompt is worth."""

from __future__ import annotations

import math

import numpy as np
import torch

from clipedu.exercises import Exercise, as_number, close, compare_tensors, prediction

_TOL = {"rel": 1e-3, "atol": 1e-3}  # standardised features agree to 1e-3


# --- 1. standardising with the training set's statistics ----------------------------------------------
def _feature_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100)
    cases = []
    for n, m, d in ((40, 15, 6), (25, 30, 4)):
        scale = torch.rand(d, generator=g) * 5 + 0.5
        train = torch.randn(n, d, generator=g) * scale + 3.0  # (N, D) features of different sizes
        test = torch.randn(m, d, generator=g) * scale * 1.5 + 4.0  # (M, D) a different spread: shifted a little
        cases.append((train, test))
    return cases


def _standardise_reference(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train_x.mean(dim=0), train_x.std(dim=0, unbiased=False) + 1e-6  # (D,) training statistics only
    return (train_x - mean) / std, (test_x - mean) / std


def _check_standardise(standardise) -> str | None:
    for train, test in _feature_cases():
        (n, d), m = train.shape, test.shape[0]
        call = f"standardise(train_x {tuple(train.shape)}, test_x {tuple(test.shape)})"
        got = standardise(train.clone(), test.clone())
        if not isinstance(got, tuple | list) or len(got) != 2:
            return f"{call} should return two tensors, (train_z, test_z), got {type(got).__name__}."
        got_train, got_test = got
        for name, value, rows in (("train_z", got_train, n), ("test_z", got_test, m)):
            if not isinstance(value, torch.Tensor):
                return f"{call}: {name} should be a tensor, got {type(value).__name__}."
            if tuple(value.shape) != (rows, d):
                return f"{call}: {name} should keep the shape ({rows}, {d}), got {tuple(value.shape)}."
        want_train, want_test = _standardise_reference(train, test)
        unbiased = train.std(dim=0) + 1e-6
        if close(got_train, (train - train.mean(0)) / unbiased, **_TOL) and close(
            got_test, (test - train.mean(0)) / unbiased
        , **_TOL):
            continue  # the n - 1 version of the std is fine too
        per_row = [(x - x.mean(dim=1, keepdim=True)) / x.std(dim=1, keepdim=True) for x in (train, test)]
        if close(got_train, per_row[0], **_TOL) or close(
            got_train, (train - train.mean(1, keepdim=True)) / train.std(1, unbiased=False, keepdim=True)
        , **_TOL):
            return (
                f"{call}: you standardised each image's row (dim=1); standardise each feature, a column, "
                "over the training images: mean and std over dim=0."
            )
        both = torch.cat([train, test])
        pooled = [(x - both.mean(0)) / both.std(0, unbiased=False) for x in (train, test)]
        if close(got_test, pooled[1], **_TOL) or close(got_test, (test - both.mean(0)) / both.std(0), **_TOL):
            return (
                f"{call}: you computed the mean and std over train and test together, so the test images "
                "leak into the preprocessing; use the training images' statistics only."
            )
        own = (test - test.mean(0)) / test.std(0, unbiased=False)
        if close(got_test, own, **_TOL) or close(got_test, (test - test.mean(0)) / test.std(0), **_TOL):
            return (
                f"{call}: you standardised the test features with their own mean and std; a probe must treat "
                "the test images as unseen, so shift and scale them with the *training* mean and std."
            )
        if close(got_train, train - train.mean(0), **_TOL):
            return f"{call}: you subtracted the mean but did not divide by the standard deviation."
        if close(got_train, (train - train.mean(0)) / train.var(0, unbiased=False), **_TOL):
            return f"{call}: you divided by the variance; divide by the standard deviation (its square root)."
        if not close(got_train, want_train, **_TOL):
            return (
                f"{call}: train_z is not standardised: its columns should have mean 0 and std 1, got means up "
                f"to {got_train.double().mean(0).abs().max().item():.3g} and stds "
                f"{got_train.double().std(0).min().item():.3g} to {got_train.double().std(0).max().item():.3g}."
            )
        if not close(got_test, want_test, **_TOL):
            return f"{call}: train_z is right but test_z is not: shift and scale it with the training mean and std."
    return None


standardise = Exercise(
    name="standardise",
    task="standardise(train_x (N, D), test_x (M, D)) -> (train_z, test_z), both with the training mean and std",
    checker=_check_standardise,
    hint_text="Compute mean = train_x.mean(dim=0) and std = train_x.std(dim=0) (one number per feature), "
    "then apply the same (x - mean) / std to train_x and to test_x. The test images never set a statistic.",
    solution_code="""
    def standardise(train_x, test_x):
        mean = train_x.mean(dim=0)  # (D,)
        std = train_x.std(dim=0, unbiased=False) + 1e-6  # (D,)
        return (train_x - mean) / std, (test_x - mean) / std
    """,
    reference=lambda: _standardise_reference,
    mistakes=[
        (lambda: lambda tr, te: tuple((x - x.mean(0)) / x.std(0) for x in (tr, te)), "their own mean and std"),
        (
            lambda: (
                lambda tr, te: tuple((x - torch.cat([tr, te]).mean(0)) / torch.cat([tr, te]).std(0) for x in (tr, te))
            ),
            "leak",
        ),
        (
            lambda: lambda tr, te: tuple((x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True) for x in (tr, te)),
            "dim=0",
        ),
        (lambda: lambda tr, te: (tr - tr.mean(0), te - tr.mean(0)), "did not divide"),
        (
            lambda: (
                lambda tr, te: (
                    (tr - tr.mean(0)) / tr.var(0, unbiased=False),
                    (te - tr.mean(0)) / tr.var(0, unbiased=False),
                )
            ),
            "variance",
        ),
        (lambda: lambda tr, te: (tr - tr.mean(0)) / tr.std(0), "two tensors"),
    ],
    success="that is how clipedu.evaluate.linear_probe prepares its features.",
)


# --- 2. choosing C on the validation split ------------------------------------------------------------
_CS = (0.001, 0.01, 0.1, 1.0, 10.0)
_C_SEEDS = (6, 20)  # synthetic problems where train, validation and test each prefer another C


def _c_case(seed: int):
    rng = np.random.default_rng(seed)
    d, k = 20, 3
    w = rng.normal(size=(d, k))

    def draw(n):
        x = rng.normal(size=(n, d))
        y = (x @ w + 2.5 * rng.normal(size=(n, k))).argmax(1)
        return x, y

    (tx, ty), (vx, vy), (sx, sy) = draw(60), draw(40), draw(200)
    return tx, ty, vx, vy, sx, sy


def _accuracies(tx, ty, vx, vy, sx, sy, cs=_CS):
    from sklearn.linear_model import LogisticRegression  # imported here: scikit-learn takes seconds to load

    out = {}
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=1000).fit(tx, ty)
        out[c] = tuple(float((clf.predict(x) == y).mean()) for x, y in ((tx, ty), (vx, vy), (sx, sy)))
    return out  # C -> (train, validation, test) accuracy


def _probe_reference(train_x, train_y, val_x, val_y, test_x, test_y, cs):
    from sklearn.linear_model import LogisticRegression  # imported here: scikit-learn takes seconds to load

    best_val, best_clf = -1.0, None
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=1000).fit(train_x, train_y)  # fit on the training split
        val = (clf.predict(val_x) == val_y).mean()  # judge C on the validation split
        if val > best_val:
            best_val, best_clf = val, clf
    return float((best_clf.predict(test_x) == test_y).mean())  # the test set is used once, at the end


def _check_probe(probe_test_accuracy) -> str | None:
    for seed in _C_SEEDS:
        case = _c_case(seed)
        call = f"probe_test_accuracy(...) on synthetic problem {seed} with cs={list(_CS)}"
        got = probe_test_accuracy(*(np.array(a, copy=True) for a in case), list(_CS))
        value = as_number(got)
        if value is None:
            return f"{call} should return one number, the test accuracy, got {type(got).__name__}."
        acc = _accuracies(*case)
        best_val = max(v for _, v, _ in acc.values())
        right = {t for _, v, t in acc.values() if v == best_val}  # ties on validation: any of them is fine
        if any(abs(value - t) < 1e-9 for t in right):
            continue
        expected = _probe_reference(*case, _CS)
        best_test = max(t for _, _, t in acc.values())
        best_train_c = max(acc, key=lambda c: acc[c][0])
        if abs(value - best_test) < 1e-9:
            return (
                f"{call} gave {value:.4f}, the best *test* accuracy over all C: you chose C on the test set, "
                "which makes the number optimistic (the test set then helped train). Choose C by validation "
                f"accuracy and report the test accuracy of that C ({expected:.4f})."
            )
        if abs(value - best_val) < 1e-9:
            return (
                f"{call} gave {value:.4f}, the best *validation* accuracy; report the chosen C's accuracy on "
                f"the test split ({expected:.4f})."
            )
        if abs(value - acc[best_train_c][2]) < 1e-9:
            return (
                f"{call} gave {value:.4f}: you chose C by *training* accuracy, which favours the "
                "weakest regularisation (the largest C); choose it on the validation split."
            )
        if value > 1 and any(abs(value - 100 * t) < 1e-6 for t in right):
            return f"{call} gave {value:.4g}: return a fraction between 0 and 1, not a percentage."
        return f"{call} gave {value:.4f}, expected {expected:.4f} (test accuracy of the C best on validation)."
    return None


probe_test_accuracy = Exercise(
    name="probe_test_accuracy",
    task="probe_test_accuracy(train_x, train_y, val_x, val_y, test_x, test_y, cs) -> test accuracy of the "
    "logistic regression whose C was best on validation",
    checker=_check_probe,
    hint_text="For each C: LogisticRegression(C=c, max_iter=1000).fit(train_x, train_y), then its accuracy on "
    "(val_x, val_y): (clf.predict(val_x) == val_y).mean(). Keep the classifier with the best validation "
    "accuracy, and only then score it on (test_x, test_y).",
    solution_code="""
    from sklearn.linear_model import LogisticRegression


    def probe_test_accuracy(train_x, train_y, val_x, val_y, test_x, test_y, cs):
        best_val, best_clf = -1.0, None
        for c in cs:
            clf = LogisticRegression(C=c, max_iter=1000).fit(train_x, train_y)
            val_accuracy = (clf.predict(val_x) == val_y).mean()
            if val_accuracy > best_val:
                best_val, best_clf = val_accuracy, clf
        return float((best_clf.predict(test_x) == test_y).mean())
    """,
    reference=lambda: _probe_reference,
    mistakes=[
        (
            lambda: (
                lambda tx, ty, vx, vy, sx, sy, cs: max(a[2] for a in _accuracies(tx, ty, vx, vy, sx, sy, cs).values())
            ),
            "chose C on the test set",
        ),
        (
            lambda: (
                lambda tx, ty, vx, vy, sx, sy, cs: max(a[1] for a in _accuracies(tx, ty, vx, vy, sx, sy, cs).values())
            ),
            "validation",
        ),
        (lambda: lambda *case: (lambda acc: acc[max(acc, key=lambda c: acc[c][0])][2])(_accuracies(*case)), "training"),
        (lambda: lambda *args: [0.5, 0.6], "one number"),
    ],
    success="that is the recipe of the CLIP paper's probes (clipedu.evaluate.linear_probe also refits on "
    "train + validation with the chosen C).",
)


# --- 3. how many labelled examples a prompt is worth ---------------------------------------------------
_CURVES = (
    ({1: 0.20, 2: 0.35, 4: 0.50, 8: 0.70, 16: 0.80}, 0.60),
    ({1: 0.30, 2: 0.45, 4: 0.62, 8: 0.75, 16: 0.86}, 0.40),
    ({1: 0.55, 2: 0.70, 4: 0.80, 8: 0.90, 16: 0.95}, 0.50),  # the first point already reaches it
    ({1: 0.10, 2: 0.20, 4: 0.30, 8: 0.40, 16: 0.50}, 0.70),  # never reached
    ({1: 0.25, 2: 0.50, 4: 0.45, 8: 0.70, 16: 0.75}, 0.40),  # the first crossing counts
)


def _worth_reference(curve: dict[int, float], accuracy: float) -> float:
    ks = sorted(curve)
    if curve[ks[0]] >= accuracy:
        return float(ks[0])
    for k0, k1 in zip(ks, ks[1:]):
        if curve[k1] >= accuracy:
            t = (accuracy - curve[k0]) / (curve[k1] - curve[k0])  # how far between the two points
            return 2 ** (math.log2(k0) + t * (math.log2(k1) - math.log2(k0)))  # ... on a log2 axis
    return math.inf


def _check_worth(shots_worth) -> str | None:
    for curve, zs in _CURVES:
        call = f"shots_worth({curve}, zero_shot_accuracy={zs})"
        got = shots_worth(dict(curve), zs)
        value = as_number(got)
        if value is None:
            return f"{call} should return one number (shots per class), got {type(got).__name__}."
        expected = _worth_reference(curve, zs)
        if value == expected or (math.isfinite(expected) and abs(value - expected) < 1e-6 * max(1, expected)):
            continue
        if math.isinf(expected):
            return f"{call} gave {value:.4g}: no point of this curve reaches {zs}, so return math.inf."
        ks = sorted(curve)
        k1 = next(k for k in ks if curve[k] >= zs)
        if k1 == ks[0]:
            return (
                f"{call} gave {value:.4g}: the first point ({k1} shot) already reaches {zs}; "
                f"return {float(k1)} (a prompt is worth at most that many)."
            )
        k0 = ks[ks.index(k1) - 1]
        t = (zs - curve[k0]) / (curve[k1] - curve[k0])
        diagnoses = [
            (
                k0 + t * (k1 - k0),
                "you interpolated linearly in the number of shots; the shots double from point to "
                "point, so interpolate in log2(shots) and raise 2 to the result",
            ),
            (
                float(k1),
                f"that is the first measured point that reaches {zs}; interpolate between it and the point before",
            ),
            (float(k0), f"that is the last point below {zs}; interpolate between it and the next one"),
            (math.log2(k0) + t * (math.log2(k1) - math.log2(k0)), "that is log2 of the answer; return 2 ** it"),
        ]
        for wrong, message in diagnoses:
            if abs(value - wrong) < 1e-6 * max(1, abs(wrong)):
                return f"{call} gave {value:.4g}, expected {expected:.4g}: {message}."
        return f"{call} gave {value:.4g}, expected {expected:.4g}."
    return None


shots_worth = Exercise(
    name="shots_worth",
    task="shots_worth(curve {shots: accuracy}, zero_shot_accuracy) -> the shots per class at which the curve "
    "reaches the zero-shot accuracy, interpolated in log2(shots)",
    checker=_check_worth,
    hint_text="Walk the shots in increasing order. At the first k1 whose accuracy reaches the target, take the "
    "point before it, k0: t = (target - acc[k0]) / (acc[k1] - acc[k0]), and the answer is "
    "2 ** (log2(k0) + t * (log2(k1) - log2(k0))). If the first point already reaches it, return that k; "
    "if none does, math.inf.",
    solution_code="""
    import math


    def shots_worth(curve, zero_shot_accuracy):
        ks = sorted(curve)
        if curve[ks[0]] >= zero_shot_accuracy:
            return float(ks[0])
        for k0, k1 in zip(ks, ks[1:]):
            if curve[k1] >= zero_shot_accuracy:
                t = (zero_shot_accuracy - curve[k0]) / (curve[k1] - curve[k0])
                return 2 ** (math.log2(k0) + t * (math.log2(k1) - math.log2(k0)))
        return math.inf
    """,
    reference=lambda: _worth_reference,
    mistakes=[
        (
            lambda: (
                lambda c, z: next(
                    (
                        k0 + (z - c[k0]) / (c[k1] - c[k0]) * (k1 - k0)
                        for k0, k1 in zip(sorted(c), sorted(c)[1:])
                        if c[k0] < z <= c[k1]
                    ),
                    float(min(c)),
                )
            ),
            "log2(shots)",
        ),
        (lambda: lambda c, z: float(next((k for k in sorted(c) if c[k] >= z), math.inf)), "interpolate between"),
        (lambda: lambda c, z: _worth_reference(c, z) if math.isfinite(_worth_reference(c, z)) else 16.0, "math.inf"),
        (lambda: lambda c, z: [_worth_reference(c, z)], "one number"),
    ],
    success="clipedu.evaluate.shots_matching does the same, and the notebook uses it from here on.",
)


# --- 4. the gradient of the probe's loss (a derivation) ------------------------------------------------
def _gradient_cases():
    g = torch.Generator().manual_seed(10)
    cases = []
    for n, d, k in ((12, 5, 3), (30, 4, 7), (1, 6, 2)):
        w = torch.randn(k, d, generator=g, dtype=torch.float64)
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        y = torch.randint(0, k, (n,), generator=g)
        cases.append((w, x, y))
    return cases


def _ref_gradient(w, x, y):
    p = (x @ w.T).softmax(dim=1)  # (N, K) the probe's probabilities
    onehot = torch.nn.functional.one_hot(y, w.shape[0]).to(p.dtype)  # (N, K)
    return (p - onehot).T @ x / x.shape[0]  # (K, D)


def _check_gradient(fn) -> str | None:
    for w, x, y in _gradient_cases():
        (n, d), k = x.shape, w.shape[0]
        call = f"my_gradient(W ({k}, {d}), x ({n}, {d}), y ({n},))"
        leaf = w.clone().requires_grad_()
        torch.nn.functional.cross_entropy(x @ leaf.T, y).backward()
        expected = leaf.grad  # autograd's answer
        got = fn(w.clone(), x.clone(), y.clone())
        if not isinstance(got, torch.Tensor):
            return f"{call} should return a tensor (K, D) = ({k}, {d}), got {type(got).__name__}."
        if got.shape == (d, k) and d != k:
            return f"{call}: the gradient has W's shape (K, D) = ({k}, {d}); you returned its transpose ({d}, {k})."
        if got.shape != expected.shape:
            return f"{call} should have W's shape ({k}, {d}), got {tuple(got.shape)}."
        got = got.to(torch.float64)
        if close(got, expected, rel=1e-6, atol=1e-9):
            continue
        if n > 1 and close(got, n * expected, rel=1e-6, atol=1e-9):
            return (f"{call} is {n} times autograd's gradient: the loss is the *mean* cross-entropy over the "
                    f"{n} examples, so divide the sum by N.")
        if close(got, -expected, rel=1e-6, atol=1e-9):
            return (f"{call} has the sign reversed: the gradient is (softmax(x W^T) - onehot(y))^T x / N; "
                    "descent moves W against it, towards the right class.")
        onehot = torch.nn.functional.one_hot(y, k).to(torch.float64)
        if close(got, ((x @ w.T) - onehot).T @ x / n, rel=1e-6, atol=1e-9):
            return (f"{call}: you used the logits x W^T where the probabilities belong. Differentiating "
                    "log-sum-exp gives the softmax: (softmax(x W^T) - onehot(y))^T x / N.")
        if close(got, -onehot.T @ x / n, rel=1e-6, atol=1e-9):
            return (f"{call}: you kept only the -log p(right class) numerator's term. The log-sum-exp of the "
                    "denominator adds softmax(x W^T)^T x / N: every class's row is pushed by its probability.")
        return compare_tensors(f"{call} (autograd's gradient of the mean cross-entropy)", got, expected, atol=1e-6)
    return None


probe_gradient = Exercise(
    name="probe_gradient",
    task="my_gradient(W (K, D), x (N, D), y (N,)) -> dL/dW (K, D) of the mean cross-entropy of softmax(x W^T), "
    "in closed form",
    checker=_check_gradient,
    hint_text="For one example, L = -z_y + log sum_k exp(z_k) with z = W x. dL/dz_k = p_k - [k = y], and "
    "dz_k/dW_k = x. Stack the examples: (P - Y)^T x, then divide by N for the mean. one_hot(y, K) builds Y.",
    solution_code="""
    import torch.nn.functional as F


    def my_gradient(W, x, y):
        p = (x @ W.T).softmax(dim=1)  # (N, K) probabilities
        onehot = F.one_hot(y, W.shape[0]).to(p.dtype)  # (N, K)
        return (p - onehot).T @ x / x.shape[0]  # (K, D): each class row pushed by (p - y), averaged
    """,
    reference=lambda: _ref_gradient,
    mistakes=[
        (lambda: lambda w, x, y: _ref_gradient(w, x, y) * x.shape[0], "mean"),
        (lambda: lambda w, x, y: -_ref_gradient(w, x, y), "sign reversed"),
        (lambda: lambda w, x, y: _ref_gradient(w, x, y).T, "transpose"),
        (lambda: lambda w, x, y: ((x @ w.T) - torch.nn.functional.one_hot(y, w.shape[0]).to(x.dtype)).T @ x
         / x.shape[0], "logits"),
        (lambda: lambda w, x, y: -torch.nn.functional.one_hot(y, w.shape[0]).to(x.dtype).T @ x / x.shape[0],
         "log-sum-exp"),
    ],
    success="it vanishes when every probability matches its label. scikit-learn minimises C times the summed "
    "loss plus ||W||^2 / 2, whose gradient is C N times this one plus W: that is what L-BFGS follows.",
    kind="derive",
)


# --- 5. an experiment: the regularisation strength C ----------------------------------------------------
def experiment_setup():
    """A fixed small probe problem: (train_x (60, 20), train_y, test_x (500, 20), test_y), 3 classes,
    labels from a noisy linear rule. The same numbers on every call."""
    rng = np.random.default_rng(6)
    w = rng.normal(size=(20, 3))

    def draw(n):
        x = rng.normal(size=(n, 20))
        return x, (x @ w + 2.5 * rng.normal(size=(n, 3))).argmax(1)

    (tx, ty), (sx, sy) = draw(60), draw(500)
    return tx, ty, sx, sy


def _c_accuracy(c: float, on_test: bool = True) -> float:
    from sklearn.linear_model import LogisticRegression  # imported here: scikit-learn takes seconds to load

    tx, ty, sx, sy = experiment_setup()
    clf = LogisticRegression(C=c, max_iter=1000).fit(tx, ty)
    x, y = (sx, sy) if on_test else (tx, ty)
    return float((clf.predict(x) == y).mean())


def _check_c_experiment(fn) -> str | None:
    measured = fn()
    if not isinstance(measured, dict):
        return f"return a dict {{C: test accuracy}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} value(s) of C; an experiment needs at least 3 to show a trend "
                "(e.g. 0.001, 0.1, 10).")
    if 1.0 not in measured and 1 not in measured:
        return "include the baseline, scikit-learn's default C = 1.0, among your settings."
    for c in measured:
        if isinstance(c, bool) or not isinstance(c, int | float) or not 1e-6 <= c <= 1e6:
            return f"each key is a value of C, a positive number from 1e-6 to 1e6; got {c!r}."
    for c, value in sorted(measured.items()):
        got = as_number(value)
        if got is None:
            return f"the accuracy for C={c} should be one number, got {type(value).__name__}."
        expected = _c_accuracy(c)
        if abs(got - expected) < 1e-9:
            continue
        if abs(got - _c_accuracy(c, on_test=False)) < 1e-9:
            return (f"for C={c} you reported {got:.3f}, the accuracy on the 60 training examples; the checker "
                    f"measured {expected:.3f} on the test examples. Training accuracy keeps rising with C; "
                    "the test accuracy is what says whether the probe generalises.")
        if abs(got - 100 * expected) < 1e-6:
            return f"for C={c} you reported {got:.4g}: give a fraction between 0 and 1, not a percentage."
        return (f"for C={c} the checker measured a test accuracy of {expected:.3f}, you reported {got:.3f}. Fit "
                "LogisticRegression(C=c, max_iter=1000) on train_x, train_y and score it on test_x, test_y.")
    return None


def _reference_c_experiment():
    return {c: _c_accuracy(c) for c in (0.001, 0.1, 1.0, 100.0)}


c_experiment = Exercise(
    name="c_experiment",
    task="my_experiment() -> {C: test accuracy}: a logistic regression fit on nb10.experiment_setup()'s training "
    "examples for at least 3 values of C (1.0 among them), scored on its test examples",
    checker=_check_c_experiment,
    hint_text="train_x, train_y, test_x, test_y = nb10.experiment_setup(); for each C, "
    "clf = LogisticRegression(C=c, max_iter=1000).fit(train_x, train_y) and keep "
    "float((clf.predict(test_x) == test_y).mean()).",
    solution_code="""
    from sklearn.linear_model import LogisticRegression

    from clipedu.exercises import nb10


    def my_experiment():
        train_x, train_y, test_x, test_y = nb10.experiment_setup()
        accuracy = {}
        for c in (0.001, 0.1, 1.0, 100.0):  # the one thing changed: the inverse L2 strength
            clf = LogisticRegression(C=c, max_iter=1000).fit(train_x, train_y)
            accuracy[c] = float((clf.predict(test_x) == test_y).mean())
        return accuracy
    """,
    reference=lambda: _reference_c_experiment,
    mistakes=[
        (lambda: lambda: {0.001: 0.3, 1.0: 0.6, 100.0: 0.5}, "the checker measured"),
        (lambda: lambda: {1.0: _c_accuracy(1.0)}, "at least 3"),
        (lambda: lambda: {c: _c_accuracy(c, on_test=False) for c in (0.001, 1.0, 100.0)}, "training examples"),
        (lambda: lambda: {c: _c_accuracy(c) for c in (0.001, 0.01, 0.1)}, "baseline"),
    ],
    success="a measured curve: too small a C cannot follow the data, too large a C fits the noise of 60 examples.",
    kind="experiment",
)


# --- 6. a prediction: what does an untrained encoder give a probe? ------------------------------------
predict_random_encoder = prediction(
    "predict_random_encoder",
    "With a thousand labelled images, where does the linear probe on the *untrained* encoder's shape "
    "features land: 'at chance' or 'well above chance'?",
    "well above chance",
    choices=("at chance", "well above chance"),
    why="Random weights still make features: the patch projection is a random linear map of the pixels and "
    "random attention mixes the patches, so the features keep most of what the pixels say, and a flat "
    "coloured shape on a plain background is easy to read from pixels. What training adds is the gap to "
    "the mini-CLIP's row.",
    hint="A random linear map of the pixels loses little: a linear probe on top can often undo it.",
)
