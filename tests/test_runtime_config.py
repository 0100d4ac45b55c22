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
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("CLIPEDU_FAST", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert runtime.is_fast() is expected


def test_bad_fast_flag_is_an_error(monkeypatch):
    monkeypatch.setenv("CLIPEDU_FAST", "maybe")
    with pytest.raises(ValueError, match="CLIPEDU_FAST must be one of"):
        runtime.is_fast()


def test_setup_seeds_and_reports(monkeypatch, tmp_path, capsys):
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
    assert preset("tiny").vision.width == 128  # presets are not mutated


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
    fast_cpu = Runtime(torch.device("cpu"), True, 0, False, tmp_path, tmp_path)
    with fast_cpu.small_model_threads():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    full_cpu = Runtime(torch.device("cpu"), False, 0, False, tmp_path, tmp_path)
    with full_cpu.small_model_threads():
        assert torch.get_num_threads() == before
    once = fast_cpu.small_model_threads()  # called without `with`: in effect until restore()
    assert torch.get_num_threads() == 1
    once.restore()
    assert torch.get_num_threads() == before
