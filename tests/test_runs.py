"""Runs: train once, load everywhere; a model config or a preset name; the run folder's name."""

import re
import threading
import time
from dataclasses import replace

import pytest
import torch

from clipedu import preset, runs
from clipedu.checkpoint import run_lock
from clipedu.data import ShapesWorld
from clipedu.loop import TrainConfig
from clipedu.runs import (
    default_train_config,
    is_trained,
    keyed_run_dir,
    list_runs,
    remove_run,
    run_dir,
    run_dir_name,
    run_names,
    train_or_load,
    training_data,
    with_steps,
)


@pytest.fixture(scope="module")
def data():
    return ShapesWorld(seed=0).generate(128, "train")


def test_train_or_load_loads_the_finished_run(tmp_path, data):
    cfg = TrainConfig(steps=2, batch_size=32, warmup_steps=0)
    first = train_or_load("shapes", "tiny", cfg, out_dir=tmp_path, data=data, device="cpu", progress=False)
    assert not first.loaded
    second = train_or_load("shapes", "tiny", cfg, out_dir=tmp_path, data=data, device="cpu", progress=False)
    assert second.loaded and second.history.loss == first.history.loss
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k])
    # Asking for more steps than the folder holds continues the run from its checkpoint.
    longer = train_or_load("shapes", "tiny", TrainConfig(steps=3, batch_size=32, warmup_steps=0), out_dir=tmp_path,
                           data=data, device="cpu", progress=False)
    assert not longer.loaded and longer.history.step[-1] == 3 and longer.history.loss[:2] == first.history.loss
    # Another recipe in the same folder is not that run: refused, unless asked to train anew.
    other = TrainConfig(steps=3, batch_size=32, warmup_steps=0, lr=5e-4)
    with pytest.raises(ValueError, match=r"holds a run trained with another recipe \(lr 0.002 there, 0.0005 asked\)"):
        train_or_load("shapes", "tiny", other, out_dir=tmp_path, data=data, device="cpu", progress=False)
    anew = train_or_load("shapes", "tiny", other, out_dir=tmp_path, data=data, device="cpu", progress=False,
                         retrain=True)
    assert not anew.loaded and anew.history.loss[0] == first.history.loss[0]  # the same start, another lr after
    assert anew.history.loss[1] != first.history.loss[1]


def test_two_callers_of_one_run_train_it_once(tmp_path, data):
    # The second caller arrives while the first is training (its callback holds each step open a
    # moment): it waits on the folder's lock, then loads the finished run instead of training it too.
    cfg = TrainConfig(steps=3, batch_size=32, warmup_steps=0, log_every=1)
    started, results = threading.Event(), {}

    def slow(loop):
        started.set()
        time.sleep(0.3)

    def ask(who, callback=None):
        results[who] = train_or_load("shapes", "tiny", cfg, out_dir=tmp_path / "run", data=data, device="cpu",
                                     progress=False, callback=callback)

    first = threading.Thread(target=ask, args=("first", slow))
    first.start()
    assert started.wait(60)
    second = threading.Thread(target=ask, args=("second",))
    second.start()
    first.join(120)
    second.join(120)
    assert not results["first"].loaded and results["second"].loaded
    assert results["second"].history.loss == results["first"].history.loss
    for k, v in results["first"].model.state_dict().items():
        assert torch.equal(v, results["second"].model.state_dict()[k])


def test_run_lock_is_reentrant_in_a_thread_and_leaves_the_folder_alone(tmp_path):
    done = threading.Event()

    def nested():
        with run_lock(tmp_path / "run"), run_lock(tmp_path / "run"):  # a second open would wait forever
            done.set()

    worker = threading.Thread(target=nested, daemon=True)
    worker.start()
    assert done.wait(10), "run_lock waited on the lock its own thread holds"
    worker.join(10)
    assert [p.name for p in tmp_path.iterdir()] == [".run.lock"]  # beside the run folder, not in it
    with run_lock(tmp_path / "run"):  # let go: free to take again
        pass


def test_run_lock_locks_nothing_in_a_data_parallel_run(tmp_path, monkeypatch):
    # Under torchrun every rank opens the same run folder and the ranks wait on each other in their
    # collectives: a rank left waiting on the lock would hang the run (the torchrun test did).
    monkeypatch.setenv("WORLD_SIZE", "2")
    held, second = threading.Event(), threading.Event()

    def rank(event, wait_for=None):
        with run_lock(tmp_path / "run"):
            event.set()
            if wait_for is not None:
                wait_for.wait(30)  # holds the lock longer than the test waits for the second rank

    first = threading.Thread(target=rank, args=(held, second), daemon=True)
    first.start()
    assert held.wait(10)
    other = threading.Thread(target=rank, args=(second,), daemon=True)
    other.start()
    assert second.wait(10), "the second rank waited on the lock the first holds"
    first.join(10)
    other.join(10)


