"""Gradient accumulation that keeps the contrastive batch whole: the gradients of K micro-batches
(cached features, one micro-batch recomputed with gradients at a time) equal the big batch's."""

import math

import pytest
import torch

from clipedu import CLIP, preset
from clipedu.data import ShapesWorld, build_tokenizer
from clipedu.loop import TrainConfig
from clipedu.losses import clip_loss
from clipedu.train import Trainer


@pytest.fixture(scope="module")
def data():
    return ShapesWorld(seed=0).generate(128, "train")


@pytest.fixture(scope="module")
def two_object_data():
    return ShapesWorld(num_objects=2, seed=0).generate(64, "train")


def _model(tokenizer, **overrides):
    torch.manual_seed(0)
    sizes = dict(vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1, text_heads=2,
                 embed_dim=16, vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length)
    return CLIP(preset("tiny", **{**sizes, **overrides}))


def _trainer(data, accum_steps, **kw):
    tok = build_tokenizer(data)
    cfg = TrainConfig(**{**dict(steps=10, batch_size=32, warmup_steps=1, lr=1e-3, log_every=1,
                                accum_steps=accum_steps), **kw})
    return Trainer(_model(tok), tok, data, cfg, device="cpu")


def _gradients(trainer, batch):
    out = trainer.compute_gradients(batch)
    return out["loss"].detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("accum_steps", [2, 4])
def test_accumulated_gradients_equal_the_big_batch(data, accum_steps):
    big = _trainer(data, 1)
    batch = next(iter(big.loader))
    loss, expected = _gradients(big, batch)
    small = _trainer(data, accum_steps)
    accumulated_loss, got = _gradients(small, batch)
    # The logged loss is the whole batch's loss, not a micro-batch's.
    torch.testing.assert_close(accumulated_loss, loss, rtol=0, atol=1e-6)
    for name, g in expected.items():  # fp32: only the summation order differs
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    # logit_scale takes its gradient once, not once per micro-batch.
    assert got["logit_scale"].abs() > 0
    torch.testing.assert_close(got["logit_scale"], expected["logit_scale"], rtol=1e-5, atol=1e-7)


def test_per_micro_batch_losses_would_give_other_gradients(data):
    """The naive accumulation (each micro-batch's own loss) is another objective: the test above
    would fail for it, which is why the features are cached."""
    trainer = _trainer(data, 1)
    batch = next(iter(trainer.loader))
    _, expected = _gradients(trainer, batch)
    model = trainer.model
    model.zero_grad()
    for part in (slice(0, 16), slice(16, 32)):
        out = model(batch.images[part], batch.tokens[part])
        (clip_loss(out.image_embeds, out.text_embeds, out.scale) / 2).backward()
    difference = (model.vision.proj.grad - expected["vision.proj"]).abs().max().item()
    assert difference > 1e-4


def test_accumulation_with_hard_negatives(two_object_data):
    big = _trainer(two_object_data, 1, hard_negatives=True, batch_size=16)
    batch = next(iter(big.loader))
    loss, expected = _gradients(big, batch)
    accumulated_loss, got = _gradients(_trainer(two_object_data, 4, hard_negatives=True, batch_size=16), batch)
    torch.testing.assert_close(accumulated_loss, loss, rtol=0, atol=1e-6)
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_training_with_accumulation_follows_the_big_batch_run(data):
    big = _trainer(data, 1).fit(progress=False)
    accumulated = _trainer(data, 4).fit(progress=False)
    assert len(accumulated.loss) == len(big.loss) == 10
    # Ten AdamW steps from the same start on the same batches: only rounding differs.
    torch.testing.assert_close(torch.tensor(accumulated.loss), torch.tensor(big.loss), rtol=0, atol=1e-4)


def test_accumulation_with_a_grad_scaler(data):
    """Loss scaling (fp16 on GPUs) multiplies every micro-batch's backward by the same factor and
    unscales once before clipping; the step must come out as without it."""
    plain = _trainer(data, 2)
    scaled = _trainer(data, 2)
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    batch = next(iter(plain.loader))
    plain.train_step(batch)
    scaled.train_step(batch)
    for (name, a), b in zip(plain.model.named_parameters(), scaled.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_accumulation_in_bfloat16_runs(data):
    trainer = _trainer(data, 2, precision="bf16", steps=3)
    history = trainer.fit(progress=False)
    assert all(math.isfinite(x) for x in history.loss)


def test_bad_accumulation_settings():
    with pytest.raises(ValueError, match="batch_size 30 does not split into accum_steps=4"):
        TrainConfig(batch_size=30, accum_steps=4)
    with pytest.raises(ValueError, match="accum_steps must be a positive int"):
        TrainConfig(accum_steps=0)
