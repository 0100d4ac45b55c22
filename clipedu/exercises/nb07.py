"""Exercises of notebook 07: a prompt-ensemble classifier, recall@K, and the loss with hard negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipedu.exercises import Exercise, as_number, compare_tensors


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
