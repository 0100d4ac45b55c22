import math
import warnings

import pytest
import torch

import clipedu.train as train_module
from clipedu import CLIP, preset
from clipedu.checkpoint import load_checkpoint
from clipedu.data import ShapesWorld, build_tokenizer
from clipedu.loop import History, TrainConfig, TrainingDiverged
from clipedu.train import Trainer, collapsed, looks_collapsed, mean_off_diagonal_cosine


@pytest.fixture(scope="module")
def data():
    return ShapesWorld(seed=0).generate(256, "train")


@pytest.fixture(scope="module")
def tokenizer(data):
    return build_tokenizer(data)


def _model(tokenizer, **overrides):
    torch.manual_seed(0)
    sizes = dict(vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1, text_heads=2,
                 embed_dim=16, vocab_size=tokenizer.vocab_size)
    cfg = preset("tiny", **{**sizes, **overrides})
    return CLIP(cfg)


def _cfg(**kw):
    base = dict(steps=12, batch_size=32, warmup_steps=2, lr=3e-4, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_falls_well_below_chance_without_collapse(data, tokenizer):
    model = _model(tokenizer, vision_width=64, vision_layers=2, text_width=64, text_layers=2, embed_dim=32)
    trainer = Trainer(model, tokenizer, data, _cfg(steps=40, batch_size=64, lr=2e-3, warmup_steps=10), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a collapse warning fails the test
        h = trainer.fit(progress=False)
    assert len(h.loss) == 40 and h.loss[-1] < math.log(64) - 0.5


def test_resume_reproduces_an_uninterrupted_run(data, tokenizer, tmp_path):
    full = Trainer(_model(tokenizer), tokenizer, data, _cfg(), device="cpu").fit(progress=False)

    class Interrupt(Exception):
        pass

    def stop_at_7(trainer):
        if trainer.step == 7:
            raise Interrupt

    cfg = _cfg(checkpoint_every=5)  # the last checkpoint before the interruption is at step 5
    first = Trainer(_model(tokenizer), tokenizer, data, cfg, device="cpu", out_dir=tmp_path)
    with pytest.raises(Interrupt):
        first.fit(progress=False, callback=stop_at_7)
    assert load_checkpoint(tmp_path)["step"] == 5
    # A fresh process: a new model with other weights, resumed from the checkpoint.
    torch.manual_seed(123)
    second = Trainer(_model(tokenizer), tokenizer, data, cfg, device="cpu", out_dir=tmp_path)
    resumed = second.fit(resume=True, progress=False)
    assert resumed.step == full.step
    torch.testing.assert_close(torch.tensor(resumed.loss), torch.tensor(full.loss), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(resumed.lr), torch.tensor(full.lr), rtol=0, atol=0)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data, tokenizer, tmp_path, monkeypatch):
    trainer = Trainer(_model(tokenizer), tokenizer, data, _cfg(checkpoint_every=1), device="cpu", out_dir=tmp_path)
    real = train_module.clip_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(train_module, "clip_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 4.*last good checkpoint"):
        trainer.fit(progress=False)
    state = load_checkpoint(tmp_path)
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values())




def test_checkpoint_holds_everything_and_loads_weights_only(data, tokenizer, tmp_path):
    trainer = Trainer(_model(tokenizer), tokenizer, data, _cfg(steps=3), device="cpu", out_dir=tmp_path)
    trainer.fit(progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key in ("config", "train_config", "tokenizer", "model", "optimizer", "scheduler", "step", "rng", "loader"):
        assert key in state, key
    assert state["tokenizer"]["vocab"] == tokenizer.vocab
    mapped = load_checkpoint(tmp_path, mmap=True)  # what clipedu runs reads: the same, its tensors left on disk
    assert mapped["step"] == state["step"] == 3 and mapped["train_config"] == state["train_config"]
    assert mapped["model"].keys() == state["model"].keys()
    assert all(torch.equal(mapped["model"][k], state["model"][k]) for k in state["model"])




def test_resuming_with_another_config_is_refused(data, tokenizer, tmp_path):
    Trainer(_model(tokenizer), tokenizer, data, _cfg(steps=3), device="cpu", out_dir=tmp_path).fit(progress=False)
    other = Trainer(_model(tokenizer, embed_dim=8), tokenizer, data, _cfg(steps=4), device="cpu", out_dir=tmp_path)
    with pytest.raises(ValueError, match="another model config"):
        other.fit(resume=True, progress=False)


def test_resume_without_checkpoint_is_an_error(data, tokenizer, tmp_path):
    trainer = Trainer(_model(tokenizer), tokenizer, data, _cfg(), device="cpu", out_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="nothing to resume"):
        trainer.fit(resume=True, progress=False)


def test_logit_scale_is_clamped_after_each_step(data, tokenizer):
    model = _model(tokenizer)
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    trainer = Trainer(model, tokenizer, data, _cfg(steps=1, warmup_steps=0), device="cpu")
    trainer.fit(progress=False)
    assert model.logit_scale.item() <= math.log(100) + 1e-6










def test_tokenizer_must_fit_the_model(data, tokenizer):
    small = _model(tokenizer, vocab_size=10)
    with pytest.raises(ValueError, match=f"tokenizer has {tokenizer.vocab_size} words"):
        Trainer(small, tokenizer, data, _cfg(), device="cpu")


def test_hard_negatives_need_swapped_captions(data, tokenizer):
    with pytest.raises(ValueError, match="needs data with swapped captions"):
        Trainer(_model(tokenizer), tokenizer, data, _cfg(hard_negatives=True), device="cpu")


def test_hard_negative_training_runs_on_two_object_scenes():
    data = ShapesWorld(num_objects=2, seed=0).generate(128, "train")
    tok = build_tokenizer(data)
    trainer = Trainer(_model(tok, context_length=tok.context_length), tok, data,
                      _cfg(steps=3, hard_negatives=True), device="cpu")
    h = trainer.fit(progress=False)
    assert len(h.loss) == 3 and all(math.isfinite(x) for x in h.loss)


def test_mean_off_diagonal_cosine_matches_brute_force():
    e = torch.nn.functional.normalize(torch.randn(9, 5), dim=-1)
    sims = e @ e.t()
    brute = (sims.sum() - sims.diagonal().sum()) / (9 * 8)
    assert mean_off_diagonal_cosine(e) == pytest.approx(brute.item(), abs=1e-6)
    assert mean_off_diagonal_cosine(torch.ones(4, 3) / 3**0.5) == pytest.approx(1.0, abs=1e-6)


def test_collapse_detection():
    b = 128
    assert looks_collapsed(math.log(b), 0.99, 0.95, b)
    assert not looks_collapsed(math.log(b), 0.99, 0.5, b)  # an untrained image tower alone: not collapse
    assert not looks_collapsed(math.log(b), 0.1, 0.1, b)  # near-chance loss but spread out: early training
    assert not looks_collapsed(1.0, 0.99, 0.99, b)
    n = 30
    h = History(batch_size=b, step=list(range(1, n + 1)),
                series={"loss": [math.log(b)] * n, "image_similarity": [0.98] * n, "text_similarity": [0.97] * n})
    assert collapsed(h)
    h.loss[-1] = 2.0  # recovering
    assert not collapsed(h)
    short = History(batch_size=b, step=[1, 2, 3],
                    series={"loss": [math.log(b)] * 3, "image_similarity": [0.99] * 3, "text_similarity": [0.99] * 3})
    assert not collapsed(short)  # a blip right after warm-up is not a plateau
