"""Exercises of notebook 14: per-patch labels, ridge regression in closed form, what a far patch
knows, and how many labelled pictures a box head needs."""

from __future__ import annotations

import torch

from clipedu.data import ShapesWorld, to_float
from clipedu.evaluate import box_probe
from clipedu.exercises import Exercise, as_number, close, compare_tensors, prediction
from clipedu.patches import patch_coverage


# --- 1. per-patch labels from a mask ------------------------------------------------------------------------
def _label_cases():
    g = torch.Generator().manual_seed(3)
    masks = (torch.rand(5, 12, 12, generator=g) > 0.7).float() * torch.rand(5, 12, 12, generator=g)
    masks[0] = 0.0
    masks[1, :4, 8:] = 1.0  # the top-right patch fully covered: row-by-row order shows
    shapes = torch.tensor([0, 2, 1, 0, 3])
    return masks, shapes


def _patch_labels(masks, shapes, patch_size, threshold):
    cover = patch_coverage(masks, patch_size)  # (B, N)
    return torch.where(cover >= threshold, shapes[:, None] + 1, 0)  # 0 = background


def _check_patch_labels(fn) -> str | None:
    masks, shapes = _label_cases()
    for patch_size, threshold in ((4, 0.1), (4, 0.5), (6, 0.2)):
        call = f"my_patch_labels(masks {tuple(masks.shape)}, shapes, patch_size={patch_size}, threshold={threshold})"
        expected = _patch_labels(masks, shapes, patch_size, threshold)
        got = fn(masks.clone(), shapes.clone(), patch_size, threshold)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            unshifted = torch.where(expected > 0, expected - 1, 0)
            if torch.equal(got.long(), unshifted) and not torch.equal(got.long(), expected):
                return (f"{call}: the object's patches carry the shape index itself, so shape 0 and the background "
                        "look the same. Label a covered patch shape + 1 and keep 0 for the background.")
            g = 12 // patch_size
            transposed = expected.view(-1, g, g).transpose(1, 2).reshape(expected.shape)
            if not torch.equal(expected, transposed) and torch.equal(got.long(), transposed):
                return (f"{call}: the patches are in column order. Tokens go row by row (patchify's order): "
                        "the patch at grid row r, column c is number r * grid + c.")
            full = masks.reshape(-1, g, patch_size, g, patch_size).amax(dim=(2, 4)).reshape(expected.shape)
            by_max = torch.where(full >= threshold, shapes[:, None] + 1, 0)
            if not torch.equal(expected, by_max) and torch.equal(got.long(), by_max):
                return (f"{call}: you took each patch's largest mask value. The threshold is on the share of the "
                        "patch the object covers: the mean of the mask over the patch.")
        problem = compare_tensors(call, got, expected, atol=0)
        if problem:
            return problem
    return None