def test_a_model_config_trains_under_its_own_name(tmp_path, data, monkeypatch):
    monkeypatch.setenv("CLIPEDU_RUNS", str(tmp_path))
    narrow = preset("tiny", embed_dim=16, vision_width=32, vision_layers=1, vision_heads=2, text_width=32,
                    text_layers=1, text_heads=2)
    cfg = TrainConfig(steps=2, batch_size=32, warmup_steps=0)
    assert not is_trained("shapes", "narrow", fast=True)
    run = train_or_load("shapes", narrow, cfg, name="narrow", data=data, fast=True, device="cpu", progress=False)
    assert run.out_dir == run_dir("shapes", "narrow", fast=True) == tmp_path / "shapes-narrow-fast"
    assert run.model.cfg.vision.width == 32 and run.model.cfg.text.vocab_size == run.tokenizer.vocab_size
    assert is_trained("shapes", "narrow", fast=True)
    again = train_or_load("shapes", narrow, cfg, name="narrow", data=data, fast=True, device="cpu", progress=False)
    assert again.loaded
    # The same folder asked for another model: refused, nothing overwritten.
    with pytest.raises(ValueError, match="another model config"):
        train_or_load("shapes", narrow.with_overrides(embed_dim=8), cfg, name="narrow", data=data, fast=True,
                      device="cpu", progress=False)


def test_same_seed_same_weights_whatever_ran_before(tmp_path, data):
    cfg = TrainConfig(steps=1, batch_size=32, warmup_steps=0, seed=3)
    a = train_or_load("shapes", "tiny", cfg, out_dir=tmp_path / "a", data=data, device="cpu", progress=False)
    torch.randn(100)  # other work in between moves the global random state
    b = train_or_load("shapes", "tiny", cfg, out_dir=tmp_path / "b", data=data, device="cpu", progress=False)
    assert a.history.loss == b.history.loss


def test_bad_requests_are_explained(data):
    with pytest.raises(ValueError, match="needs a train_config"):
        train_or_load("shapes", preset("tiny"), data=data)
    with pytest.raises(ValueError, match="name the run"):
        train_or_load("shapes", preset("tiny"), TrainConfig(steps=2, warmup_steps=0), data=data)
    with pytest.raises(ValueError, match="no training recipe for preset 'ViT-B/32'"):
        default_train_config("ViT-B/32")


def test_run_folder_names():
    assert run_dir_name("shapes", "tiny", True) == "shapes-tiny-fast"
    assert run_dir_name("folder:/data/x", "ViT-B/32", False) == "folder--data-x-ViT-B-32"


