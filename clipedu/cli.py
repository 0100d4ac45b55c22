"""The command line: the same training and evaluation as the notebooks, outside a notebook.

    clipedu train                                  # the course model (ShapesWorld, tiny), where the notebooks find it
    clipedu train --dataset shapes --preset tiny --out runs/x --minutes 2
    clipedu train --out runs/x --resume            # continue an interrupted run exactly
    clipedu train --batch-size 1024 --accum-steps 8  # a big contrastive batch in micro-batches of 128
    torchrun --nproc_per_node 2 -m clipedu train   # data parallel on 2 GPUs (or CPU processes)
    clipedu eval runs/x                            # zero-shot and retrieval table
    clipedu probe runs/x                           # linear probes against baselines
    clipedu runs                                   # the runs folder: each run, its size, how far it trained
    clipedu runs --remove shapes-tiny-fast         # delete a run (the next notebook that needs it trains it)

Each command prints a table and writes ``metrics.json`` into the run folder; ``train`` also saves
``training.png`` (the loss and temperature curves). Under torchrun, every process trains on its
share of the global batch and rank 0 alone prints, evaluates and writes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import matplotlib
import torch

from clipedu import __version__
from clipedu.checkpoint import CHECKPOINT_NAME, load_checkpoint
from clipedu.clip import CLIP
from clipedu.config import CLIPConfig
from clipedu.data import DATASET_NAMES, get_dataset
from clipedu.distributed import (
    broadcast_object,
    current,
    first_problem,
    init_from_env,
    launched_by_torchrun,
    leave_group,
)
from clipedu.evaluate import encode_images, linear_probe, pixel_features, report
from clipedu.loop import TrainConfig
from clipedu.runs import (
    default_train_config,
    estimate_steps,
    list_runs,
    model_config,
    model_from_checkpoint,
    remove_run,
    run_dir,
    run_names,
    train_or_load,
    training_data,
    with_steps,
)
from clipedu.runtime import is_fast, pick_device, runs_dir
from clipedu.tokenizer import WordTokenizer
from clipedu.viz.training import plot_history

EXIT_BAD_INPUT = 2
TRAINABLE_PRESETS = ("tiny", "small")  # the presets with a recipe in clipedu.runs.default_train_config
KNOWN_DATASETS = DATASET_NAMES[:-1]  # and folder:PATH
DEVICES = "auto, cpu, cuda, cuda:N or mps"


class CLIError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block) and exit status 2, like CLIError's."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(message: str) -> str:
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


# --- what each option takes, checked while parsing (before any work) ---------------------------------
def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {low}, got {text!r}")
        return value

    return parse


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _device(text: str) -> str | None:
    """``auto`` (None: the best available), or a device the CLI can train on."""
    if text == "auto":
        return None
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected {DEVICES}, got {text!r}")
    return text


def _available_devices() -> list[str]:
    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def _dataset(text: str) -> str:
    if text in KNOWN_DATASETS:
        return text
    if text.startswith("folder:"):
        path = text[len("folder:"):]
        if not path.strip():
            raise argparse.ArgumentTypeError("folder: needs a path after it, e.g. folder:/data/pictures")
        if not Path(path).exists():
            raise argparse.ArgumentTypeError(f"no folder or captions file at {path!r}")
        return text
    raise argparse.ArgumentTypeError(f"unknown dataset {text!r}; expected one of {', '.join(KNOWN_DATASETS)} "
                                     "or folder:PATH")


def _check_out_dir(out_dir: Path) -> None:
    """The run folder must be a folder we can create and write, found out now rather than after training."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"--out: {out_dir} is a file, not a folder")
    parent = out_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CLIError(f"--out: cannot make the folder {out_dir}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"--out: cannot write in {parent}")


def _check_recipe(args, base: TrainConfig, world_size: int) -> None:
    """The batch must split among processes and into micro-batches (said with the options' names).
    ``base``: the recipe the options change (the checkpoint's when resuming, else the preset's)."""
    batch = args.batch_size or base.batch_size
    accum = args.accum_steps or base.accum_steps
    said = f"--batch-size {batch}" + (" (the recipe's)" if args.batch_size is None else "")
    if batch % world_size:
        raise CLIError(f"{said} does not divide among {world_size} processes; choose a multiple of {world_size}")
    if (batch // world_size) % accum:
        per_process = f" ({batch // world_size} per process)" if world_size > 1 else ""
        raise CLIError(f"{said}{per_process} does not split into --accum-steps {accum} equal micro-batches; "
                       f"choose a batch size that is a multiple of {accum * world_size}")


def _check_data(args, cfg: TrainConfig, data) -> None:
    if cfg.batch_size > len(data):
        raise CLIError(f"--batch-size {cfg.batch_size} is larger than the training data of {args.dataset} "
                       f"({len(data)} images); choose at most {len(data)}")
    if cfg.hard_negatives and data.hard_negatives is None:
        raise CLIError(f"--hard-negatives needs data with swapped captions (shapes2); {args.dataset} has none")


def _on_every_rank(step):
    """``step()`` on every process. If it fails on any, every process raises the same CLIError (the
    lowest failing rank's message), instead of the others waiting for it in their next collective.
    An unexpected exception (a bug, not a mistake in the input) keeps its traceback on its rank."""
    try:
        result, own = step(), None
    except Exception as exc:  # noqa: BLE001 - every process must reach first_problem below
        result, own = None, exc
    problem = first_problem(None if own is None else (_one_line(str(own)) or type(own).__name__))
    if own is not None and not isinstance(own, (CLIError, ValueError, OSError, RuntimeError)):
        raise own
    if problem is not None:
        raise CLIError(problem) from None
    return result


def _print_table(title: str, metrics: dict[str, float]) -> None:
    width = max(len(k) for k in metrics)
    print(f"\n{title}")
    print(f"| {'metric'.ljust(width)} | value  |")
    print(f"| {'-' * width} | ------ |")
    for k, v in metrics.items():
        print(f"| {k.ljust(width)} | {v:.4f} |" if isinstance(v, float) else f"| {k.ljust(width)} | {v} |")


def _write_metrics(out_dir: Path, section: str, metrics: dict) -> None:
    path = out_dir / "metrics.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[section] = metrics
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(existing, indent=2))
    tmp.replace(path)


def _main_first(load):
    """``load()`` on rank 0 first (it may download into a shared cache), then on the others; a
    failure on rank 0 stops every process with its message instead of leaving them waiting."""
    info = current()
    if not info.enabled:
        return load()
    if info.is_main:
        try:
            result = load()
        except Exception as exc:
            broadcast_object(str(exc))
            raise
        broadcast_object(None)
        return result
    problem = broadcast_object(None)
    if problem is not None:
        raise CLIError(f"rank 0 could not load the data: {problem}")
    return load()


def cmd_train(args) -> int:
    together = False  # every process is on its way out: a success, or a mistake all of them stop on
    try:
        code = _train(args)
        together = True
        return code
    except CLIError:
        together = True
        raise
    finally:
        leave_group(together)  # under torchrun: a barrier, then each process leaves the group


def _train_config(args, fast: bool, state: dict | None) -> TrainConfig:
    """The recipe: the checkpoint's when resuming, else the preset's; the options override it."""
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("seed", args.seed), ("hard_negatives", args.hard_negatives or None),
                                   ("accum_steps", args.accum_steps))
                 if v is not None}
    if state is not None:
        return TrainConfig.from_dict({**state["train_config"], **overrides})
    cfg = default_train_config(args.preset, fast, **{k: v for k, v in overrides.items() if k != "steps"})
    if args.steps is not None:
        return with_steps(cfg, args.steps)
    return cfg


