import math

import pytest
import torch

from clipedu import CLIPConfig, preset, runtime


@pytest.mark.parametrize(
    "env,expected",
    [({}, False), ({"CI": "true"}, True), ({"CLIPEDU_FAST": "1"}, True),
     ({"CI": "1", "CLIPEDU_FAST": "0"}, False), ({"CLIPEDU_FAST": "yes"}, True)],
)
def test_fast_mode_from_environment(monkeypatch, env, expected):
    for name in ("CI", "CLIPEDU_FAST", "CLIPEDU_MODE"):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert runtime.is_fast() is expected


@pytest.mark.parametrize(
    "env,device,expected",
    [
        ({}, "cpu", "cpu"),  # a laptop
        ({}, "cuda", "full"),  # a GPU
        ({}, "mps", "cpu"),  # Apple's GPU: a laptop's budget
        ({"CI": "1"}, "cuda", "fast"),  # CI sizes every notebook to a minute, whatever the device
        ({"CI": "1", "CLIPEDU_FAST": "0"}, "cpu", "cpu"),
        ({"CLIPEDU_FAST": "1"}, "cuda", "fast"),
        ({"CLIPEDU_MODE": "full"}, "cpu", "full"),  # the user's word wins
        ({"CLIPEDU_MODE": " CPU ", "CI": "1"}, "cuda", "cpu"),
        ({"CLIPEDU_MODE": "fast", "CLIPEDU_FAST": "0"}, "cpu", "fast"),
    ],
)
def test_mode_follows_the_device_unless_told(monkeypatch, env, device, expected):
    for name in ("CI", "CLIPEDU_FAST", "CLIPEDU_MODE"):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(runtime, "pick_device", lambda prefer=None: torch.device(device))
    assert runtime.mode() == expected
    assert runtime.is_fast() is (expected == "fast")


def test_unknown_mode_is_an_error(monkeypatch):
    monkeypatch.setenv("CLIPEDU_MODE", "turbo")
    with pytest.raises(ValueError, match=r"CLIPEDU_MODE must be one of fast, cpu, full; got 'turbo'"):
        runtime.mode()
    with pytest.raises(ValueError, match=r"mode must be one of fast, cpu, full; got 'gpu'"):
        runtime.resolve_mode("gpu")


def test_resolve_mode_keeps_the_older_fast_flag(monkeypatch):
    for name in ("CI", "CLIPEDU_FAST", "CLIPEDU_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runtime, "pick_device", lambda prefer=None: torch.device("cpu"))
    assert runtime.resolve_mode("full", fast=True) == "full"  # an explicit mode wins
    assert runtime.resolve_mode(fast=True) == "fast"
    assert runtime.resolve_mode(fast=False) == "cpu"
    monkeypatch.setenv("CI", "1")
    assert runtime.resolve_mode() == "fast" and runtime.resolve_mode(fast=False) == "cpu"


def test_choose_picks_by_mode(tmp_path):
    rt = lambda m: runtime.Runtime(torch.device("cpu"), m, 0, False, tmp_path, tmp_path)  # noqa: E731
    assert [rt(m).choose(fast=1, cpu=2, full=3) for m in runtime.MODES] == [1, 2, 3]
    assert rt("cpu").choose(fast=1, full=3) == 1  # no cpu value: the fast one
    assert rt("cpu").fast is False and rt("fast").fast is True
    with pytest.raises(ValueError, match="mode must be one of fast, cpu, full; got 'quick'"):
        rt("quick")


def test_bad_fast_flag_is_an_error(monkeypatch):
    monkeypatch.setenv("CLIPEDU_FAST", "maybe")
    with pytest.raises(ValueError, match="CLIPEDU_FAST must be one of"):
        runtime.is_fast()


def test_setup_seeds_and_reports(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("CLIPEDU_SEED", raising=False)
    monkeypatch.setenv("CLIPEDU_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("CLIPEDU_RUNS", str(tmp_path / "r"))
    rt = runtime.setup(seed=3)
    a = torch.rand(3)
    runtime.setup(seed=3, quiet=True)
    assert torch.equal(a, torch.rand(3))
    out = capsys.readouterr().out
    assert "device: cpu" in out and "seed: 3" in out
    assert rt.data_dir == tmp_path / "d" and rt.data_dir.is_dir() and rt.runs_dir.is_dir()
    assert rt.choose(fast=1, full=2) == (1 if rt.fast else 2)


def test_clipedu_seed_replaces_the_seed_setup_is_given(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CLIPEDU_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("CLIPEDU_RUNS", str(tmp_path / "r"))
    monkeypatch.setenv("CLIPEDU_SEED", " 7 ")
    rt = runtime.setup()  # a notebook's call: seed 0 unless told
    a = torch.rand(3)
    torch.manual_seed(7)
    assert rt.seed == 7 and torch.equal(a, torch.rand(3)) and "seed: 7" in capsys.readouterr().out
    monkeypatch.setenv("CLIPEDU_SEED", "")
    assert runtime.seed_override() is None and runtime.setup(seed=2, quiet=True).seed == 2
    monkeypatch.setenv("CLIPEDU_SEED", "one")
    with pytest.raises(ValueError, match="CLIPEDU_SEED must be a whole number, such as 1; got 'one'"):
        runtime.setup(quiet=True)


def test_pick_device_refuses_missing_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        runtime.pick_device("cuda")


def test_cache_dir_is_inside_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPEDU_DATA", str(tmp_path))
    assert runtime.cache_dir() == tmp_path / "cache"


def test_overrides_route_to_the_right_tower():
    cfg = preset("tiny", vision_width=64, text_layers=5, patch_size=4, vocab_size=99, embed_dim=32)
    assert cfg.vision.width == 64 and cfg.text.layers == 5 and cfg.vision.patch_size == 4
    assert cfg.text.vocab_size == 99 and cfg.embed_dim == 32
    assert preset("tiny").vision.width == 96  # presets are not mutated


def test_config_from_dict_rejects_junk():
    with pytest.raises(ValueError, match="expected a dict with 'vision' and 'text'"):
        CLIPConfig.from_dict({"embed_dim": 3})


def test_init_scale_above_clamp_is_an_error():
    with pytest.raises(ValueError, match="above max_logit_scale"):
        preset("tiny", init_logit_scale=math.log(200))


def test_non_positive_sizes_are_errors():
    with pytest.raises(ValueError, match="VisionConfig.layers must be a positive int, got 0"):
        preset("tiny", vision_layers=0)


def test_small_model_threads_is_one_thread_only_in_fast_mode_on_a_cpu(tmp_path):
    import torch

    from clipedu.runtime import Runtime

    before = torch.get_num_threads()
    fast_cpu = Runtime(torch.device("cpu"), "fast", 0, False, tmp_path, tmp_path)
    with fast_cpu.small_model_threads():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    full_cpu = Runtime(torch.device("cpu"), "cpu", 0, False, tmp_path, tmp_path)
    with full_cpu.small_model_threads():
        assert torch.get_num_threads() == before
    once = fast_cpu.small_model_threads()  # called without `with`: in effect until restore()
    assert torch.get_num_threads() == 1
    once.restore()
    assert torch.get_num_threads() == before
