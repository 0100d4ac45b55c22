"""Exercises of notebook 07: a prompt-ensemble classifier, how many templates it needs, recall@K and its floor
for a random ranking, the loss with hard negatives, and whether a plain model reads word order."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipedu.exercises import Exercise, as_number, compare_tensors, prediction


def _shape(got) -> str:
    return str(tuple(got.shape)) if isinstance(got, torch.Tensor) else type(got).__name__


# --- 1. the prompt ensemble ----------------------------------------------------------------------------
def _prompt_cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(70)
    cases = []
    for k, t, e in ((4, 3, 8), (6, 5, 16), (3, 1, 8)):
        centre = torch.randn(k, 1, e, generator=g)
        cases.append(F.normalize(centre + 0.8 * torch.randn(k, t, e, generator=g), dim=-1))  # (K, T, E) unit
    return cases


def ensemble_reference(prompt_embeds: torch.Tensor) -> torch.Tensor:
    return F.normalize(prompt_embeds.mean(dim=1), dim=-1)


def check_prompt_ensemble(ensemble_classifier) -> str | None:
    """The checker of a prompt ensemble (K, T, E) -> (K, E)."""
    for prompts in _prompt_cases():
        k, t, e = prompts.shape
        call = f"ensemble_classifier(prompt_embeds) with K={k} classes, T={t} templates, E={e}"
        got = ensemble_classifier(prompts.clone())
        expected = ensemble_reference(prompts)
        if not isinstance(got, torch.Tensor):
            return f"{call} should return a tensor of shape ({k}, {e}), got {type(got).__name__}."
        if tuple(got.shape) == (t, e) and t != k:
            return (f"{call} returned shape {tuple(got.shape)}: you averaged over the classes (dim 0); average "
                    f"over the templates (dim 1) to get one vector per class, ({k}, {e}).")
        if tuple(got.shape) != (k, e):
            return f"{call} should return one vector per class, shape ({k}, {e}), got {tuple(got.shape)}."
        norms = prompts.mean(dim=1).norm(dim=-1)  # (K,) lengths of the plain means
        if torch.allclose(got.float(), prompts.mean(dim=1), atol=1e-5) and t > 1:
            return (f"{call}: the mean of unit vectors is shorter than 1 (here norms "
                    f"{norms.min().item():.3f} to {norms.max().item():.3f}); "
                    "renormalise it so every class vector has unit length, as the image embeddings do.")
        if torch.allclose(got.float(), prompts[:, 0], atol=1e-5) and t > 1:
            return f"{call}: that is the first template alone; the ensemble averages every template's embedding."
        problem = compare_tensors("the class vectors", got.float(), expected)
        if problem:
            return f"{call}: {problem}"
    return None


ensemble_classifier = Exercise(
    name="ensemble_classifier",
    task="ensemble_classifier(prompt_embeds (K, T, E)) -> (K, E) unit vectors: the mean over templates, renormalised",
    checker=check_prompt_ensemble,
    hint_text="prompt_embeds[c, t] is the unit embedding of class c written with template t. Average over the "
    "templates (dim=1), then divide each class vector by its length (F.normalize(..., dim=-1)).",
    solution_code="""
    import torch.nn.functional as F


    def ensemble_classifier(prompt_embeds):
        return F.normalize(prompt_embeds.mean(dim=1), dim=-1)  # (K, E)
    """,
    reference=lambda: ensemble_reference,
    mistakes=[
        (lambda: lambda p: F.normalize(p.mean(dim=0), dim=-1), "over the classes"),
        (lambda: lambda p: p.mean(dim=1), "renormalise"),
        (lambda: lambda p: p[:, 0], "first template alone"),
        (lambda: lambda p: [0.0], "should return a tensor"),
    ],
    success="that is zero_shot_classifier's weight matrix: one unit vector per class, averaged over prompts.",
)


# --- 2. recall@K -----------------------------------------------------------------------------------------
def _similarity_cases() -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(71)
    cases = []
    for n, k, noise in ((10, 1, 1.2), (12, 3, 1.5), (9, 2, 1.0)):
        img = F.normalize(torch.randn(n, 8, generator=g), dim=-1)
        txt = F.normalize(img + noise * torch.randn(n, 8, generator=g), dim=-1)
        cases.append((img @ txt.t(), k))  # (N, N), row i = image i, its own caption is text i
    return cases


def _recall_reference(similarities: torch.Tensor, k: int) -> float:
    top = similarities.topk(k, dim=1).indices  # (N, k) best texts of each image
    return (top == torch.arange(len(similarities))[:, None]).any(dim=1).float().mean().item()


def _check_recall(recall_at_k) -> str | None:
    for sims, k in _similarity_cases():
        n = sims.shape[0]
        call = f"recall_at_k(similarities, k={k}) on an ({n}, {n}) matrix"
        got = recall_at_k(sims.clone(), k)
        value = as_number(got)
        if value is None:
            return f"{call} should return one number (a fraction of the {n} images), got {_shape(got)}."
        expected = _recall_reference(sims, k)
        if abs(value - expected) < 1e-6:
            continue
        hits = round(expected * n)
        diagnoses = [
            (expected * n, f"that is the number of hits ({hits}); recall is the fraction, hits / {n}"),
            (_recall_reference(sims.t(), k), "you ranked the images for each text (columns); image -> text ranks "
             "the texts in each row"),
            (_recall_reference(sims, k + 1), f"you counted the top {k + 1}; recall@{k} looks at the top {k}"),
            (_recall_reference(sims, max(1, k - 1)) if k > 1 else float("nan"),
             f"you counted the top {k - 1}; recall@{k} looks at the top {k}"),
            (sims.argsort(dim=1)[:, :k].eq(torch.arange(n)[:, None]).any(1).float().mean().item(),
             "you took the k *least* similar texts; sort in descending order"),
        ]
        for wrong, message in diagnoses:
            if abs(value - wrong) < 1e-6 and abs(wrong - expected) > 1e-6:
                return f"{call} gave {value:.4g}, expected {expected:.4g}: {message}."
        return f"{call} gave {value:.4g}, expected {expected:.4g}."
    return None


recall_at_k = Exercise(
    name="recall_at_k",
    task="recall_at_k(similarities (N, N), k) -> the fraction of images whose own caption is among their top k",
    checker=_check_recall,
    hint_text="Row i holds image i's cosine with every caption, and its own caption is column i. "
    "similarities.topk(k, dim=1).indices gives each row's k best columns; count the rows where i is among "
    "them and divide by N.",
    solution_code="""
    import torch


    def recall_at_k(similarities, k):
        top = similarities.topk(k, dim=1).indices  # (N, k) the best captions of each image
        own = torch.arange(similarities.shape[0])[:, None]  # (N, 1)
        return (top == own).any(dim=1).float().mean().item()
    """,
    reference=lambda: _recall_reference,
    mistakes=[
        (lambda: lambda s, k: _recall_reference(s, k) * s.shape[0], "fraction"),
        (lambda: lambda s, k: _recall_reference(s.t(), k), "columns"),
        (lambda: lambda s, k: _recall_reference(s, k + 1), "top"),
        (lambda: lambda s, k: s.argsort(dim=1)[:, :k].eq(torch.arange(s.shape[0])[:, None]).any(1).float().mean(),
         "least"),
        (lambda: lambda s, k: s.topk(k, dim=1).indices, "one number"),
    ],
    success="that is image -> text recall@K; the same function on similarities.T gives text -> image.",
)


# --- 3. the loss with hard negatives (NegCLIP) -------------------------------------------------------
def _negclip_cases() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]:
    g = torch.Generator().manual_seed(72)
    cases = []
    for b, e, scale in ((4, 8, 10.0), (6, 16, 30.0), (3, 8, 1.0)):
        img = F.normalize(torch.randn(b, e, generator=g), dim=-1)
        txt = F.normalize(img + 0.7 * torch.randn(b, e, generator=g), dim=-1)
        neg = F.normalize(txt + 0.3 * torch.randn(b, e, generator=g), dim=-1)  # close to the true caption: hard
        cases.append((img, txt, neg, scale))
    return cases


def _negclip_reference(image_embeds, text_embeds, negative_embeds, scale):
    b = image_embeds.shape[0]
    labels = torch.arange(b)
    logits = scale * image_embeds @ torch.cat([text_embeds, negative_embeds]).t()  # (B, 2B)
    image_to_text = F.cross_entropy(logits, labels)
    text_to_image = F.cross_entropy(logits[:, :b].t(), labels)  # the negatives are nobody's caption
    return (image_to_text + text_to_image) / 2


def _plain(img, txt, scale):
    labels = torch.arange(img.shape[0])
    logits = scale * img @ txt.t()
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def _check_negclip(negclip_loss) -> str | None:
    for img, txt, neg, scale in _negclip_cases():
        b = img.shape[0]
        call = f"negclip_loss(image_embeds, text_embeds, negative_embeds, scale={scale}) with B={b}"
        got = negclip_loss(img.clone(), txt.clone(), neg.clone(), scale)
        value = as_number(got)
        if value is None:
            return f"{call} should return one number (the batch's loss), got {_shape(got)}."
        expected = _negclip_reference(img, txt, neg, scale).item()
        if abs(value - expected) <= 1e-4 * max(1.0, abs(expected)):
            continue
        labels = torch.arange(b)
        both = scale * img @ torch.cat([txt, neg]).t()  # (B, 2B)
        diagnoses = [
            (_plain(img, txt, scale).item(), "that is the plain CLIP loss: the swapped captions never enter it"),
            (((F.cross_entropy(both, labels) + F.cross_entropy(both.t(), torch.cat([labels, labels]))) / 2).item(),
             "you gave the swapped captions a text -> image row of their own, as if each one described its image; "
             "they are negatives only, so they add columns to image -> text and nothing else"),
            (((F.cross_entropy(scale * img @ torch.cat([neg, txt]).t(), labels)
               + F.cross_entropy((scale * img @ txt.t()).t(), labels)) / 2).item(),
             "you put the negatives before the true captions, so label i now points at a swapped caption; "
             "concatenate [text_embeds, negative_embeds]"),
            (F.cross_entropy(both, labels).item(),
             "that is only the image -> text half; average it with text -> image"),
            (((F.cross_entropy(img @ torch.cat([txt, neg]).t(), labels)
               + F.cross_entropy((img @ txt.t()).t(), labels)) / 2).item(),
             "you did not multiply the cosines by the scale"),
        ]
        for wrong, message in diagnoses:
            if abs(value - wrong) <= 1e-4 * max(1.0, abs(wrong)):
                return f"{call} gave {value:.5g}, expected {expected:.5g}: {message}."
        return f"{call} gave {value:.5g}, expected {expected:.5g}."
    return None


negclip_loss = Exercise(
    name="negclip_loss",
    task="negclip_loss(image_embeds, text_embeds, negative_embeds, scale) -> CLIP's loss with one extra "
    "negative caption per image",
    checker=_check_negclip,
    hint_text="Image -> text: each image now chooses among 2B captions, the B true ones followed by the B swapped "
    "ones: logits = scale * image_embeds @ cat([text_embeds, negative_embeds]).T, shape (B, 2B), and the "
    "right answer of row i is still column i. Text -> image is unchanged: only the B true captions have an "
    "image. Average the two cross-entropies.",
    solution_code="""
    import torch
    import torch.nn.functional as F


    def negclip_loss(image_embeds, text_embeds, negative_embeds, scale):
        b = image_embeds.shape[0]
        labels = torch.arange(b)
        logits = scale * image_embeds @ torch.cat([text_embeds, negative_embeds]).t()  # (B, 2B)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits[:, :b].t(), labels)) / 2
    """,
    reference=lambda: _negclip_reference,
    mistakes=[
        (lambda: lambda i, t, n, s: _plain(i, t, s), "plain CLIP loss"),
        (lambda: lambda i, t, n, s: (F.cross_entropy(s * i @ torch.cat([t, n]).t(), torch.arange(len(i)))
                                     + F.cross_entropy((s * i @ torch.cat([t, n]).t()).t(),
                                                       torch.arange(len(i)).repeat(2))) / 2, "negatives only"),
        (lambda: lambda i, t, n, s: (F.cross_entropy(s * i @ torch.cat([n, t]).t(), torch.arange(len(i)))
                                     + F.cross_entropy((s * i @ t.t()).t(), torch.arange(len(i)))) / 2, "before"),
        (lambda: lambda i, t, n, s: F.cross_entropy(s * i @ torch.cat([t, n]).t(), torch.arange(len(i))), "half"),
        (lambda: lambda i, t, n, s: _negclip_reference(i, t, n, 1.0), "scale"),
        (lambda: lambda i, t, n, s: s * i @ torch.cat([t, n]).t(), "one number"),
    ],
    success="that is clip_loss(..., hard_negatives=...): the swapped caption must now lose to the true one.",
)


# --- 4. an experiment: how many templates does an ensemble need? -------------------------------------------
def experiment_setup():
    """A small stand-in for the notebook's data, the same on every call: (image_embeds (N, E),
    prompt_embeds (K, T, E), labels (N,)). Each class's prompts scatter around its centre, and the
    templates pull some classes more than others, as "the {} circle" pulls circles."""
    g = torch.Generator().manual_seed(73)
    k, t, e, n = 5, 12, 16, 300
    centres = F.normalize(torch.randn(k, e, generator=g), dim=-1)  # (K, E)
    bias = 0.9 * torch.randn(t, e, generator=g)  # (T, E) what each template adds to every class
    spread = torch.rand(k, 1, 1, generator=g) + 0.3  # classes whose prompts scatter more (shorter means)
    prompts = F.normalize(centres[:, None] + bias[None] + spread * torch.randn(k, t, e, generator=g), dim=-1)
    labels = torch.arange(n) % k
    images = F.normalize(centres[labels] + 0.9 * torch.randn(n, e, generator=g), dim=-1)
    return images, prompts, labels


def _ensemble_accuracy(images, prompts, labels, t, renormalise=True):
    classes = prompts[:, :t].mean(dim=1)  # (K, E)
    if renormalise:
        classes = F.normalize(classes, dim=-1)
    return ((images @ classes.t()).argmax(dim=1) == labels).float().mean().item()


def _check_templates(fn) -> str | None:
    images, prompts, labels = experiment_setup()
    measured = fn(images.clone(), prompts.clone(), labels.clone())
    n_templates = prompts.shape[1]
    if not isinstance(measured, dict):
        return f"return a dict {{number of templates: accuracy}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} setting(s); an experiment needs at least 3 numbers of templates to "
                "show a trend (e.g. 1, 4 and all of them).")
    for t in measured:
        if not isinstance(t, int) or not 1 <= t <= n_templates:
            return (f"each key is a number of templates, an int from 1 to the number the data has "
                    f"(prompt_embeds.shape[1], {n_templates} here); got {t!r}.")
    if 1 not in measured:
        return "include the baseline, 1 template (no ensemble), so that the gain has something to be measured against."
    for t, value in sorted(measured.items()):
        got = as_number(value)
        if got is None:
            return f"the accuracy for t={t} should be one number, got {type(value).__name__}."
        expected = _ensemble_accuracy(images, prompts, labels, t)
        if abs(got - expected) < 1e-6:
            continue
        if abs(got - (1 - expected)) < 1e-6:
            return (f"for t={t} you reported {got:.3f}, the error rate; the experiment measures the accuracy, "
                    f"{expected:.3f}.")
        if abs(got - _ensemble_accuracy(images, prompts[:, t - 1:t], labels, 1)) < 1e-6:
            return (f"for t={t} you scored template {t - 1} alone; the ensemble of t templates averages the "
                    f"embeddings of the first t, prompt_embeds[:, :t].mean(dim=1).")
        if abs(got - _ensemble_accuracy(images, prompts, labels, t, renormalise=False)) < 1e-6:
            return (f"for t={t} you did not renormalise the class vectors: a class whose prompts disagree gets a "
                    "shorter mean and loses every comparison; F.normalize(..., dim=-1) after the mean.")
        return (f"for t={t} the checker measured an accuracy of {expected:.3f} on the same data, you reported "
                f"{got:.3f}: average prompt_embeds[:, :t] over dim 1, renormalise, classify each image by the largest "
                "cosine, and count the images whose prediction is their label.")
    return None


def _reference_templates(images, prompts, labels):
    return {t: _ensemble_accuracy(images, prompts, labels, t) for t in (1, 3, prompts.shape[1])}


template_count = Exercise(
    name="template_count",
    task="my_experiment(image_embeds, prompt_embeds, labels) -> {t: zero-shot accuracy of the ensemble of the first "
    "t templates}, for at least 3 values of t, 1 included",
    checker=_check_templates,
    hint_text="For each t: classes = F.normalize(prompt_embeds[:, :t].mean(dim=1), dim=-1); predictions = "
    "(image_embeds @ classes.T).argmax(dim=1); accuracy = (predictions == labels).float().mean().item().",
    solution_code="""
    import torch.nn.functional as F


    def my_experiment(image_embeds, prompt_embeds, labels):
        accuracy = {}
        for t in (1, 2, 4, prompt_embeds.shape[1]):  # the one thing changed: how many templates are averaged
            classes = F.normalize(prompt_embeds[:, :t].mean(dim=1), dim=-1)  # (K, E)
            predictions = (image_embeds @ classes.t()).argmax(dim=1)  # (N,)
            accuracy[t] = (predictions == labels).float().mean().item()
        return accuracy
    """,
    reference=lambda: _reference_templates,
    mistakes=[
        (lambda: lambda i, p, y: {1: 0.5, 4: 0.7, 12: 0.9}, "the checker measured"),
        (lambda: lambda i, p, y: {t: _ensemble_accuracy(i, p, y, t) for t in (1, 12)}, "at least 3"),
        (lambda: lambda i, p, y: {t: _ensemble_accuracy(i, p, y, t) for t in (2, 4, 12)}, "baseline"),
        (lambda: lambda i, p, y: {t: 1 - _ensemble_accuracy(i, p, y, t) for t in (1, 4, 12)}, "error rate"),
        (lambda: lambda i, p, y: {t: _ensemble_accuracy(i, p[:, t - 1:t], y, 1) for t in (1, 4, 12)}, "alone"),
        (lambda: lambda i, p, y: {t: _ensemble_accuracy(i, p, y, t, renormalise=False) for t in (1, 4, 12)},
         "renormalise"),
    ],
    success="a measured curve: accuracy against the number of templates in the ensemble. The next cell runs "
    "your function on the course model's colour prompts.",
    kind="experiment",
)


# --- 5. a derivation: recall@K of a random ranking ------------------------------------------------------------
def _random_recall_brute(n: int, k: int, r: int) -> float:
    """Every set of k positions a random ranking can put first is equally likely: count those that hold at
    least one of the r relevant captions (the relevant ones are positions 0 .. r - 1, by symmetry)."""
    from itertools import combinations

    tops = list(combinations(range(n), k))
    return sum(any(p < r for p in top) for top in tops) / len(tops)


_RECALL_CASES = ((10, 1, 1), (10, 3, 1), (9, 2, 3), (12, 4, 2), (8, 5, 3))


def _check_random_recall(fn) -> str | None:
    from math import comb

    for n, k, r in _RECALL_CASES:
        call = f"random_recall(n={n}, k={k}, r={r})"
        got = as_number(fn(n, k, r))
        if got is None:
            return f"{call} should return one number, a probability."
        expected = _random_recall_brute(n, k, r)
        if abs(got - expected) < 1e-9:
            continue
        diagnoses = [
            (k / n, "that is the answer for one relevant caption (r = 1); with r of them a hit is more likely"),
            (r * k / n, "r * k / n counts a top k that holds two relevant captions twice (it can even exceed 1); "
             "count the rankings with no hit instead, and take the complement"),
            (1 - (1 - r / n) ** k, "1 - (1 - r/n)^k draws the k captions independently, with replacement; a "
             "ranking places k different captions, so after each miss fewer wrong ones are left"),
            (comb(n - r, k) / comb(n, k), "that is the chance of a miss (no relevant caption in the top k); "
             "recall is its complement"),
        ]
        for wrong, message in diagnoses:
            if abs(got - wrong) < 1e-9 and abs(wrong - expected) > 1e-9:
                return f"{call} gave {got:.4g}, expected {expected:.4g}: {message}."
        return (f"{call} gave {got:.4g}; counting every top {k} of a random ranking of {n} captions gives "
                f"{expected:.4g}.")
    return None


def _ref_random_recall(n, k, r):
    from math import comb

    return 1 - comb(n - r, k) / comb(n, k)


random_recall = Exercise(
    name="random_recall",
    task="random_recall(n, k, r) -> the expected recall@k of a random ranking of n captions of which r are right",
    checker=_check_random_recall,
    hint_text="A random ranking puts every set of k captions first with the same probability, 1 / C(n, k). Count "
    "the sets with no right caption in them, C(n - r, k): the probability of a miss is their share, and recall is "
    "one minus it (math.comb).",
    solution_code="""
    from math import comb


    def random_recall(n, k, r=1):
        return 1 - comb(n - r, k) / comb(n, k)  # one minus the chance that the top k holds none of the r
    """,
    reference=lambda: _ref_random_recall,
    mistakes=[
        (lambda: lambda n, k, r: k / n, "r = 1"),
        (lambda: lambda n, k, r: r * k / n, "twice"),
        (lambda: lambda n, k, r: 1 - (1 - r / n) ** k, "with replacement"),
        (lambda: lambda n, k, r: __import__("math").comb(n - r, k) / __import__("math").comb(n, k), "complement"),
    ],
    success="with r = 1 it is k / n: the floor every recall in this notebook is measured against.",
    kind="derive",
)


# --- 6. a prediction: does the plain model tell a caption from its swap? ------------------------------------
predict_swapped = prediction(
    "predict_swapped",
    "After its plain training on two-object scenes, how often does the plain model score an image's caption "
    "above the same caption with the two objects swapped: 'about 50%', 'about 75%' or 'above 90%'?",
    "about 50%",
    choices=("about 50%", "about 75%", "above 90%"),
    why="The loss only asks each caption to beat the other captions of its batch, and those almost always name "
    "other objects, so a bag of words lowers the loss as well as word order does; the text tower gives a caption "
    "and its swap nearly the same vector, and the plain model stays at chance at every evaluation.",
    hint="Look at the count at the start of section 7: how often does a batch of 128 contain the contrast 'same two "
    "objects, other order' that would reward reading the order?",
)