_OPTIONS = {"batch_size": "--batch-size", "lr": "--lr", "seed": "--seed", "hard_negatives": "--hard-negatives"}


def _check_same_recipe(saved: TrainConfig, asked: TrainConfig, out_dir: Path) -> None:
    """A resumed run goes on with the recipe it started with (its optimiser and loader states hold
    it): an option that would change it is a mistake, not a new run."""
    changed = saved.differences(asked)
    if changed:
        said = ", ".join(f"{_OPTIONS.get(k, k)} {asked!r} (the run has {was!r})" for k, (was, asked) in changed.items())
        raise CLIError(f"--resume: {said}; a resumed run keeps its recipe (only --steps and --accum-steps may "
                       f"change): drop the option, or train a new run with another --out than {out_dir}")


_RECIPE_FLAGS = (("minutes", "--minutes"), ("steps", "--steps"), ("batch_size", "--batch-size"), ("lr", "--lr"),
                 ("seed", "--seed"), ("hard_negatives", "--hard-negatives"))


def _default_out(args, fast: bool) -> Path:
    """Without --out: the course recipe trains into the course model's folder, where the notebooks
    find it (``run_dir``); a run of any other recipe gets a folder of its own beside it, named by
    the options that make it differ (``shapes-tiny-cpu-minutes-1-seed-2``), so it never takes the
    course model's place. ``--accum-steps`` changes no number of the run: it stays out of the name."""
    course = run_dir(args.dataset, args.preset, fast)
    asked = [(flag, getattr(args, key)) for key, flag in _RECIPE_FLAGS if getattr(args, key) not in (None, False)]
    if not asked:
        return course
    words = [flag[2:] if value is True else f"{flag[2:]}-{value:g}" for flag, value in asked]
    return course.with_name("-".join([course.name, *words]))  # numbers as written: lr-0.001


