"""Measuring BLIP-2 at toy scale: are its captions right, and does ITM re-ranking help retrieval?

- **Attribute accuracy of generated captions**: each caption is parsed with ShapesWorld's grammar
  (:func:`clipedu.data.grammar.parse_caption`) and each attribute it names is compared with the
  picture's label. A caption that names no colour, or two, gets the colour wrong.
- **Retrieval, ITC then ITM**: ITC similarities rank the whole gallery cheaply (one pass per image
  and per text); ITM, which reads image and text together, re-scores only each query's top ``k``
  candidates, as BLIP-2 does. The re-ranked score is ITM's log-odds of a match plus the ITC cosine
  (the course's choice; BLIP-2's reference code adds the ITM head's match logit instead).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from clipedu.blip2.captioning import Blip2Captioner, greedy_decode
from clipedu.blip2.frozen import FrozenImageEncoder, freeze_
from clipedu.blip2.language_model import TinyLM
from clipedu.blip2.objectives import Blip2Stage1, query_text_similarity
from clipedu.blip2.qformer import QFormer
from clipedu.blip2.training import attribute_keys, train_stage2
from clipedu.checkpoint import keyed_folder
from clipedu.data import CaptionedImages
from clipedu.data.grammar import parse_caption

ATTRIBUTES = ("shape", "colour", "size", "position")


def caption_attribute_accuracy(
    captions: Sequence[str], data: CaptionedImages, attributes: Sequence[str] = ATTRIBUTES
) -> dict[str, float]:
    """Fraction of captions naming each attribute correctly, plus "shape+colour" and "all" (every
    listed attribute right at once)."""
    if len(captions) != len(data):
        raise ValueError(f"{len(captions)} captions for {len(data)} images")
    missing = [a for a in attributes if a not in data.labels]
    if missing:
        raise ValueError(f"the data has no labels for {missing}; it has {sorted(data.labels)}")
    right = {a: torch.zeros(len(data), dtype=torch.bool) for a in attributes}
    for i, caption in enumerate(captions):
        parsed = parse_caption(caption)
        for a in attributes:
            right[a][i] = parsed.get(a) == data.class_names[a][int(data.labels[a][i])]
    out = {a: right[a].float().mean().item() for a in attributes}
    if "shape" in right and "colour" in right:
        out["shape+colour"] = (right["shape"] & right["colour"]).float().mean().item()
    out["all"] = torch.stack([right[a] for a in attributes]).all(0).float().mean().item()
    return out


@torch.no_grad()
def generate_captions(model, features: torch.Tensor, tokenizer, batch_size: int = 256, **kwargs) -> list[str]:
    """Captions for every row of ``features`` (N, N_tok, C), in batches, as text.

    ``model`` is a :class:`Blip2Captioner` (the frozen LM writes; options as its ``generate``) or a
    :class:`Blip2Stage1` (the Q-Former's own ITG decoder writes, greedily).
    """
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(features), batch_size):
        ids = model.generate(features[start : start + batch_size].to(device), **kwargs)
        out += [tokenizer.decode(row) for row in ids]
    return out


@torch.no_grad()
def continue_captions(lm, tokenizer, texts: Sequence[str], max_length: int | None = None) -> list[str]:
    """What the LM writes, greedily, after each text (its ``<sot> ... <eot>`` tokens as context).

    Given one caption of a picture, a competent caption LM writes another caption of the same
    picture: a test that it reads its context, which is all a soft prompt can use. Texts of the
    same length in tokens share a batch (so no context needs padding).
    """
    lm.eval()
    device = next(lm.parameters()).device
    max_length = max_length or tokenizer.context_length
    encoded = [tokenizer.encode(t) for t in texts]
    out: list[str | None] = [None] * len(texts)
    for length in sorted({len(ids) for ids in encoded}):
        rows = [i for i, ids in enumerate(encoded) if len(ids) == length]
        context = torch.tensor([encoded[i] for i in rows], device=device)  # (n, length)
        for i, ids in zip(rows, greedy_decode(lm, lm.token_embed(context), max_length)):
            out[i] = tokenizer.decode(ids)
    return out


# --- retrieval ---------------------------------------------------------------------------------------------
@torch.no_grad()
def itc_similarities(model: Blip2Stage1, features: torch.Tensor, tokens: torch.Tensor,
                     batch_size: int = 500) -> torch.Tensor:
    """(N_images, N_texts) ITC cosines (max over queries), from separate image and text passes."""
    model.eval()
    device = next(model.parameters()).device
    image = torch.cat([model.image_feats(features[s : s + batch_size].to(device))
                       for s in range(0, len(features), batch_size)])  # (N_i, Q, E)
    text = torch.cat([model.text_feats(tokens[s : s + batch_size].to(device))
                      for s in range(0, len(tokens), batch_size)])  # (N_t, E)
    return query_text_similarity(image, text).cpu()


@torch.no_grad()
def itm_rerank(model: Blip2Stage1, features: torch.Tensor, tokens: torch.Tensor, itc: torch.Tensor,
               k: int = 16, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-score each image's top-``k`` texts and each text's top-``k`` images with ITM.

    Returns (image->text scores (N_i, N_t), text->image scores (N_t, N_i)): ITM log-odds + ITC
    cosine for the candidates, -inf for everything ITC did not shortlist.
    """
    model.eval()
    device = next(model.parameters()).device

    def rerank(sims: torch.Tensor, images_are_rows: bool) -> torch.Tensor:
        kk = min(k, sims.shape[1])
        top_sim, top_idx = sims.topk(kk, dim=1)  # (N, k) each row's shortlist
        rows = torch.arange(sims.shape[0])[:, None].expand(-1, kk).flatten()  # (N*k,)
        cols = top_idx.flatten()
        image_index, text_index = (rows, cols) if images_are_rows else (cols, rows)
        scores = []
        for s in range(0, len(rows), batch_size):
            f = features[image_index[s : s + batch_size]].to(device)
            t = tokens[text_index[s : s + batch_size]].to(device)
            scores.append(model.itm_score(f, t).float().cpu())
        out = torch.full(sims.shape, float("-inf"))
        out[rows, cols] = torch.cat(scores) + top_sim.flatten()
        return out

    return rerank(itc, images_are_rows=True), rerank(itc.t(), images_are_rows=False)


def recall_at_k(scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"R@k": fraction of rows whose top-k columns hold a relevant one} for (N, M) scores."""
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and relevant {tuple(relevant.shape)} must match")
    out = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        out[f"R@{k}"] = relevant.gather(1, top).any(dim=1).float().mean().item()
    return out


def retrieval_comparison(
    model: Blip2Stage1, features: torch.Tensor, data: CaptionedImages, tokenizer, k: int = 16,
    ks: Sequence[int] = (1, 5),
) -> dict[str, dict[str, float]]:
    """Recall@K of ITC alone and of ITC then ITM, both directions, over ``data``'s first captions.

    A hit is a caption (image) with the same attributes as the image (caption): two pictures of a
    large red circle at the top left are both right for "a big red disc in the top left".
    """
    tokens = tokenizer([caps[0] for caps in data.captions], context_length=model.cfg.context_length,
                       truncate=True)
    keys = attribute_keys(data)
    relevant = keys[:, None] == keys[None, :]  # (N, N): image i, caption j
    itc = itc_similarities(model, features, tokens)
    i2t, t2i = itm_rerank(model, features, tokens, itc, k=k)
    report = {}
    for name, (a, b) in {"ITC": (itc, itc.t()), "ITC+ITM": (i2t, t2i)}.items():
        row = {f"image->text {key}": v for key, v in recall_at_k(a, relevant, ks).items()}
        row.update({f"text->image {key}": v for key, v in recall_at_k(b, relevant.t(), ks).items()})
        report[name] = row
    return report


# --- word order: a caption against its swap (notebook 17) ---------------------------------------------------
def swap_relevance(keys: torch.Tensor) -> torch.Tensor:
    """(N, 2N) bool: which of the N captions and then the N swapped captions are right for each of N
    pictures. Caption j is right for picture i when their scenes have the same labels (``keys``, as
    :func:`~clipedu.blip2.training.attribute_keys` gives); a swapped caption is never right."""
    if keys.dim() != 1:
        raise ValueError(f"keys must be one id per picture, shape (N,); got shape {tuple(keys.shape)}")
    n = len(keys)
    return torch.cat([keys[:, None] == keys[None, :], torch.zeros(n, n, dtype=torch.bool)], dim=1)


def swap_margins(model: Blip2Stage1, features: torch.Tensor, data: CaptionedImages, tokenizer
                 ) -> dict[str, torch.Tensor]:
    """How much more each picture's caption scores than its swapped caption, by ITC (cosine) and by
    ITM (log-odds of a match): {"ITC": (N,), "ITM": (N,)}, above 0 where the caption wins."""
    return _swap_scores(model, features, data, tokenizer)[1]


def word_order_mistakes(scores: torch.Tensor, relevant: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether picture i's first text by ``scores`` (N, 2N) is wrong (``relevant``, as
    :func:`swap_relevance` gives) and holds exactly the words of picture i's caption (the token ids of
    ``texts`` (2N, L) row i, in any order): a mistake no bag of words could avoid."""
    n = scores.shape[0]
    if scores.shape != relevant.shape or scores.shape[1] != len(texts) or len(texts) < n:
        raise ValueError(f"scores {tuple(scores.shape)}, relevant {tuple(relevant.shape)} and texts "
                         f"{tuple(texts.shape)} must be (N, M), (N, M) and (M, L) with M >= N")
    bags = texts.sort(dim=1).values  # the same words in any order give the same row
    first = scores.argmax(dim=1)
    rows = torch.arange(n)
    return ~relevant[rows, first] & (bags[first] == bags[:n]).all(dim=1)


def word_order_comparison(model: Blip2Stage1, features: torch.Tensor, data: CaptionedImages, tokenizer,
                          k: int = 8) -> dict[str, float]:
    """ITC against ITM where only word order tells a caption from a wrong one (two-object scenes).

    - ``swap ITC`` / ``swap ITM``: the share of pictures whose caption scores above its swap
      (:func:`swap_margins`; chance is 0.5);
    - ``i2t ITC`` / ``i2t ITC+ITM``: image->text recall@1 over the N captions and their N swaps
      together (:func:`swap_relevance`), by ITC alone and with ITC's top ``k`` re-ranked by ITM;
    - ``i2t word order ITC`` / ``i2t word order ITC+ITM``: the share of pictures whose first text
      is a wrong one with exactly their caption's words in another order (its swap, or another
      picture's caption that says the same), by ITC alone and re-ranked: the mistakes that only
      word order can fix (:func:`word_order_mistakes`);
    - ``t2i ITC`` / ``t2i ITC+ITM``: text->image recall@1 of the true captions (a swap has no
      right picture).
    """
    (texts, itc), margins = _swap_scores(model, features, data, tokenizer)
    image_to_text, text_to_image = itm_rerank(model, features, texts, itc, k=k)
    relevant = swap_relevance(attribute_keys(data))
    n = len(data)
    return {
        "swap ITC": (margins["ITC"] > 0).float().mean().item(),
        "swap ITM": (margins["ITM"] > 0).float().mean().item(),
        "i2t ITC": recall_at_k(itc, relevant, (1,))["R@1"],
        "i2t ITC+ITM": recall_at_k(image_to_text, relevant, (1,))["R@1"],
        "i2t word order ITC": word_order_mistakes(itc, relevant, texts).float().mean().item(),
        "i2t word order ITC+ITM": word_order_mistakes(image_to_text, relevant, texts).float().mean().item(),
        "t2i ITC": recall_at_k(itc.t()[:n], relevant.t()[:n], (1,))["R@1"],
        "t2i ITC+ITM": recall_at_k(text_to_image[:n], relevant.t()[:n], (1,))["R@1"],
    }


@torch.no_grad()
def captioner_word_order(captioner: Blip2Captioner, features: torch.Tensor, data: CaptionedImages, tokenizer
                         ) -> dict[str, float]:
    """A stage-2 captioner on held-out two-object scenes (notebook 18):

    - ``loss``: the frozen LM's loss on each picture's first caption after its soft prompt, in nats per
      token (stage 2's own loss, on pictures it did not train on);
    - ``swap``: the share of pictures whose caption has a lower summed loss than its swapped caption
      (:meth:`~clipedu.blip2.captioning.Blip2Captioner.caption_losses`; chance is 0.5).
    """
    _check_swaps(features, data)
    device = next(captioner.parameters()).device
    context = min(captioner.language_model.cfg.max_positions - captioner.num_queries, tokenizer.context_length)
    captions, swaps = (tokenizer([texts[0] for texts in lists], context_length=context, truncate=True).to(device)
                       for lists in (data.captions, data.hard_negatives))
    features = features.to(device)
    captioner.eval()
    right, swapped = captioner.caption_losses(features, captions), captioner.caption_losses(features, swaps)
    return {"loss": captioner(features, captions).item(), "swap": (right < swapped).float().mean().item()}


def stage2_from_starts(
    starts: Mapping[str, tuple[QFormer, nn.LayerNorm]], language_model: TinyLM, image_encoder: FrozenImageEncoder,
    features: torch.Tensor, data: CaptionedImages, test_features: torch.Tensor, test_data: CaptionedImages,
    tokenizer, cfg, device=None, train_qformer: bool = True, keep_in: str | Path | None = None,
) -> dict[str, tuple]:
    """Stage 2 once from each start, alike in all else (notebook 18): whether stage 1
    gives stage 2 a head start is a comparison of two such runs.

    ``starts`` maps a name to a (Q-Former, ``ln_vision``) pair; each run trains a copy of its pair
    (the originals are left as they were) in front of the same frozen ``language_model``, with the
    same ``lm_proj`` (drawn after ``torch.manual_seed(cfg.seed)``), steps, batches and seed. With
    ``train_qformer=False`` the copies stay frozen and only ``lm_proj`` learns: the LM then reads
    only what the queries already carry. ``keep_in``: a folder to keep the runs in, each in a
    subfolder named by everything it depends on (a second call with the same inputs loads them).
    Returns {name: (the run's History, :func:`captioner_word_order` on the test data)}."""
    if not starts:
        raise ValueError("give at least one start: {name: (qformer, ln_vision)}")
    results = {}
    for name, (qformer, ln_vision) in starts.items():
        torch.manual_seed(cfg.seed)  # the same lm_proj for every start
        captioner = Blip2Captioner(copy.deepcopy(qformer), copy.deepcopy(ln_vision), language_model, image_encoder)
        captioner.to(device if device is not None else features.device)
        if not train_qformer:
            freeze_(captioner.qformer)
            freeze_(captioner.ln_vision)
        folder = None
        if keep_in is not None:
            # The fingerprint of the captioner names its frozen weights: a frozen Q-Former is another run.
            folder = keyed_folder(keep_in, name, captioner, features, data.captions, cfg)
        history = train_stage2(captioner, features, data, tokenizer, cfg, device, progress=False, out_dir=folder,
                               resume="auto" if folder is not None else False)
        results[name] = history, captioner_word_order(captioner, test_features, test_data, tokenizer)
    return results


def _check_swaps(features: torch.Tensor, data: CaptionedImages) -> None:
    if data.hard_negatives is None:
        raise ValueError(f"the data has no swapped captions (hard_negatives): {data}; "
                         "use two-object scenes, get_dataset('shapes2', ...)")
    if len(features) != len(data):
        raise ValueError(f"{len(features)} pictures' features for {len(data)} pictures")


@torch.no_grad()
def _swap_scores(model: Blip2Stage1, features: torch.Tensor, data: CaptionedImages, tokenizer):
    """((the N captions then the N swaps as tokens (2N, L), ITC cosines (N, 2N)), swap margins)."""
    _check_swaps(features, data)
    length = model.cfg.context_length
    captions, swaps = (tokenizer([texts[0] for texts in lists], context_length=length, truncate=True)
                       for lists in (data.captions, data.hard_negatives))
    texts = torch.cat([captions, swaps])
    itc = itc_similarities(model, features, texts)  # (N, 2N)
    n = len(data)
    model.eval()
    device = next(model.parameters()).device
    itm = [torch.cat([model.itm_score(features[s : s + 500].to(device), t[s : s + 500].to(device)).float().cpu()
                      for s in range(0, n, 500)]) for t in (captions, swaps)]
    margins = {"ITC": itc[:, :n].diagonal() - itc[:, n:].diagonal(), "ITM": itm[0] - itm[1]}
    return (texts, itc), margins