def test_keyed_run_folders_change_with_what_the_run_depends_on(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPEDU_RUNS", str(tmp_path))
    weights, cfg = torch.ones(3), TrainConfig(steps=5, warmup_steps=0)
    folder = keyed_run_dir("shapes2", "stage1", weights, cfg, mode="fast")
    assert folder.parent == tmp_path and re.fullmatch("shapes2-stage1-fast-[0-9a-f]{12}", folder.name)
    same = TrainConfig(steps=5, warmup_steps=0)  # an equal config, another object
    assert keyed_run_dir("shapes2", "stage1", weights.clone(), same, mode="fast") == folder
    assert keyed_run_dir("shapes2", "stage1", weights, TrainConfig(steps=6, warmup_steps=0), mode="fast") != folder
    assert keyed_run_dir("shapes2", "stage1", weights * 2, cfg, mode="fast") != folder
    assert keyed_run_dir("shapes2", "stage1", weights, cfg, mode="full") != folder
    with pytest.raises(ValueError, match="give what the run depends on"):
        keyed_run_dir("shapes2", "stage1", mode="fast")


def test_fast_mode_draws_fewer_pictures_only_where_it_says_so():
    assert len(training_data("shapes", mode="fast")) == len(training_data("shapes", mode="full")) == 20_000
    assert len(training_data("shapes2", mode="fast")) == 4000


def test_a_run_can_start_from_another_runs_weights(tmp_path, data):
    narrow = preset("tiny", embed_dim=16, vision_width=32, vision_layers=1, vision_heads=2, text_width=32,
                    text_layers=1, text_heads=2)
    cfg = TrainConfig(steps=2, batch_size=32, warmup_steps=0, lr=1e-3)
    base = train_or_load("shapes", narrow, cfg, out_dir=tmp_path / "base", data=data, device="cpu", progress=False)
    tiny_step = TrainConfig(steps=1, batch_size=32, warmup_steps=0, lr=1e-9)  # a step that hardly moves anything
    tuned = train_or_load("shapes", narrow, tiny_step, out_dir=tmp_path / "tuned", data=data, device="cpu",
                          progress=False, init=base)
    fresh = train_or_load("shapes", narrow, tiny_step, out_dir=tmp_path / "fresh", data=data, device="cpu",
                          progress=False)
    for k, v in base.model.state_dict().items():
        torch.testing.assert_close(tuned.model.state_dict()[k], v, rtol=0, atol=1e-6)  # base's weights, not fresh
    assert any((v - fresh.model.state_dict()[k]).abs().max() > 1e-3 for k, v in base.model.state_dict().items())
    assert tuned.tokenizer.vocab == base.tokenizer.vocab
    with pytest.raises(ValueError, match="init is a run of another model config"):
        train_or_load("shapes", narrow.with_overrides(embed_dim=8), cfg, out_dir=tmp_path / "other", data=data,
                      device="cpu", progress=False, init=base)


def test_a_recipe_cut_to_a_budget_warms_up_a_fifth_of_it_at_most_90_steps():
    cpu = default_train_config("tiny", mode="cpu")  # 1,200 steps, 50 of warm-up
    assert (with_steps(cpu, 450).steps, with_steps(cpu, 450).warmup_steps) == (450, 90)
    assert with_steps(cpu, 5000).warmup_steps == 90 and with_steps(cpu, 100).warmup_steps == 20
    assert with_steps(cpu, 2).warmup_steps == 0
    small = default_train_config("small", mode="full")  # 200 steps of warm-up: kept when the run is long
    assert with_steps(small, 8000).warmup_steps == 200


def test_pair_recipes_follow_the_mode_and_pair_models_fine_tunes_from_the_plain_run(monkeypatch):
    recipes = {mode: runs.pair_recipes(mode) for mode in ("fast", "cpu", "full")}
    assert recipes["fast"][0] == recipes["cpu"][0] == "narrow" and recipes["full"][0] == "tiny"
    assert recipes["fast"][1].vision.width == 64 and recipes["full"][1] == preset("tiny")
    assert [r[2].steps for r in recipes.values()] == [600, 600, 1000]
    assert [r[3].steps for r in recipes.values()] == [250, 400, 400]
    assert all(r[3].hard_negatives and not r[2].hard_negatives for r in recipes.values())
    with pytest.raises(ValueError, match="mode must be one of"):
        runs.pair_recipes("gpu")

    calls = []

    def fake_train_or_load(dataset, model, cfg, **kwargs):
        calls.append((dataset, kwargs["name"], cfg.steps, kwargs.get("init")))
        return f"run {len(calls)}"

    monkeypatch.setattr(runs, "train_or_load", fake_train_or_load)
    plain, negclip = runs.pair_models("fast", data="the scenes")
    assert (plain, negclip) == ("run 1", "run 2")
    assert calls == [("shapes2", "narrow", 600, None), ("shapes2", "narrow-negclip", 250, "run 1")]


def test_list_runs_says_how_far_each_run_trained_and_remove_run_deletes_one(tmp_path, data):
    stopped = TrainConfig(steps=3, batch_size=32, warmup_steps=0, checkpoint_every=1)

    def stop_at_2(loop):
        if loop.step == 2:
            raise KeyboardInterrupt

    train_or_load("shapes", "tiny", TrainConfig(steps=2, batch_size=32, warmup_steps=0), out_dir=tmp_path / "done",
                  data=data, device="cpu", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_or_load("shapes", "tiny", replace(stopped, log_every=1), out_dir=tmp_path / "cut", data=data,
                      device="cpu", progress=False, callback=stop_at_2)
    (tmp_path / "kept" / "a").mkdir(parents=True)
    (tmp_path / "kept" / "b").mkdir()
    for name in ("a", "b"):
        (tmp_path / "kept" / name / "checkpoint.pt").write_bytes(b"x" * 10)
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "checkpoint.pt").write_bytes(b"half a checkpoint")
    found = {r.name: r for r in list_runs(tmp_path)}
    assert sorted(found) == ["broken", "cut", "done", "empty", "kept"]  # the lock files beside them are not runs
    assert found["broken"].state == "checkpoint unreadable" and found["broken"].step is None
    assert "is not a clipedu checkpoint" in found["broken"].unreadable and found["done"].unreadable is None
    assert found["done"].state == "finished, 2 steps" and found["done"].checkpoints == 1
    assert found["cut"].state == "stopped at 1 of 3 steps"  # stopped in step 2, before its checkpoint
    assert found["kept"].state == "2 kept runs" and found["kept"].size == 20
    assert found["empty"].state == "no checkpoint" and found["empty"].size == 0
    assert found["done"].size == (tmp_path / "done" / "checkpoint.pt").stat().st_size
    assert remove_run("cut", tmp_path) == tmp_path / "cut" and not (tmp_path / "cut").exists()
    assert run_names(tmp_path) == ["broken", "done", "empty", "kept"]  # the names alone, no checkpoint read
    with pytest.raises(ValueError, match=r"no run 'cut' in .*; it holds broken, done, empty, kept"):
        remove_run("cut", tmp_path)
    with pytest.raises(ValueError, match="no run '..'"):
        remove_run("..", tmp_path)
    with pytest.raises(ValueError, match="no runs folder at"):
        list_runs(tmp_path / "nowhere")
