"""Every mistake on the command line is one line on stderr, exit status 2, and nothing written.

The commands run in this process (``clipedu.cli.main``), so each case takes milliseconds; one
test runs the real ``python -m clipedu`` and one runs two processes as torchrun would.
"""

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import clipedu
from clipedu import CLIP, preset
from clipedu.cli import main
from clipedu.data import ShapesWorld, build_tokenizer
from clipedu.loop import TrainConfig
from clipedu.train import Trainer


def _small_data():
    return ShapesWorld(seed=0).generate(64, "train")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real run folder (one training step of a very small model), made without the CLI."""
    folder = tmp_path_factory.mktemp("trained") / "run"
    data = _small_data()
    tok = build_tokenizer(data)
    cfg = preset("tiny", vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
                 text_heads=2, embed_dim=16).for_tokenizer(tok)
    Trainer(CLIP(cfg), tok, data, TrainConfig(steps=1, batch_size=16, warmup_steps=0), device="cpu",
            out_dir=folder).fit(progress=False)
    return folder


@pytest.fixture
def place(tmp_path, monkeypatch, trained_run):
    """A working folder with runs/ and data/ (so defaults write nowhere else), a file that is not
    a checkpoint, and the trained run."""
    for name in ("runs", "data"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("CLIPEDU_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("CLIPEDU_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("CLIPEDU_DEVICE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    return {"tmp": str(tmp_path), "out": str(tmp_path / "out"), "file": str(tmp_path / "notes.txt"),
            "run": str(trained_run)}


def _tree(*roots) -> dict:
    """Every file and folder under ``roots`` with its size and modification time."""
    found = {}
    for root in map(Path, roots):
        for p in [root, *root.rglob("*")]:
            if p.exists():
                found[str(p)] = (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
    return found


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's errors, --help and --version
        code = exc.code
    return code, capsys.readouterr().err


def _assert_one_line(err: str, words) -> None:
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("clipedu"), err
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
_NO_MPS = pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")

# (arguments, words the one line must hold). {out}: a run folder that does not exist yet; {run}: a
# trained run; {file}: a file that is not a checkpoint; {tmp}: the working folder.
CASES = [
    # train: numbers
    ("train --out {out} --steps -5", ["argument --steps", "at least 1", "'-5'"]),
    ("train --out {out} --steps 0", ["argument --steps", "at least 1"]),
    ("train --out {out} --steps 2.5", ["argument --steps", "whole number"]),
    ("train --out {out} --steps many", ["argument --steps", "'many'"]),
    ("train --out {out} --minutes -3", ["argument --minutes", "positive number", "'-3'"]),
    ("train --out {out} --minutes 0", ["argument --minutes", "positive number"]),
    ("train --out {out} --minutes inf", ["argument --minutes", "positive number"]),
    ("train --out {out} --minutes 2 --steps 10", ["--steps", "not allowed with", "--minutes"]),
    ("train --out {out} --batch-size 0", ["argument --batch-size", "at least 1"]),
    ("train --out {out} --batch-size -64", ["argument --batch-size", "at least 1"]),
    ("train --out {out} --accum-steps 0", ["argument --accum-steps", "at least 1"]),
    ("train --out {out} --batch-size 100 --accum-steps 3", ["--batch-size 100", "--accum-steps 3", "multiple of 3"]),
    ("train --out {out} --accum-steps 3", ["--batch-size 128 (the recipe's)", "--accum-steps 3"]),
    ("train --out {out} --lr 0", ["argument --lr", "positive number"]),
    ("train --out {out} --lr=-1e-3", ["argument --lr", "positive number"]),
    ("train --out {out} --lr -0.001", ["argument --lr", "positive number"]),
    ("train --out {out} --lr nan", ["argument --lr", "positive number"]),
    ("train --out {out} --seed -1", ["argument --seed", "at least 0"]),
    # train: names
    ("train --out {out} --preset huge", ["argument --preset", "invalid choice: 'huge'", "tiny", "small"]),
    ("train --out {out} --preset ViT-B/32", ["argument --preset", "'ViT-B/32'", "tiny", "small"]),
    ("train --out {out} --dataset imagenet", ["argument --dataset", "'imagenet'", "shapes2", "digits", "folder:PATH"]),
    ("train --out {out} --dataset folder:", ["argument --dataset", "needs a path"]),
    ("train --out {out} --dataset folder:{tmp}/nowhere", ["argument --dataset", "no folder or captions file"]),
    ("train --out {out} --device tpu", ["argument --device", "'tpu'", "auto, cpu, cuda, cuda:N or mps"]),
    ("train --out {out} --device cuda:x", ["argument --device", "cuda:N"]),
    pytest.param("train --out {out} --device cuda", ["--device", "CUDA is not available", "auto, cpu"],
                 marks=_NO_CUDA),
    pytest.param("train --out {out} --device cuda:1", ["--device", "'cuda:1'", "auto, cpu"], marks=_NO_CUDA),
    pytest.param("train --out {out} --device mps", ["--device", "MPS is not available", "auto, cpu"], marks=_NO_MPS),
    # train: the run folder
    ("train --out {out} --resume", ["--resume", "nothing to resume"]),
    ("train --out {run} --resume --minutes 1", ["--minutes", "resumed run keeps its number of steps"]),
    ("train --out {run}", ["already holds a run", "--resume"]),
    ("train --out {run} --resume --preset small", ["--preset small", "another model config"]),
    ("train --out {file}", ["--out", "is a file, not a folder"]),
    ("train --out {file}/sub", ["--out", "notes.txt is a file"]),
    ("train --resume", ["--resume", "nothing to resume", "shapes-tiny"]),
    ("train --out {out} --bogus", ["unrecognized arguments: --bogus"]),
    ("train extra", ["unrecognized arguments: extra"]),
    ("", ["required", "command"]),
    ("fit", ["invalid choice: 'fit'", "train", "eval", "probe"]),
    # eval and probe
    ("eval {file}", ["notes.txt is not a clipedu checkpoint", "RUN is a run folder"]),
    ("eval {tmp}/nowhere", ["no checkpoint at", "nowhere"]),
    ("eval {run} --n 0", ["argument --n", "at least 1", "'0'"]),
    ("eval {run} --n -3", ["argument --n", "at least 1"]),
    ("eval {run} --n ten", ["argument --n", "'ten'"]),
    ("eval {run} --dataset imagenet", ["argument --dataset", "'imagenet'", "cifar100"]),
    ("eval {run} --dataset folder:{tmp}/nowhere", ["argument --dataset", "no folder"]),
    ("eval", ["required", "RUN"]),
    ("probe {run} --n -1", ["argument --n", "at least 2", "'-1'"]),
    ("probe {run} --n 1", ["argument --n", "at least 2"]),
    ("probe {file}", ["is not a clipedu checkpoint"]),
    ("probe {tmp}", ["no checkpoint at"]),
]


@pytest.mark.parametrize("argv, words", CASES)
def test_a_mistake_is_one_line_exit_2_and_writes_nothing(argv, words, place, capsys):
    argv = argv.format(**place).split()
    words = [w.format(**place) for w in words]
    before = _tree(place["tmp"], place["run"])
    code, err = _run(argv, capsys)
    assert code == 2, err
    _assert_one_line(err, words)
    assert _tree(place["tmp"], place["run"]) == before  # nothing made, nothing changed
    assert not Path(place["out"]).exists()


# --- mistakes found once the data is read: still before anything is written ------------------------
@pytest.mark.parametrize("argv, words", [
    ("train --out {out} --batch-size 128", ["--batch-size 128 is larger than the training data", "(64 images)",
                                            "at most 64"]),
    ("train --out {out} --hard-negatives --batch-size 16",
     ["--hard-negatives needs data with swapped captions", "shapes2"]),
    ("train --out {out} --minutes 1 --batch-size 128", ["--batch-size 128 is larger"]),
])
def test_a_mistake_about_the_data_is_found_before_training(argv, words, place, capsys, monkeypatch):
    monkeypatch.setattr("clipedu.cli.training_data", lambda dataset, fast: _small_data())
    argv = argv.format(**place).split()
    before = _tree(place["tmp"])
    code, err = _run(argv + ["--device", "cpu", "--quiet"], capsys)
    assert code == 2, err
    _assert_one_line(err, words)
    assert _tree(place["tmp"]) == before and not Path(place["out"]).exists()


def test_an_unreadable_captions_file_is_one_line(place, capsys):
    folder = Path(place["tmp"]) / "pictures"
    folder.mkdir()
    (folder / "captions.csv").write_text("picture,words\na.png,a red circle\n")
    before = _tree(place["tmp"])
    code, err = _run(["train", "--out", place["out"], "--dataset", f"folder:{folder}", "--device", "cpu"], capsys)
    assert code == 2, err
    _assert_one_line(err, ["captions.csv"])
    assert _tree(place["tmp"]) == before


def test_open_clip_csv_flags_read_the_folder_own_columns(place, capsys):
    from PIL import Image

    folder = Path(place["tmp"]) / "pictures"
    folder.mkdir()
    Image.new("RGB", (40, 40), "red").save(folder / "a.png")
    (folder / "captions.csv").write_text("picture,words\na.png,a red square\n")
    train = ["train", "--out", place["out"], "--dataset", f"folder:{folder}", "--device", "cpu"]
    before = _tree(place["tmp"])
    code, err = _run(train + ["--csv-img-key", "nope", "--csv-caption-key", "words"], capsys)
    assert code == 2, err
    _assert_one_line(err, ["no column 'nope'", "picture", "words"])
    # With the right columns the folder is read: what stops it now is its size (one picture).
    code, err = _run(train + ["--csv-img-key", "picture", "--csv-caption-key", "words"], capsys)
    assert code == 2, err
    _assert_one_line(err, ["--batch-size", "larger than the training data"])
    code, err = _run(["train", "--out", place["out"], "--csv-img-key", "picture"], capsys)
    assert code == 2, err
    _assert_one_line(err, ["--csv-img-key", "expected folder:PATH"])
    assert _tree(place["tmp"]) == before


def test_eval_on_data_it_cannot_read_is_one_line_and_writes_nothing(place, capsys):
    folder = Path(place["tmp"]) / "pictures"
    folder.mkdir()
    (folder / "captions.csv").write_text("picture,words\na.png,a red circle\n")
    before = _tree(place["tmp"], place["run"])
    code, err = _run(["eval", place["run"], "--dataset", f"folder:{folder}"], capsys)
    assert code == 2, err
    _assert_one_line(err, [f"--dataset folder:{folder}: ", "captions.csv"])
    assert _tree(place["tmp"], place["run"]) == before  # no metrics.json


def test_a_checkpoint_of_another_kind_is_one_line(place, capsys):
    other = Path(place["tmp"]) / "weights.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, other)
    code, err = _run(["eval", str(other)], capsys)
    assert code == 2
    _assert_one_line(err, ["weights.pt is not a clipedu checkpoint", "clipedu-checkpoint-1"])


def test_version_and_help(capsys):
    code = None
    try:
        main(["--version"])
    except SystemExit as exc:
        code = exc.code
    assert code == 0 and capsys.readouterr().out.strip() == f"clipedu {clipedu.__version__}"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for words in ("auto, cpu, cuda, cuda:N or mps", "{tiny,small}", "folder:PATH"):
        assert words in out


def test_the_installed_command_says_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "CLIPEDU_RUNS": str(tmp_path / "runs"), "PYTHONPATH": str(Path(clipedu.__file__).parents[1])}
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "clipedu", "train", "--steps", "-5", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    _assert_one_line(done.stderr, ["argument --steps", "at least 1"])
    assert not out.exists() and not (tmp_path / "runs").exists()


# --- under torchrun: a mistake one process finds stops every process with the same line ------------
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank, port, folder, failing_rank):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), CLIPEDU_RUNS=folder)
    torch.set_num_threads(1)
    import clipedu.cli

    def training_data(dataset, fast):
        if rank == failing_rank:
            raise ValueError(f"captions.csv is unreadable on rank {rank}")
        return _small_data()

    clipedu.cli.training_data = training_data
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = clipedu.cli.main(["train", "--out", f"{folder}/out", "--device", "cpu", "--quiet", "--fast",
                                 "--batch-size", "16", "--steps", "2"])
    Path(folder, f"rank{rank}.txt").write_text(f"{code}\n{err.getvalue()}")


@pytest.mark.parametrize("failing_rank", [0, 1])
def test_under_torchrun_every_process_stops_with_the_same_line(tmp_path, failing_rank):
    context = mp.spawn(_rank_worker, args=(_free_port(), str(tmp_path), failing_rank), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        if time.monotonic() > deadline:  # a process waiting for the other: the bug this test is for
            for process in context.processes:
                process.kill()
            pytest.fail("the processes did not stop within 120 s")
    results = [(tmp_path / f"rank{r}.txt").read_text().split("\n", 1) for r in range(WORLD)]
    for code, err in results:
        assert code == "2"
        _assert_one_line(err, [f"captions.csv is unreadable on rank {failing_rank}"])
    assert results[0][1] == results[1][1]
    assert not (tmp_path / "out").exists()