patch_labels = Exercise(
    name="patch_labels",
    task="my_patch_labels(masks (B, H, W), shapes (B,), patch_size, threshold) -> (B, N): 0 for background, "
    "shape + 1 where the mask covers at least `threshold` of the patch, patches row by row",
    checker=_check_patch_labels,
    hint_text="Reshape the masks to (B, H/P, P, W/P, P), average over the two P axes and flatten the grid row by "
    "row: that is each patch's coverage, (B, N). Then torch.where(coverage >= threshold, shapes[:, None] + 1, 0).",
    solution_code="""
    import torch


    def my_patch_labels(masks, shapes, patch_size, threshold):
        b, h, w = masks.shape
        p = patch_size
        cover = masks.reshape(b, h // p, p, w // p, p).mean(dim=(2, 4)).reshape(b, -1)  # (B, N), row by row
        return torch.where(cover >= threshold, shapes[:, None] + 1, 0)  # 0 is the background
    """,
    reference=lambda: _patch_labels,
    mistakes=[
        (lambda: lambda m, s, p, t: torch.where(patch_coverage(m, p) >= t, s[:, None], 0), "shape + 1"),
        (lambda: lambda m, s, p, t: _patch_labels(m.transpose(1, 2), s, p, t), "column order"),
        (lambda: lambda m, s, p, t: torch.where(
            m.reshape(len(m), m.shape[1] // p, p, -1, p).amax(dim=(2, 4)).reshape(len(m), -1) >= t, s[:, None] + 1, 0),
         "largest mask value"),
    ],
    success="each token now has a label: background, or the shape that covers its patch.",
)


# --- 2. ridge regression in closed form (a derivation) ------------------------------------------------------
def _ridge_cases():
    g = torch.Generator().manual_seed(5)
    cases = []
    for n, d, t, alpha in ((30, 4, 2, 0.5), (12, 20, 3, 2.0), (50, 6, 1, 10.0)):  # one case with D > N
        cases.append((torch.randn(n, d, generator=g, dtype=torch.float64),
                      torch.randn(n, t, generator=g, dtype=torch.float64), alpha))
    return cases


def _ridge(x, y, alpha):
    return torch.linalg.solve(x.T @ x + alpha * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)


def _check_ridge(fn) -> str | None:
    for x, y, alpha in _ridge_cases():
        n, d = x.shape
        call = f"my_ridge(x ({n}, {d}), y {tuple(y.shape)}, alpha={alpha})"
        # the minimiser of ||x W - y||^2 + alpha ||W||^2, by least squares on the stacked system
        stacked_x = torch.cat([x, alpha**0.5 * torch.eye(d, dtype=x.dtype)])
        stacked_y = torch.cat([y, torch.zeros(d, y.shape[1], dtype=y.dtype)])
        expected = torch.linalg.lstsq(stacked_x, stacked_y).solution  # (D, T)
        got = fn(x.clone(), y.clone(), alpha)
        if isinstance(got, torch.Tensor) and got.shape == (n, y.shape[1]) and got.shape != expected.shape:
            return f"{call}: you returned the predictions x W, shape {tuple(got.shape)}; return the weights W, (D, T)."
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            got = got.to(torch.float64)
            if d <= n and close(got, torch.linalg.lstsq(x, y).solution, rel=1e-6, atol=1e-8):
                return (f"{call}: that is plain least squares, (X^T X)^-1 X^T Y. The penalty alpha ||W||^2 adds "
                        "2 alpha W to the gradient, so alpha I joins X^T X before you invert it.")
            half = torch.linalg.solve(x.T @ x + 0.5 * alpha * torch.eye(d, dtype=x.dtype), x.T @ y)
            if close(got, half, rel=1e-6, atol=1e-8):
                return (f"{call}: the penalty enters as alpha I, not alpha I / 2: the gradient of alpha ||W||^2 "
                        "is 2 alpha W and the data term's is 2 X^T (X W - Y); the 2s cancel.")
        # the gradient of the objective must vanish at the answer
        problem = compare_tensors(f"{call} (the W where the gradient of ||xW - y||^2 + alpha ||W||^2 is zero)",
                                  got, expected, atol=1e-6)
        if problem:
            return problem
    return None


ridge = Exercise(
    name="ridge",
    task="my_ridge(x (N, D), y (N, T), alpha) -> W (D, T) minimising ||x W - y||^2 + alpha ||W||^2, in closed form",
    checker=_check_ridge,
    hint_text="Differentiate: the gradient is 2 X^T (X W - Y) + 2 alpha W. Set it to zero and solve for W: "
    "(X^T X + alpha I) W = X^T Y. torch.linalg.solve(A, B) solves A W = B without forming an inverse.",
    solution_code="""
    import torch


    def my_ridge(x, y, alpha):
        gram = x.T @ x + alpha * torch.eye(x.shape[1], dtype=x.dtype)  # (D, D), invertible for alpha > 0
        return torch.linalg.solve(gram, x.T @ y)  # (D, T): the gradient 2 X^T (XW - Y) + 2 alpha W is zero here
    """,
    reference=lambda: _ridge,
    mistakes=[
        (lambda: lambda x, y, alpha: torch.linalg.solve(x.T @ x, x.T @ y), "plain least squares"),
        (lambda: lambda x, y, alpha: _ridge(x, y, alpha / 2), "not alpha I / 2"),
        (lambda: lambda x, y, alpha: x @ _ridge(x, y, alpha), "the predictions"),
        (lambda: lambda x, y, alpha: torch.linalg.solve(x.T @ x + alpha * torch.eye(x.shape[1], dtype=x.dtype),
                                                         x.T @ y) + alpha, "gradient"),
    ],
    success="the normal equations with a ridge: one linear solve fits the whole head, no training loop.",
    kind="derive",
)


# --- 3. a prediction: what does the farthest patch know? ---------------------------------------------------
predict_far_patch = prediction(
    "predict_far_patch",
    "After the tower's 4 blocks, how well can a linear probe read the object's shape from the token of "
    "the patch farthest from it: 'chance' or 'well above chance'?",
    "well above chance",
    choices=("chance", "well above chance"),
    why="Before the first block the far patch's token holds only its own pixels (background) and its "
    "position, so the probe is at chance there; every block's attention lets each token read every "
    "other one, and after one block the far token already knows the shape far better than chance.",
    hint="Attention has no locality: in every block, each token takes a weighted average over all 17 tokens.",
)


# --- 4. an experiment: labelled pictures against box error --------------------------------------------------
EXPERIMENT_TRAIN, EXPERIMENT_TEST = 400, 200


def experiment_setup():
    """Pixel features of ShapesWorld pictures and their boxes: (train_x, train_boxes, test_x, test_boxes).
    Each picture is averaged over 4 x 4 pixel blocks, (N, 3 * 8 * 8) = (N, 192); a box is the object's
    centre x, centre y and radius in pixels, (N, 3). The same numbers on every call."""
    world = ShapesWorld(seed=0)
    out = []
    for split, n in (("train", EXPERIMENT_TRAIN), ("test", EXPERIMENT_TEST)):
        data = world.generate(n, split, seed=21, geometry=True)
        pixels = torch.nn.functional.avg_pool2d(to_float(data.images), 4).flatten(1)  # (N, 192)
        out += [pixels, data.info["boxes"][:, 0]]  # (N, 3)
    return tuple(out)


def _centre_error(n: int, test: bool = True) -> float:
    tx, ty, vx, vy = experiment_setup()
    result = box_probe(tx[:n], ty[:n], vx if test else tx[:n], vy if test else ty[:n])
    return (result.error[0] + result.error[1]) / 2


def _check_experiment(fn) -> str | None:
    measured = fn()
    if not isinstance(measured, dict):
        return f"return a dict {{number of training pictures: centre error in pixels}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} setting(s); an experiment needs at least 3 numbers of training "
                "pictures to show a trend (e.g. 25, 100, 400).")
    for n in measured:
        if not isinstance(n, int) or not 10 <= n <= EXPERIMENT_TRAIN:
            return f"each key is a number of training pictures, an int from 10 to {EXPERIMENT_TRAIN}; got {n!r}."
    for n, value in sorted(measured.items()):
        got = as_number(value)
        if got is None:
            return f"the error for n={n} should be one number, got {type(value).__name__}."
        expected = _centre_error(n)
        if close(got, expected, rel=1e-3, atol=1e-3):
            continue
        on_train = _centre_error(n, test=False)
        if close(got, on_train, rel=1e-3, atol=1e-3):
            return (f"for n={n} you reported {got:.3f} px, the error on the training pictures themselves; the "
                    f"head is judged on the test pictures ({expected:.3f} px): training error flatters a big head.")
        return (f"for n={n} the checker measured a centre error of {expected:.3f} px on the test pictures, you "
                f"reported {got:.3f}. Use box_probe(train_x[:n], train_boxes[:n], test_x, test_boxes) and average "
                "its first two errors (centre x and centre y).")
    return None


def _reference_experiment():
    return {n: _centre_error(n) for n in (25, 100, 400)}


box_labels = Exercise(
    name="box_labels",
    task="my_experiment() -> {n: centre error}: a box head fit on the first n labelled pictures, for at least 3 "
    "values of n, judged on the test pictures",
    checker=_check_experiment,
    hint_text="train_x, train_boxes, test_x, test_boxes = nb14.experiment_setup(); for each n fit "
    "box_probe(train_x[:n], train_boxes[:n], test_x, test_boxes) and keep (error[0] + error[1]) / 2.",
    solution_code="""
    from clipedu.evaluate import box_probe
    from clipedu.exercises import nb14


    def my_experiment():
        train_x, train_boxes, test_x, test_boxes = nb14.experiment_setup()
        errors = {}
        for n in (25, 100, 400):  # the one thing changed: how many labelled pictures the head sees
            result = box_probe(train_x[:n], train_boxes[:n], test_x, test_boxes)
            errors[n] = (result.error[0] + result.error[1]) / 2  # centre x and y, in pixels
        return errors
    """,
    reference=lambda: _reference_experiment,
    mistakes=[
        (lambda: lambda: {25: 3.0, 100: 2.0, 400: 1.0}, "the checker measured"),
        (lambda: lambda: {400: _centre_error(400)}, "at least 3"),
        (lambda: lambda: {n: _centre_error(n, test=False) for n in (25, 100, 400)}, "training pictures themselves"),
    ],
    success="a measured curve: the head's error against the labels it was given.",
    kind="experiment",
)
