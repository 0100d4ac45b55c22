"""benchmarks/bench_itm_word_order.py: it runs end to end on a tiny pair model in the runs folder
(where notebook 07 leaves its pair models), and says what to do when there is none."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from clipedu import preset, runs
from clipedu.data import get_dataset
from clipedu.loop import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    path = ROOT / "benchmarks" / "bench_itm_word_order.py"
    sys.path.insert(0, str(path.parent))  # the script imports benchmarks/machine.py beside it
    spec = importlib.util.spec_from_file_location("bench_itm_word_order", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(path.parent))


def test_without_a_pair_model_it_says_where_one_comes_from(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPEDU_RUNS", str(tmp_path))
    with pytest.raises(SystemExit, match=r"no pair model at .*shapes2-narrow-negclip-fast.*run notebook 07"):
        bench.main(["--seeds", "0"])
    with pytest.raises(SystemExit, match=r"no pair model at .*missing\.pt"):
        bench.main(["--checkpoint", str(tmp_path / "missing.pt")])


def test_runs_on_a_pair_model_like_notebook_07s(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIPEDU_RUNS", str(tmp_path))
    torch.manual_seed(0)
    narrow = preset("tiny", embed_dim=64, vision_width=64, vision_layers=2, vision_heads=2, text_width=64,
                    text_layers=2, text_heads=2)  # notebook 07's fast-mode pair model, trained for 2 steps
    runs.train_or_load("shapes2", narrow, TrainConfig(steps=2, batch_size=8, warmup_steps=1), name="narrow",
                       data=get_dataset("shapes2", "train", n=16), mode="fast", device="cpu", progress=False)
    bench.main(["--tower", "plain", "--seeds", "0", "--steps", "2", "--train-images", "40", "--test-images", "8",
                "--k", "4", "--threads", "1"])
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("| 0 |")]
    assert len(row) == 1
    values = [float(v) for v in row[0].strip("| ").split(" | ")[3:]]
    assert len(values) == 8 and all(0.0 <= v <= 1.0 for v in values)  # shares and recalls
    bench.main(["--tower", "plain", "--seeds", "0", "--steps", "2", "--train-images", "64", "--test-images", "8",
                "--k", "4", "--threads", "1", "--stage2-steps", "2", "--lm-steps", "2"])  # the LM's batch: 64
    out = capsys.readouterr().out
    assert "stage-2 test loss: after stage 1 | without |" in out
    row = [line for line in out.splitlines() if line.startswith("| 0 |")]
    values = [float(v) for v in row[0].strip("| ").split(" | ")[3:]]
    assert len(values) == 12 and all(v > 0.5 for v in values[8:10])  # losses of an untrained captioner, nats
    assert all(0.0 <= v <= 1.0 for v in values[10:])  # the stage-2 swap shares
