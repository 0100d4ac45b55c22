import json

import pytest

from clipedu.checkpoint import load_checkpoint, save_checkpoint
from clipedu.cli import main


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for option in ("--dataset", "--preset", "--out", "--steps", "--minutes", "--device", "--resume"):
        assert option in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--resume"], "nothing to resume"),
        (["eval", "nowhere"], "no checkpoint at nowhere"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPEDU_RUNS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_train_eval_probe_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "4", "--fast", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "zero_shot_shape" in printed and "zero_shot_heldout_pairs" in printed
    assert "zero_shot_shape_embedding_mean" in printed and "zero_shot_heldout_pairs_embedding_mean" in printed
    assert (out / "checkpoint.pt").exists() and (out / "training.png").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 4 and 0 <= metrics["eval"]["zero_shot_colour"] <= 1

    # The folder now holds a run: a second train there must refuse and change nothing.
    before = (out / "checkpoint.pt").read_bytes()
    assert main(["train", "--out", str(out), "--steps", "4", "--fast", "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == before

    # Resuming with another model is refused too.
    assert main(["train", "--out", str(out), "--preset", "small", "--resume", "--fast", "--quiet"]) == 2
    assert "another model config" in capsys.readouterr().err
    # And with another recipe: the optimiser's saved state would keep the old learning rate.
    assert main(["train", "--out", str(out), "--resume", "--lr", "0.5", "--seed", "7", "--fast", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--resume: --lr 0.5 (the run has 0.002), --seed 7 (the run has 0)" in err and "keeps its recipe" in err
    assert (out / "checkpoint.pt").read_bytes() == before

    assert main(["eval", str(out), "--n", "100"]) == 0
    assert "text_to_image_R@1" in capsys.readouterr().out
    assert main(["probe", str(out), "--n", "300"]) == 0
    probe = json.loads((out / "metrics.json").read_text())["probe"]
    assert {"shape / clip", "shape / raw pixels", "shape / random encoder"} <= set(probe)


def test_runs_lists_the_runs_folder_and_removes_a_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLIPEDU_RUNS", str(tmp_path))
    assert main(["train", "--dataset", "shapes", "--steps", "2", "--batch-size", "16", "--fast", "--quiet",
                 "--out", str(tmp_path / "first")]) == 0
    (tmp_path / "kept" / "a").mkdir(parents=True)
    (tmp_path / "kept" / "a" / "checkpoint.pt").write_bytes(b"0123456789")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "checkpoint.pt").write_bytes(b"half a checkpoint")
    capsys.readouterr()
    assert main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"runs folder {tmp_path}: 3 run folders,") and lines[0].endswith(" MB")
    assert lines[1].split() == ["name", "size", "written", "state"]
    assert lines[2].split()[0] == "broken" and lines[2].endswith("checkpoint unreadable")
    assert lines[3].split()[0] == "first" and lines[3].endswith("finished, 2 steps")
    assert lines[4].split()[0] == "kept" and lines[4].endswith("1 kept run")
    assert lines[5].startswith("broken: ") and "is not a clipedu checkpoint" in lines[5]
    assert lines[5].endswith("`clipedu runs --remove broken` deletes it (the notebook that needs it trains it again)")
    assert len(lines) == 6
    assert main(["runs", "--remove", "broken"]) == 0
    assert capsys.readouterr().out.startswith(f"removed {tmp_path / 'broken'}\n")

    assert main(["runs", "--remove", "kept", "nothere"]) == 2  # one unknown name: nothing removed
    err = capsys.readouterr().err
    assert "--remove: no run 'nothere' in" in err and "it holds first, kept" in err
    assert (tmp_path / "kept").exists()
    assert main(["runs", "--remove", "kept"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"removed {tmp_path / 'kept'}\nruns folder {tmp_path}: 1 run folder,")
    assert not (tmp_path / "kept").exists() and (tmp_path / "first").exists()
    assert main(["runs", "--folder", str(tmp_path / "nowhere")]) == 2
    assert "--folder: no runs folder at" in capsys.readouterr().err


def test_a_folder_of_pictures_trains_and_evaluates_by_retrieval(tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("CLIPEDU_RUNS", str(tmp_path / "runs"))
    folder = tmp_path / "pictures"
    folder.mkdir()
    rows = ["picture\twords"]  # open_clip's layout: tab-separated, with columns of its own names
    colours = ("red", "green", "blue", "yellow", "purple")
    for i in range(40):
        colour = colours[i % len(colours)]
        Image.new("RGB", (36, 36), colour).save(folder / f"{i}.png")
        rows.append(f"{i}.png\ta {colour} square")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    data = f"folder:{folder / 'train.csv'}"
    out = tmp_path / "run"
    assert main(["train", "--dataset", data, "--csv-img-key", "picture", "--csv-caption-key", "words", "--steps", "2",
                 "--batch-size", "8", "--fast", "--quiet", "--out", str(out), "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    assert "image_to_text_R@1" in metrics and not any(k.startswith("zero_shot") for k in metrics)  # no labels
    capsys.readouterr()
    # The checkpoint keeps where the pictures are and how their file is read: eval needs no options.
    assert main(["eval", str(out)]) == 0
    assert f"evaluation of {out} on folder:{folder / 'train.csv'}" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["eval"] == metrics  # the same test pictures, read alike
    assert main(["probe", str(out)]) == 2  # probes need labels, which a folder's pictures have not
    assert "probes need labelled data (shapes, shapes2, cifar10, cifar100, digits)" in capsys.readouterr().err

    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    assert main(["eval", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"the dataset folder:{folder / 'train.csv'}: " in err and "(moved? pass --dataset folder:PATH)" in err
    (moved / "captions.csv").write_text((moved / "train.csv").read_text().replace("\t", ",").replace(
        "picture,words", "image,caption"))
    assert main(["eval", str(out), "--dataset", f"folder:{moved}", "--n", "10"]) == 0
    assert "image_to_text_R@1" in capsys.readouterr().out

    # A checkpoint of an older version keeps the folder's name alone: eval asks for the data.
    state = load_checkpoint(out / "checkpoint.pt")
    del state["dataset_source"]
    save_checkpoint(out / "checkpoint.pt", state)
    assert main(["eval", str(out)]) == 2
    assert "pass the data with --dataset folder:PATH" in capsys.readouterr().err


def test_without_out_only_the_course_recipe_trains_into_the_course_models_folder(tmp_path, capsys, monkeypatch):
    from clipedu.cli import _default_out, build_parser

    monkeypatch.setenv("CLIPEDU_RUNS", str(tmp_path))
    folder = lambda line: _default_out(build_parser().parse_args(line.split()), True)  # noqa: E731
    assert folder("train") == folder("train --accum-steps 4") == tmp_path / "shapes-tiny-fast"  # the notebooks'
    assert folder("train --seed 2 --lr 0.001") == tmp_path / "shapes-tiny-fast-lr-0.001-seed-2"
    assert folder("train --dataset shapes2 --hard-negatives --minutes 0.5") == (
        tmp_path / "shapes2-tiny-fast-minutes-0.5-hard-negatives")

    # A run of another recipe lands beside the course model's folder, never in it; the same options find it again.
    argv = ["train", "--steps", "2", "--batch-size", "16", "--fast", "--quiet"]
    assert main(argv) == 0
    run = tmp_path / "shapes-tiny-fast-steps-2-batch-size-16"
    assert f"run folder {run}" in capsys.readouterr().out
    assert (run / "checkpoint.pt").exists() and not (tmp_path / "shapes-tiny-fast").exists()
    assert main(argv) == 2
    assert f"{run} already holds a run; pass --resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # finished: it loads, evaluates and writes again