def _train(args) -> int:
    matplotlib.use("Agg")  # the training curves go to a file
    # Everything that can be checked without the process group is checked before joining it, so a
    # mistake stops every process at once with the same message.
    if args.minutes is not None and args.resume:
        raise CLIError("--minutes: a resumed run keeps its number of steps; resume it with --out and the run "
                       "folder it printed (--steps changes how far it goes)")
    csv_options = {"image_key": args.csv_img_key, "caption_key": args.csv_caption_key, "separator": args.csv_separator}
    csv_options = {k: v for k, v in csv_options.items() if v is not None}
    if csv_options and not args.dataset.startswith("folder:"):
        raise CLIError(f"--csv-img-key, --csv-caption-key and --csv-separator describe a folder's captions file; "
                       f"--dataset is {args.dataset}, expected folder:PATH")
    fast = is_fast() if args.fast is None else args.fast
    out_dir = Path(args.out) if args.out else _default_out(args, fast)
    _check_out_dir(out_dir)
    checkpoint = out_dir / CHECKPOINT_NAME
    if args.resume and not checkpoint.exists():
        raise CLIError(f"--resume: nothing to resume in {out_dir} (no {CHECKPOINT_NAME})")
    if not args.resume and out_dir.exists() and any(out_dir.iterdir()):
        raise CLIError(
            f"{out_dir} already holds a run; pass --resume to continue it, or choose another --out "
            "(nothing was overwritten)"
        )
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        raise CLIError(f"--device: {exc}; valid here: {', '.join(_available_devices())}") from None
    state = None
    try:
        if args.resume:
            state = load_checkpoint(checkpoint)
            if state["dataset"].split("-")[0] != args.dataset.split(":")[0] and not args.dataset.startswith("folder:"):
                raise CLIError(f"{out_dir} was trained on {state['dataset']!r}, not {args.dataset!r}")
            asked = model_config(args.preset, WordTokenizer.from_dict(state["tokenizer"]))
            if CLIPConfig.from_dict(state["config"]) != asked:
                raise CLIError(f"--preset {args.preset}: {out_dir} holds a run of another model config; resume it "
                               "with the --preset it was trained with")
        base = TrainConfig.from_dict(state["train_config"]) if state else default_train_config(args.preset, fast)
        _check_recipe(args, base, int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1)
        cfg = _train_config(args, fast, state)
        if state is not None:
            _check_same_recipe(TrainConfig.from_dict(state["train_config"]), cfg, out_dir)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    except KeyError as exc:
        raise CLIError(f"--resume: {checkpoint} has no {exc} entry (written by another version of clipedu?)") from None

    # Under torchrun: join the process group (NCCL on GPUs, gloo on CPUs); one GPU per process.
    info = init_from_env(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    say = print if info.is_main else (lambda *args, **kwargs: None)

    def load_data():
        if csv_options:  # open_clip's CSV flags: the folder's own columns
            data = _main_first(lambda: get_dataset(args.dataset, "train", **csv_options))
        else:
            data = _main_first(lambda: training_data(args.dataset, fast))
        _check_data(args, cfg, data)
        if args.dataset.startswith("folder:"):  # kept in the checkpoint: `clipedu eval RUN` reads it the same way
            data.info["source"] = {"dataset": f"folder:{Path(args.dataset[len('folder:'):]).resolve()}",
                                   "options": csv_options}
        return data

    data = _on_every_rank(load_data)  # a dataset one process cannot read stops them all
    if args.minutes is not None:
        steps = estimate_steps(args.preset, data, cfg, device, seconds=args.minutes * 60)
        steps = broadcast_object(steps)  # rank 0's clock decides: every process runs as many steps
        cfg = with_steps(cfg, steps)
        say(f"{args.minutes:g} minutes on {device} fit about {cfg.steps} steps of batch {cfg.batch_size}")
    if cfg.checkpoint_every == 0:
        cfg.checkpoint_every = max(50, cfg.steps // 10)
    where = str(device)
    if info.enabled:
        where += (f", {info.world_size} processes (global batch {cfg.batch_size}, "
                  f"{cfg.batch_size // info.world_size} per process)")
    if cfg.accum_steps > 1:
        where += f", {cfg.accum_steps} micro-batches per step"
    say(f"training {args.preset} on {args.dataset} ({len(data)} images) for {cfg.steps} steps on {where}; "
        f"run folder {out_dir}")
    start = time.perf_counter()
    try:
        run = train_or_load(args.dataset, args.preset, cfg, out_dir=out_dir, data=data, device=device,
                            progress=not args.quiet)
    except ValueError as exc:  # another model config in the folder, ...: found before training starts
        raise CLIError(str(exc)) from None
    if not info.is_main:  # rank 0 alone evaluates, plots and writes
        return 0
    history = run.history
    fig = plot_history(history, title=f"{args.dataset} / {args.preset}")
    fig.savefig(out_dir / "training.png", dpi=100)
    train_metrics = {"steps": history.step[-1], "seconds": round(history.seconds, 1),
                     "final_loss": history.loss[-1], "temperature": history.temperature[-1]}
    with torch.no_grad():
        metrics = report(run.model, run.tokenizer, args.dataset, n=500 if fast else 1000, **csv_options)
    _print_table(f"training ({time.perf_counter() - start:.0f} s)", train_metrics)
    _print_table(f"evaluation on the {args.dataset} test split", metrics)
    _write_metrics(out_dir, "train", train_metrics)
    _write_metrics(out_dir, "eval", metrics)
    print(f"\nwrote {out_dir / 'metrics.json'}, {out_dir / 'training.png'} and {checkpoint}")
    return 0


def _load_run(run: str):
    path = Path(run)
    try:
        model, tokenizer, state = model_from_checkpoint(path)
    except ValueError as exc:
        raise CLIError(f"{exc} (RUN is a run folder or its {CHECKPOINT_NAME})") from None
    return path if path.is_dir() else path.parent, model, tokenizer, state


def _data_problem(dataset: str, exc: Exception, asked: bool) -> CLIError:
    """``asked``: the user named the dataset (--dataset); else it is the one the run was trained on."""
    moved = "" if asked or not dataset.startswith("folder:") else " (moved? pass --dataset folder:PATH)"
    return CLIError(f"{'--dataset' if asked else 'the dataset'} {dataset}: {exc}{moved}")


_NAMED = tuple(name for name in DATASET_NAMES if ":" not in name)  # the datasets a run's name leads back to


def _trained_on(state: dict, command: str) -> str:
    """The dataset a run was trained on, by the name its checkpoint keeps ("shapes-train" -> "shapes").
    A folder of pictures has no such name (eval reads it from the checkpoint's ``dataset_source``;
    checkpoints of older versions lack it): a clear error instead."""
    name = state["dataset"].rsplit("-", 1)[0]
    if name not in _NAMED:
        where = ("pass the data with --dataset folder:PATH" if command == "eval" else
                 "probes need labelled data (" + ", ".join(_NAMED) + ")")
        raise CLIError(f"{command}: the run was trained on {state['dataset']!r}, not a dataset clipedu finds by "
                       f"name (a folder of your own pictures?): {where}")
    return name


def cmd_eval(args) -> int:
    out_dir, model, tokenizer, state = _load_run(args.run)
    source, options = state.get("dataset_source"), {}
    if args.dataset:
        dataset = args.dataset
    elif source:  # a folder of pictures, read as it was for training (its path, CSV columns and split)
        dataset, options = source["dataset"], source["options"]
    else:
        dataset = _trained_on(state, "eval")
    try:
        metrics = report(model, tokenizer, dataset, n=args.n, **options)
    except (ValueError, OSError, RuntimeError) as exc:  # data that is not there, or that this model cannot read
        raise _data_problem(dataset, exc, asked=args.dataset is not None) from None
    _print_table(f"evaluation of {out_dir} on {dataset}", metrics)
    _write_metrics(out_dir, "eval", metrics)
    return 0


def cmd_probe(args) -> int:
    out_dir, model, tokenizer, state = _load_run(args.run)
    dataset = _trained_on(state, "probe")
    try:
        metrics, sizes = _probe(model, dataset, args.n)
    except (ValueError, OSError, RuntimeError) as exc:
        raise _data_problem(dataset, exc, asked=False) from None
    _print_table(f"linear probes on {dataset} ({sizes[0]} train, {sizes[1]} test images)", metrics)
    _write_metrics(out_dir, "probe", metrics)
    return 0


def cmd_runs(args) -> int:
    folder = Path(args.folder) if args.folder else runs_dir()
    try:
        known = run_names(folder)  # the names alone: list_runs opens every checkpoint
    except ValueError as exc:  # no runs folder there
        raise CLIError(f"--folder: {exc}") from None
    unknown = [name for name in args.remove or () if name not in known]
    if unknown:
        raise CLIError(f"--remove: no run {', '.join(map(repr, unknown))} in {folder}; "
                       f"it holds {', '.join(known) or 'no runs'}")
    for name in args.remove or ():
        print(f"removed {remove_run(name, folder)}")
    found = list_runs(folder)
    total = sum(r.size for r in found)
    print(f"runs folder {folder}: {len(found)} run folder{'s' * (len(found) != 1)}, {_megabytes(total)}")
    if found:
        width = max(len(r.name) for r in found)
        print(f"  {'name':<{width}}  {'size':>9}  {'written':<16}  state")
        for r in found:
            written = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.written))
            print(f"  {r.name:<{width}}  {_megabytes(r.size):>9}  {written:<16}  {r.state}")
    for r in found:
        if r.unreadable is not None:
            print(f"{r.name}: {r.unreadable}; `clipedu runs --remove {r.name}` deletes it (the notebook that "
                  "needs it trains it again)")
    return 0


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _probe(model, dataset: str, n: int):
    if dataset.startswith("shapes"):
        train, test = get_dataset(dataset, "train", n=n, seed=7), get_dataset(dataset, "test", n=n // 2, seed=8)
    else:  # a fixed random subset of each split: n training images, half as many test images
        train = get_dataset(dataset, "train").sample(n, seed=7)
        test = get_dataset(dataset, "test").sample(n // 2, seed=8)
    attributes = [a for a in ("shape", "colour", "size", "position", "class") if a in train.labels]
    torch.manual_seed(0)
    random_encoder = CLIP(model.cfg).eval()
    features = {
        "clip": (encode_images(model, train, features=True), encode_images(model, test, features=True)),
        "random encoder": (encode_images(random_encoder, train, features=True),
                           encode_images(random_encoder, test, features=True)),
        "raw pixels": (pixel_features(train), pixel_features(test)),
    }
    metrics = {}
    for attribute in attributes:
        for name, (tr, te) in features.items():
            result = linear_probe(tr, train.labels[attribute], te, test.labels[attribute])
            metrics[f"{attribute} / {name}"] = result.accuracy
    return metrics, (len(train), len(test))


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="clipedu", description=__doc__.split("\n")[0],
                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    datasets = f"{', '.join(KNOWN_DATASETS)} or folder:PATH"

    t = sub.add_parser("train", help="train a mini-CLIP and report zero-shot accuracy")
    t.add_argument("--dataset", default="shapes", type=_dataset, metavar="DATASET",
                   help="shapes (default, generated), shapes2 (two objects), cifar10, cifar100, digits, "
                        "or folder:PATH with captions.csv")
    t.add_argument("--csv-img-key", metavar="COLUMN",
                   help="with folder:PATH, the captions file's column of image paths (open_clip's flag; "
                        "default: image, or filepath)")
    t.add_argument("--csv-caption-key", metavar="COLUMN",
                   help="with folder:PATH, the captions file's column of captions (default: caption, or title)")
    t.add_argument("--csv-separator", metavar="CHAR",
                   help="with folder:PATH, the captions file's separator (default: from the file)")
    t.add_argument("--preset", default="tiny", choices=TRAINABLE_PRESETS,
                   help="model size: tiny (CPU, default) or small (GPU)")
    t.add_argument("--out", help="run folder (default: <runs folder>/<dataset>-<preset>[-fast|-cpu], where the "
                                 "notebooks keep their course model; with --minutes, --steps, --batch-size, --lr, "
                                 "--seed or --hard-negatives, that name followed by them, e.g. "
                                 "shapes-tiny-cpu-minutes-1)")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_int_at_least(1), help="training steps (default: the preset's recipe)")
    length.add_argument("--minutes", type=_positive_number,
                        help="fit the number of steps to this many minutes of training")
    t.add_argument("--batch-size", type=_int_at_least(1),
                   help="images per step, over all processes under torchrun (default: the recipe's)")
    t.add_argument("--accum-steps", type=_int_at_least(1),
                   help="split each step's batch into this many micro-batches (less memory, same loss)")
    t.add_argument("--lr", type=_positive_number, help="peak learning rate (default: the recipe's)")
    t.add_argument("--seed", type=_int_at_least(0), help="random seed (default 0)")
    t.add_argument("--device", type=_device, metavar="DEVICE",
                   help=f"{DEVICES} (default: auto, the best available)")
    t.add_argument("--hard-negatives", action="store_true",
                   help="add each image's swapped caption as an extra negative (two-object data)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="fast mode: small data and few steps (default: on when CI or CLIPEDU_FAST is set)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="zero-shot and retrieval metrics of a trained run")
    e.add_argument("run", metavar="RUN", help="run folder (or its checkpoint file)")
    e.add_argument("--dataset", type=_dataset, metavar="DATASET",
                   help=f"evaluate on another dataset than the one trained on: {datasets}")
    e.add_argument("--n", type=_int_at_least(1), default=1000, help="test images (default 1000)")
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser("probe", help="linear probes on frozen features against baselines")
    p.add_argument("run", metavar="RUN", help="run folder (or its checkpoint file)")
    p.add_argument("--n", type=_int_at_least(2), default=2000,
                   help="training images for the probes, at least 2 (default 2000; half as many test images; a "
                        "fixed random subset of larger splits)")
    p.set_defaults(func=cmd_probe)

    r = sub.add_parser("runs", help="list the runs folder (each run, its size, how far it trained), or remove runs")
    r.add_argument("--remove", nargs="+", metavar="NAME",
                   help="delete these run folders (the next notebook that needs one trains it again)")
    r.add_argument("--folder", help="another runs folder (default: $CLIPEDU_RUNS, else runs/ in the checkout)")
    r.set_defaults(func=cmd_runs)
    return ap


def main(argv=None) -> int:
    """The ``clipedu`` command. A mistake in the input is one line on stderr and exit status 2,
    before anything is written: from argparse (a value an option does not take) or a CLIError."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"clipedu {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
