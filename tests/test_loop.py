"""The loop every model trains in: its config, its history, its checkpoints, exact resume."""

import math
import threading
import time
from dataclasses import replace

import pytest
import torch
from torch import nn

from clipedu.checkpoint import fingerprint, keyed_folder, load_checkpoint, save_checkpoint
from clipedu.data import DeviceLoader, ShapesWorld
from clipedu.loop import History, Loop, TrainConfig, TrainingDiverged


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"format": "clipedu-checkpoint-1", "step": 1})

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoi")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"format": "clipedu-checkpoint-1", "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1  # the old checkpoint survived whole
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left behind


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="is not a clipedu checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(ValueError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_bad_train_configs():
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        TrainConfig(steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="precision must be"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        TrainConfig(steps=0)


def test_warmup_none_is_a_tenth_of_the_steps_and_configs_round_trip():
    assert TrainConfig(steps=300, warmup_steps=None).warmup_steps == 30
    cfg = TrainConfig(steps=20, warmup_steps=2, betas=[0.9, 0.95])
    assert cfg.betas == (0.9, 0.95)
    assert TrainConfig.from_dict({**cfg.__dict__, "no longer a field": 1}) == cfg
    with pytest.raises(ValueError, match="log_every must be a positive int"):
        TrainConfig(log_every=0)
    with pytest.raises(ValueError, match="does not split into accum_steps=3"):
        TrainConfig(batch_size=64, accum_steps=3)


def test_history_series_read_as_attributes_and_survive_a_round_trip():
    h = History(name="demo", batch_size=8)
    h.log(1, loss=2.0, lr=0.1, logit_scale=math.log(10))
    h.log(10, loss=1.5, lr=0.05, logit_scale=math.log(20))
    assert h.loss == [2.0, 1.5] and h.last() == 1.5 and h.last("lr") == 0.05
    assert h.temperature == pytest.approx([0.1, 0.05])
    with pytest.raises(AttributeError, match="logged no 'accuracy'"):
        _ = h.accuracy
    again = History.from_dict(h.to_dict())
    assert again == h
    # A checkpoint written before the series were a dict: flat lists beside step.
    old = {"step": [1], "loss": [3.0], "logit_scale": [2.0], "lr": [0.1], "evals": [], "seconds": 1.0, "batch_size": 4}
    assert History.from_dict(old).loss == [3.0] and History.from_dict(old).batch_size == 4


class Regression(Loop):
    """A linear model on the pixels' mean colour, with a random draw in every step (as BLIP-2's)."""

    def losses(self, batch):
        x = batch.images.mean(dim=(2, 3))  # (B, 3)
        noise = 0.01 * torch.randn(x.shape[0], generator=self.generator)  # (B,)
        target = batch.images[:, 0].mean(dim=(1, 2)) + noise  # (B,) the red channel
        loss = ((self.model(x).squeeze(1) - target) ** 2).mean()
        return {"loss": loss, "half": loss.detach() / 2}


def _regression(cfg, out_dir=None):
    torch.manual_seed(0)
    data = ShapesWorld(seed=0).generate(64, "train")
    loader = DeviceLoader(data, lambda texts: torch.zeros(len(texts), 1, dtype=torch.long), batch_size=cfg.batch_size,
                          device="cpu", shuffle=True, augment=cfg.augment, seed=cfg.seed)
    return Regression(nn.Linear(3, 1), loader, cfg, torch.device("cpu"), out_dir=out_dir, name="regression")


def test_a_loop_logs_its_losses_and_resumes_exactly(tmp_path):
    cfg = TrainConfig(steps=10, batch_size=16, warmup_steps=2, lr=1e-2, log_every=1, checkpoint_every=4, augment=True)
    full = _regression(cfg).fit(progress=False)
    assert full.step == list(range(1, 11)) and set(full.series) == {"loss", "lr", "half", "examples_per_s"}
    assert full.half == pytest.approx([v / 2 for v in full.loss])

    class Interrupt(Exception):
        pass

    def stop_at_6(loop):
        if loop.step == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        _regression(cfg, tmp_path).fit(progress=False, callback=stop_at_6)
    assert load_checkpoint(tmp_path)["step"] == 4
    torch.manual_seed(123)  # another process: other weights, other global random state
    resumed = _regression(cfg, tmp_path).fit(resume=True, progress=False)
    assert resumed.step == full.step and resumed.loss == full.loss and resumed.lr == full.lr


def test_resume_auto_trains_once_then_loads_the_finished_run(tmp_path):
    cfg = TrainConfig(steps=6, batch_size=16, warmup_steps=1, lr=1e-2, log_every=1)
    first_loop = _regression(cfg, tmp_path)
    first = first_loop.fit(resume="auto", progress=False)  # nothing there yet: trains
    assert first.step == list(range(1, 7)) and load_checkpoint(tmp_path)["step"] == 6
    again = _regression(cfg, tmp_path)
    calls = []
    again.train_step = lambda batch: calls.append(batch)  # a step would be a failure: the run is finished
    history = again.fit(resume="auto", progress=False)
    assert calls == [] and history.loss == first.loss and history.seconds == pytest.approx(first.seconds, abs=1.0)
    for a, b in zip(again.model.parameters(), first_loop.model.parameters()):
        assert torch.equal(a, b)  # the trained weights, not _regression's fresh ones
    with pytest.raises(ValueError, match="resume must be True, False or 'auto', got 'yes'"):
        _regression(cfg, tmp_path).fit(resume="yes", progress=False)
    with pytest.raises(ValueError, match="resume='auto' needs an out_dir"):
        _regression(cfg).fit(resume="auto", progress=False)


def test_a_resumed_run_keeps_its_recipe(tmp_path):
    cfg = TrainConfig(steps=4, batch_size=16, warmup_steps=1, lr=1e-2, log_every=1)
    _regression(cfg, tmp_path).fit(progress=False)
    # The optimiser's and the loader's saved states would carry the old settings: refused, named.
    with pytest.raises(ValueError, match=r"another recipe \(lr 0.01 there, 0.02 here, seed 0 there, 3 here\)"):
        _regression(replace(cfg, lr=2e-2, seed=3), tmp_path).fit(resume=True, progress=False)
    with pytest.raises(ValueError, match=r"another recipe \(batch_size 16 there, 8 here\)"):
        _regression(replace(cfg, batch_size=8), tmp_path).fit(resume="auto", progress=False)
    # More steps (the warm-up then follows from them) and other intervals go on from the checkpoint.
    longer = replace(cfg, steps=6, warmup_steps=2, log_every=2, checkpoint_every=3)
    history = _regression(longer, tmp_path).fit(resume=True, progress=False)
    assert history.step == [1, 2, 3, 4, 6]
    assert TrainConfig(steps=10, warmup_steps=None).differences(TrainConfig(steps=20, warmup_steps=None)) == {}
    assert TrainConfig(warmup_steps=5).differences(TrainConfig(warmup_steps=6)) == {"warmup_steps": (5, 6)}


def test_two_loops_on_one_folder_train_it_once(tmp_path):
    # The second loop asks for the run while the first is training (its callback holds each step
    # open a moment): it waits on the folder's lock, then finds the run finished and only loads it.
    cfg = TrainConfig(steps=3, batch_size=16, warmup_steps=1, lr=1e-2, log_every=1)
    first_loop, second_loop = _regression(cfg, tmp_path / "run"), _regression(cfg, tmp_path / "run")
    second_steps = []
    second_loop.train_step = lambda batch: second_steps.append(batch)  # a step here is a run trained twice
    started, results = threading.Event(), {}

    def slow(loop):
        started.set()
        time.sleep(0.3)

    first = threading.Thread(target=lambda: results.setdefault("first", first_loop.fit("auto", False, slow)))
    first.start()
    assert started.wait(60)
    second = threading.Thread(target=lambda: results.setdefault("second", second_loop.fit("auto", False)))
    second.start()
    first.join(60)
    second.join(60)
    assert second_steps == [] and results["second"].loss == results["first"].loss
    for a, b in zip(second_loop.model.parameters(), first_loop.model.parameters()):
        assert torch.equal(a, b)


def test_fingerprint_changes_with_any_weight_or_setting_and_only_then():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    cfg = TrainConfig(steps=10, warmup_steps=1)
    base = fingerprint(model, cfg, {"itm_weight": 3.0, "swapped": True})
    assert len(base) == 12 and int(base, 16) >= 0
    assert fingerprint(model, cfg, {"swapped": True, "itm_weight": 3.0}) == base  # dict order does not matter
    same = nn.Linear(3, 2)
    same.load_state_dict(model.state_dict())
    assert fingerprint(same, TrainConfig(steps=10, warmup_steps=1), {"itm_weight": 3.0, "swapped": True}) == base
    with torch.no_grad():
        same.weight[0, 0] += 1e-6
    assert fingerprint(same, cfg, {"itm_weight": 3.0, "swapped": True}) != base  # one weight
    other = TrainConfig(steps=11, warmup_steps=1)
    assert fingerprint(model, other, {"itm_weight": 3.0, "swapped": True}) != base  # one setting
    assert fingerprint(model, cfg, {"itm_weight": 3, "swapped": True}) != base  # 3 and 3.0: other types
    assert fingerprint(model.weight.double()) != fingerprint(model.weight)  # same values, other dtype
    assert fingerprint(torch.zeros(2, 3)) != fingerprint(torch.zeros(3, 2))  # same bytes, other shape
    assert fingerprint(torch.tensor(2.0)) != fingerprint(torch.tensor([2.0])) != fingerprint(torch.tensor(3.0))
    assert fingerprint([1, 2]) != fingerprint((1, 2)) and fingerprint("12") != fingerprint(12)
    model.bias.requires_grad_(False)  # the same weights with the bias frozen: another run
    frozen = fingerprint(model, cfg, {"itm_weight": 3.0, "swapped": True})
    assert frozen != base
    model.bias.requires_grad_(True)
    assert fingerprint(model, cfg, {"itm_weight": 3.0, "swapped": True}) == base
    assert len(fingerprint(model, length=20)) == 20
    with pytest.raises(TypeError, match="fingerprint takes modules, .* got set"):
        fingerprint({1, 2})
    with pytest.raises(ValueError, match="length must be an int from 1 to 64 hex digits, got 0"):
        fingerprint(model, length=0)


def test_the_contrastive_options_are_refused_by_other_loops():
    with pytest.raises(ValueError, match="regression: hard_negatives and accum_steps are options of CLIP's"):
        _regression(TrainConfig(steps=4, batch_size=16, warmup_steps=0, accum_steps=2))
    with pytest.raises(ValueError, match="this loop takes neither"):
        _regression(TrainConfig(steps=4, batch_size=16, warmup_steps=0, hard_negatives=True))


def test_a_loop_stops_on_a_non_finite_loss_and_says_where():
    loop = _regression(TrainConfig(steps=5, batch_size=16, warmup_steps=0, lr=1e30, grad_clip=0))
    with pytest.raises(TrainingDiverged, match="regression: the loss became .* at step .*nothing was saved"):
        loop.fit(progress=False)


class FrozenThenHead(Loop):
    """A frozen part with dropout inside, then dropout and a trained head; records what the frozen part gave."""

    def losses(self, batch):
        x = batch.images.mean(dim=(2, 3))  # (B, 3)
        features = self.model[0](x)
        self.seen.append((x.detach().clone(), features.detach().clone(), self.model[0].training))
        target = batch.images[:, 0].mean(dim=(1, 2))
        return {"loss": ((self.model[1:](features).squeeze(1) - target) ** 2).mean()}


def test_a_loop_keeps_frozen_submodules_in_eval_mode_while_the_rest_trains():
    torch.manual_seed(0)
    frozen = nn.Sequential(nn.Linear(3, 64), nn.Dropout(0.5))
    frozen.requires_grad_(False)
    model = nn.Sequential(frozen, nn.Dropout(0.5), nn.Linear(64, 1))  # the lone dropout has no parameters: trains
    data = ShapesWorld(seed=0).generate(32, "train")
    loader = DeviceLoader(data, lambda texts: torch.zeros(len(texts), 1, dtype=torch.long), batch_size=8,
                          device="cpu", shuffle=True, seed=0)
    cfg = TrainConfig(steps=3, batch_size=8, warmup_steps=1, lr=1e-2)
    loop = FrozenThenHead(model, loader, cfg, torch.device("cpu"))
    loop.seen = []
    assert loop.frozen == [frozen]
    model.eval()  # fit must put the trained part back in training mode
    loop.fit(progress=False)
    assert len(loop.seen) == 3
    for x, features, training in loop.seen:
        assert not training
        assert torch.equal(features, frozen[0](x))  # no unit dropped: the frozen part ran as in eval mode
    loop.train_mode()
    assert not frozen.training and not frozen[1].training
    assert model.training and model[1].training and model[2].training
    nothing_frozen = nn.Sequential(nn.Dropout(0.1), nn.Linear(3, 1))
    assert FrozenThenHead(nothing_frozen, loader, TrainConfig(steps=2, batch_size=8, warmup_steps=1),
                          torch.device("cpu")).frozen == []


def test_keyed_folder_names_a_run_by_its_name_and_what_it_depends_on(tmp_path):
    weights = torch.ones(3)
    folder = keyed_folder(tmp_path, "stage 2: frozen/Q", weights, {"steps": 5})
    assert folder == tmp_path / f"stage-2--frozen-Q-{fingerprint(weights, {'steps': 5})}"
    assert keyed_folder(str(tmp_path), "stage 2: frozen/Q", weights.clone(), {"steps": 5}) == folder
    assert keyed_folder(tmp_path, "stage 2: frozen/Q", weights, {"steps": 6}) != folder
    assert not folder.exists()  # naming a folder makes nothing
    with pytest.raises(ValueError, match="give what the run depends on"):
        keyed_folder(tmp_path, "stage1")

