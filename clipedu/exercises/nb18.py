"""Exercises of notebook 18: a loss in nats per token from each caption's summed loss, a prediction of
whether the soft prompt carries the word order ITM reads, and the frozen LM's loss with no picture."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipedu.blip2.language_model import IGNORE_INDEX, LMConfig, TinyLM, caption_labels, loss_without_picture
from clipedu.data import ShapesWorld, build_tokenizer
from clipedu.exercises import Exercise, as_number, prediction


# --- 1. nats per token -------------------------------------------------------------------------------------
def loss_per_token(summed: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The mean loss over every token of a set of captions, from each caption's summed loss (nats) and its
    number of predicted tokens: what stage 2's loss reports."""
    return summed.sum() / lengths.sum()


def _check_per_token(fn) -> str | None:
    gen = torch.Generator().manual_seed(18)
    for n in (4, 7, 1):
        lengths = torch.randint(3, 12, (n,), generator=gen)
        summed = lengths * (1.0 + torch.rand(n, generator=gen))  # each caption 1-2 nats a token
        call = f"my_loss_per_token(summed {n} values, lengths {lengths.tolist()})"
        got = as_number(fn(summed.clone(), lengths.clone()))
        expected = loss_per_token(summed, lengths).item()
        if got is None:
            return f"{call} should return one number (a 0-dim tensor or a float)."
        if n > 1 and abs(got - (summed / lengths).mean().item()) < 1e-6 and abs(got - expected) > 1e-6:
            return (f"{call}: that is the mean over captions of each caption's mean. Every token counts once: "
                    "a caption with 11 tokens weighs more than one with 3. Divide the total by the total.")
        if abs(got - summed.mean().item()) < 1e-6 and abs(got - expected) > 1e-6:
            return f"{call}: that is nats per caption; divide by the number of tokens, not of captions."
        if abs(got - expected) > 1e-5:
            return f"{call} should be {expected:.5f}, got {got:.5f}."
    return None


per_token = Exercise(
    name="per_token",
    task="my_loss_per_token(summed, lengths) -> the loss in nats per token over all the captions, from each "
    "caption's summed loss (N,) and its number of predicted tokens (N,)",
    checker=_check_per_token,
    hint_text="The total loss over all captions, divided by the total number of tokens.",
    solution_code="""
    def my_loss_per_token(summed, lengths):
        return summed.sum() / lengths.sum()  # every token counts once, whatever its caption's length
    """,
    reference=lambda: loss_per_token,
    mistakes=[
        (lambda: lambda s, n: (s / n).mean(), "Every token counts once"),
        (lambda: lambda s, n: s.mean(), "nats per caption"),
        (lambda: lambda s, n: s.sum() / n.sum() + 0.1, "should be"),
        (lambda: lambda s, n: s / n, "one number"),
    ],
    success="the LM's loss per token, the number both runs below report on the test captions.",
    kind="derive",
)


# --- 2. a prediction: does the soft prompt carry word order? -----------------------------------------------
predict_prompt_word_order = prediction(
    "predict_prompt_word_order",
    "ITM, in the Q-Former after stage 1, puts a test caption above its swap for about every picture. Reading "
    "that Q-Former's queries as its soft prompt, will the frozen LM give the caption a lower loss than its "
    "swap for more than 70% of the test pictures: 'yes' or 'no'?",
    "no",
    choices=("yes", "no"),
    why="the prompt is the queries' outputs, written with no caption in the Q-Former. ITM reads word order from "
    "the caption's words and the queries together, and nothing of that joint pass reaches the prompt; whatever "
    "arrangement the queries hold, the LM reading them through one linear layer does not turn it into a "
    "preference for the right order (47-60% in every run measured).",
    hint="Which of stage 1's passes runs when Blip2Captioner.soft_prompt writes the prompt: ITC's, ITM's or ITG's? "
    "Does a caption take part in it?",
)


# --- 3. the LM with no picture ------------------------------------------------------------------------------
def _check_without_picture(fn) -> str | None:
    data = ShapesWorld().generate(6, "test")
    tokenizer = build_tokenizer(data)
    tokens = tokenizer([c[0] for c in data.captions])
    torch.manual_seed(18)
    lm = TinyLM(LMConfig.for_tokenizer(tokenizer, width=16, layers=1, heads=2)).eval()
    with torch.no_grad():
        got = as_number(fn(lm, tokens.clone()))
        logits = lm(tokens)
        expected = loss_without_picture(lm, tokens).item()
        with_padding = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:]).item()
        unshifted = F.cross_entropy(logits.transpose(1, 2), caption_labels(tokens, lm.cfg.pad_token_id),
                                    ignore_index=IGNORE_INDEX).item()
    if got is None:
        return "my_experiment(lm, tokens) should return one number (a 0-dim tensor or a float)."
    if abs(got - with_padding) < 1e-5:
        return ("the loss counts the padding after <eot> too; caption_labels(tokens, lm.cfg.pad_token_id) marks "
                "what to skip (IGNORE_INDEX, -100), and lm_loss skips it.")
    if abs(got - unshifted) < 1e-5:
        return ("position i predicts the token at i + 1: compare logits[:, :-1] with labels[:, 1:] (lm_loss does "
                "the shift), not each position with its own token.")
    if abs(got - expected) > 1e-4:
        return f"on a small LM and 6 captions the loss should be {expected:.4f} nats per token, got {got:.4f}."
    return None


without_picture = Exercise(
    name="without_picture",
    task="my_experiment(lm, tokens) -> the frozen LM's loss on the captions with no prompt in front, nats per token",
    checker=_check_without_picture,
    hint_text="lm(tokens) gives logits (B, L, V) with no prefix; b2.caption_labels(tokens, lm.cfg.pad_token_id) "
    "the labels; b2.lm_loss(logits, labels) the shifted cross-entropy. Under torch.no_grad().",
    solution_code="""
    import torch

    from clipedu import blip2 as b2


    def my_experiment(lm, tokens):
        with torch.no_grad():
            return b2.lm_loss(lm(tokens), b2.caption_labels(tokens, lm.cfg.pad_token_id))
    """,
    reference=lambda: loss_without_picture,
    mistakes=[
        (lambda: lambda lm, t: F.cross_entropy(lm(t)[:, :-1].transpose(1, 2), t[:, 1:]), "padding"),
        (lambda: lambda lm, t: F.cross_entropy(lm(t).transpose(1, 2), caption_labels(t, lm.cfg.pad_token_id),
                                               ignore_index=IGNORE_INDEX), "predicts the token at i + 1"),
        (lambda: lambda lm, t: loss_without_picture(lm, t) + 0.2, "should be"),
    ],
    success="the floor of what a prompt must beat: a stage-2 run whose test loss is no lower passes on nothing "
    "of the picture.",
    kind="experiment",
)
