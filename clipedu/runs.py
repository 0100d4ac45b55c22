"""Runs: train a model once, keep it in a run folder, load it wherever it is needed.

Notebook 06 trains the course's mini-CLIP with :func:`train_or_load`; every later notebook calls
the same function and finds the checkpoint (or trains it, so each notebook also runs on its own).
The command line (``clipedu train``) and notebooks that train their own variants (a narrower
model, hard negatives) go through it too, so a run is named, seeded, saved and reloaded in one
way everywhere:

    runs/<dataset>-<name>[-fast|-cpu]/checkpoint.pt      e.g. runs/shapes-tiny-fast/checkpoint.pt

A model is a preset name (``"tiny"``, ``"small"``) or a :class:`~clipedu.config.CLIPConfig`;
either way its text tower is fitted to the tokenizer built from the training captions
(:meth:`CLIPConfig.for_tokenizer <clipedu.config.CLIPConfig.for_tokenizer>`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from clipedu.checkpoint import CHECKPOINT_NAME, keyed_folder, load_checkpoint, run_lock, safe_name
from clipedu.clip import CLIP
from clipedu.config import CLIPConfig, preset
from clipedu.data import CaptionedImages, build_tokenizer, get_dataset
from clipedu.loop import History, TrainConfig
from clipedu.runtime import pick_device, resolve_mode, runs_dir, seed_everything
from clipedu.tokenizer import WordTokenizer
from clipedu.train import Trainer

# Training pictures in fast mode where fewer than the dataset's default. One-object ShapesWorld keeps
# its 20,000 in every mode: they take about two seconds to draw, a step costs the same whatever the
# number of pictures, and the course model composes held-out pairs far better from 20,000 than from
# 4,000 (notebook 06). Notebook 07's two-object scenes keep 4,000 in fast mode.
FAST_TRAIN_IMAGES = {"shapes2": 4000}

# The longest warm-up a short run needs: at 450 steps (fast mode) a 90-step warm-up learned every
# attribute on five seeds where 30 or 60 did not (notebook 06). Fast mode and with_steps() share it.
SHORT_RUN_WARMUP = 90


@dataclass
class Run:
    """A trained (or loaded) model with everything needed to use it."""

    model: CLIP
    tokenizer: WordTokenizer
    history: History
    train_config: TrainConfig
    out_dir: Path | None
    loaded: bool  # True when it came from an existing checkpoint instead of training


def default_train_config(preset_name: str = "tiny", fast: bool | None = None, mode: str | None = None,
                         **overrides) -> TrainConfig:
    """The recipe for a preset in a mode (:func:`clipedu.runtime.mode` unless given).

    tiny, batch 128 at 2e-3 on 20,000 pictures: 1,500 steps in full mode (seconds on a GPU), 1,200
    in cpu mode (about 2 minutes on a 2-core CPU), 450 in fast mode (about a minute). Fast mode
    warms up for a fifth of its steps: a run this short learns every attribute reliably only when
    its first steps are small (notebook 06 shows the measurements). small: 4,000 steps of batch 256
    on a GPU; 40 steps of batch 64 in fast and cpu mode (the small preset is a GPU model).
    ``fast`` is the older switch: True means ``mode="fast"``.
    """
    mode = resolve_mode(mode, fast)
    if preset_name == "tiny":
        steps, warmup = {"fast": (450, SHORT_RUN_WARMUP), "cpu": (1200, 50), "full": (1500, 75)}[mode]
        base = dict(steps=steps, warmup_steps=warmup, batch_size=128, lr=2e-3)
    elif preset_name == "small":
        if mode == "full":
            base = dict(steps=4000, warmup_steps=200, batch_size=256)
        else:
            base = dict(steps=40, warmup_steps=8, batch_size=64)
        base.update(lr=1e-3, augment=True)
    else:
        raise ValueError(f"no training recipe for preset {preset_name!r}; expected 'tiny' or 'small'")
    base.update(overrides)
    return TrainConfig(**base)


def with_steps(train_config: TrainConfig, steps: int) -> TrainConfig:
    """The recipe cut or stretched to ``steps`` (``clipedu train --minutes``, the time-budget
    benchmark): a fifth of them warm up, at most :data:`SHORT_RUN_WARMUP` or the recipe's own
    warm-up when that is longer; longer runs need no more than that."""
    warmup = min(steps // 5, max(train_config.warmup_steps, SHORT_RUN_WARMUP))
    return replace(train_config, steps=steps, warmup_steps=warmup)


def training_data(dataset: str = "shapes", fast: bool | None = None, mode: str | None = None) -> CaptionedImages:
    """A dataset's training split, with fewer pictures in fast mode where :data:`FAST_TRAIN_IMAGES`
    says so."""
    small = resolve_mode(mode, fast) == "fast" and dataset in FAST_TRAIN_IMAGES
    return get_dataset(dataset, "train", **({"n": FAST_TRAIN_IMAGES[dataset]} if small else {}))


def run_dir_name(dataset: str, name: str, mode: str | bool) -> str:
    """``<dataset>-<name>[-fast|-cpu]`` (full mode has no suffix) with every character that is not a
    letter or digit made a dash. A bool ``mode`` is the older fast flag."""
    if isinstance(mode, bool):  # the older ``fast`` flag
        mode = "fast" if mode else "full"
    return f"{safe_name(dataset)}-{safe_name(name)}{'' if mode == 'full' else '-' + mode}"


def run_dir(dataset: str = "shapes", name: str = "tiny", fast: bool | None = None, mode: str | None = None) -> Path:
    """The run folder :func:`train_or_load` uses for this dataset and model name, in this mode."""
    return runs_dir() / run_dir_name(dataset, name, resolve_mode(mode, fast))


def keyed_run_dir(dataset: str, name: str, *parts, mode: str | None = None) -> Path:
    """A run folder in the runs folder named by everything the run depends on:
    :func:`~clipedu.checkpoint.keyed_folder` of ``(<dataset>-<name>[-fast|-cpu], *parts)``
    (starting weights, data, configs). With ``fit(resume="auto")`` a run trains once and then only
    loads, and a changed input never meets a stale run: it gets another folder."""
    return keyed_folder(runs_dir(), run_dir_name(dataset, name, resolve_mode(mode, None)), *parts)


def is_trained(dataset: str = "shapes", name: str = "tiny", fast: bool | None = None, mode: str | None = None) -> bool:
    """True when :func:`run_dir` holds a finished run (so :func:`train_or_load` only loads it)."""
    checkpoint = run_dir(dataset, name, fast, mode) / CHECKPOINT_NAME
    if not checkpoint.exists():
        return False
    state = load_checkpoint(checkpoint)
    return state["step"] >= TrainConfig.from_dict(state["train_config"]).steps


def model_config(model: str | CLIPConfig, tokenizer) -> CLIPConfig:
    """A preset name or a config, with its text tower fitted to ``tokenizer``."""
    if isinstance(model, str):
        model = preset(model)
    if not isinstance(model, CLIPConfig):
        raise ValueError(f"model must be a preset name or a CLIPConfig, got {type(model).__name__}")
    return model.for_tokenizer(tokenizer)


def model_from_checkpoint(path: str | Path, device="cpu") -> tuple[CLIP, WordTokenizer, dict]:
    """Rebuild (model, tokenizer, checkpoint dict) from a checkpoint file or run folder."""
    state = load_checkpoint(path)
    model = CLIP(CLIPConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), WordTokenizer.from_dict(state["tokenizer"]), state


def new_trainer(model: str | CLIPConfig, data: CaptionedImages, train_config: TrainConfig,
                tokenizer: WordTokenizer | None = None, device: str | torch.device | None = None,
                out_dir: str | Path | None = None, eval_fn: Callable[[CLIP], dict] | None = None) -> Trainer:
    """A :class:`~clipedu.train.Trainer` for a fresh model, its weights drawn after seeding with
    ``train_config.seed`` (so the same call starts from the same weights). The tokenizer is
    built from ``data`` unless given."""
    tokenizer = tokenizer or build_tokenizer(data)
    cfg = model_config(model, tokenizer)
    seed_everything(train_config.seed)
    return Trainer(CLIP(cfg), tokenizer, data, train_config, device=device, out_dir=out_dir, eval_fn=eval_fn)


def train_or_load(
    dataset: str = "shapes",
    model: str | CLIPConfig = "tiny",
    train_config: TrainConfig | None = None,
    *,
    name: str | None = None,
    out_dir: str | Path | None = None,
    data: CaptionedImages | None = None,
    fast: bool | None = None,
    mode: str | None = None,
    device: str | torch.device | None = None,
    retrain: bool = False,
    progress: bool = True,
    callback: Callable | None = None,
    eval_fn: Callable[[CLIP], dict] | None = None,
    init: Run | None = None,
) -> Run:
    """Load the run in ``out_dir`` when it has trained ``train_config.steps`` steps; otherwise train
    it (resuming where an interrupted run stopped).

    ``init``: a finished run to start from instead of fresh weights (fine-tuning, as NegCLIP
    fine-tunes a trained CLIP): its weights and its tokenizer, for the same model config.

    ``model``: a preset name, or a :class:`~clipedu.config.CLIPConfig` (then also give
    ``train_config``, and ``name`` or ``out_dir``). ``train_config`` defaults to the preset's
    :func:`default_train_config`; ``data`` to :func:`training_data`. ``out_dir`` defaults to
    :func:`run_dir` of ``(dataset, name or the preset name)``, so every notebook that needs the
    course's mini-CLIP finds the one notebook 06 trained. A run folder that holds another model
    config, or a run of another recipe (:meth:`~clipedu.loop.TrainConfig.differences`: more steps
    continue the run, a new learning rate does not), is refused unless ``retrain=True``, which
    trains anew over it.

    Two processes asking for the same run at once (two notebooks open, the tests on two workers)
    train it once: the second waits on :func:`~clipedu.checkpoint.run_lock`, then loads it.
    """
    if not isinstance(model, str) and train_config is None:
        raise ValueError("a model config needs a train_config (recipes are per preset: default_train_config('tiny'))")
    if name is None and out_dir is None and not isinstance(model, str):
        raise ValueError("name the run (name=...) or give out_dir=: a model config has no preset name to file it under")
    mode = resolve_mode(mode, fast)
    device = torch.device(device) if device is not None else pick_device()
    train_config = train_config or default_train_config(model, mode=mode)
    out_dir = Path(out_dir) if out_dir is not None else run_dir(dataset, name or model, mode=mode)
    if init is not None and init.model.cfg != model_config(model, init.tokenizer):
        raise ValueError("init is a run of another model config than the one asked for; "
                         f"it has {init.model.cfg}")
    checkpoint = out_dir / CHECKPOINT_NAME
    with run_lock(out_dir):  # a second process asking for this run waits, then loads it
        tokenizer = init.tokenizer if init is not None else None
        resume = checkpoint.exists() and not retrain
        if resume:
            trained, tokenizer, state = model_from_checkpoint(checkpoint, device)
            if trained.cfg != model_config(model, tokenizer):
                raise ValueError(f"{out_dir} holds a run of another model config than the one asked for; "
                                 "pass retrain=True to train it anew there, or choose another name or out_dir")
            saved = TrainConfig.from_dict(state["train_config"])
            changed = saved.differences(train_config)
            if changed:
                raise ValueError(f"{out_dir} holds a run trained with another recipe "
                                 f"({TrainConfig.describe(changed, 'asked')}); delete that folder "
                                 "or pass retrain=True to train it anew there, or choose another name or out_dir")
            if state["step"] >= train_config.steps:
                return Run(trained, tokenizer, History.from_dict(state["history"]), saved, out_dir, loaded=True)
        data = data if data is not None else training_data(dataset, mode=mode)
        trainer = new_trainer(model, data, train_config, tokenizer=tokenizer, device=device, out_dir=out_dir,
                              eval_fn=eval_fn)
        if init is not None and not resume:  # a resumed run has its own weights in the checkpoint
            trainer.model.load_state_dict(init.model.state_dict())
        history = trainer.fit(resume=resume, progress=progress, callback=callback)
        return Run(trainer.model.eval(), trainer.tokenizer, history, train_config, out_dir, loaded=False)


@dataclass
class RunFolder:
    """One entry of the runs folder, as :func:`list_runs` finds it."""

    name: str
    path: Path
    size: int  # bytes, everything under it
    written: float  # the newest file's modification time (seconds since the epoch)
    checkpoints: int  # checkpoint files under it (a folder of kept runs holds several)
    step: int | None = None  # a single run: the steps it has made
    steps: int | None = None  # ... and the steps it was asked for
    unreadable: str | None = None  # why its checkpoint could not be read (a damaged or foreign file)

    @property
    def state(self) -> str:
        """``finished, 450 steps``, ``stopped at 120 of 450 steps``, ``6 kept runs``, ``no checkpoint``
        or ``checkpoint unreadable``."""
        if self.checkpoints == 0:
            return "no checkpoint"
        if self.unreadable is not None:
            return "checkpoint unreadable"
        if self.step is None:
            return f"{self.checkpoints} kept run{'s' * (self.checkpoints != 1)}"
        if self.step >= self.steps:
            return f"finished, {self.steps} steps"
        return f"stopped at {self.step} of {self.steps} steps"


def _runs_folder(folder: str | Path | None) -> Path:
    folder = Path(folder) if folder is not None else runs_dir()
    if not folder.is_dir():
        raise ValueError(f"no runs folder at {folder}")
    return folder


def run_names(folder: str | Path | None = None) -> list[str]:
    """The names of the run folders in ``folder`` (the runs folder unless given), sorted, without
    reading them; the lock files beside them (``.<name>.lock``) are left out."""
    folder = _runs_folder(folder)
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_runs(folder: str | Path | None = None) -> list[RunFolder]:
    """Every run folder in ``folder`` (the runs folder, :func:`~clipedu.runtime.runs_dir`, unless
    given), by name: a run every notebook trains once (``shapes-tiny-fast``) or a folder of kept runs
    (notebook 16's architectures), with its size on disk and how far it trained. The lock files
    beside the folders (``.<name>.lock``) are left out. A checkpoint is mapped, not read
    (:func:`~clipedu.checkpoint.load_checkpoint` with ``mmap=True``): only its step count is used.
    One that cannot be read is reported (``unreadable``), not raised: the listing is how one finds it."""
    folder = _runs_folder(folder)
    found = []
    for path in (folder / name for name in run_names(folder)):
        files = [f for f in path.rglob("*") if f.is_file()]
        stats = [f.stat() for f in files]
        checkpoints = [f for f in files if f.name == CHECKPOINT_NAME]
        run = RunFolder(path.name, path, sum(st.st_size for st in stats),
                        max((st.st_mtime for st in stats), default=path.stat().st_mtime), len(checkpoints))
        if checkpoints == [path / CHECKPOINT_NAME]:
            try:
                state = load_checkpoint(checkpoints[0], mmap=True)
            except ValueError as exc:
                run.unreadable, state = str(exc), {}
            if "step" in state and "train_config" in state:  # a Loop's checkpoint
                run.step, run.steps = int(state["step"]), int(state["train_config"]["steps"])
            elif "steps" in state:  # written when finished (train_architecture)
                run.step = run.steps = int(state["steps"])
        found.append(run)
    return found


def remove_run(name: str, folder: str | Path | None = None) -> Path:
    """Delete the run folder ``name`` from ``folder`` (the runs folder unless given): the next
    notebook that needs it trains it again. A run another process is training is waited for
    (:func:`~clipedu.checkpoint.run_lock`) rather than deleted under it. Its empty lock file,
    ``.<name>.lock``, stays: a process already waiting on that file would otherwise hold the lock
    beside a newcomer that made a new one, and two would train the run at once. Returns the path
    deleted."""
    folder = _runs_folder(folder)
    names = run_names(folder)
    if name not in names:
        raise ValueError(f"no run {name!r} in {folder}; it holds {', '.join(names) or 'none'}")
    path = folder / name
    with run_lock(path):
        shutil.rmtree(path)
    return path


# Notebook 07's pair models: a mini-CLIP trained on two-object scenes, then fine-tuned with each
# caption's swap as a hard negative (NegCLIP). Fast and cpu mode use a narrower model (width 64, two
# blocks of two heads per tower), so that both train within about a CPU minute; full mode the tiny
# preset. Notebook 17 builds its Q-Former on the fast-mode pair (``mode="fast"``) in every mode.
PAIR_NARROW = dict(embed_dim=64, vision_width=64, vision_layers=2, vision_heads=2, text_width=64, text_layers=2,
                   text_heads=2)


def pair_recipes(mode: str | None = None) -> tuple[str, CLIPConfig, TrainConfig, TrainConfig]:
    """(name, model config, plain recipe, hard-negative fine-tuning recipe) of notebook 07's pair
    models in ``mode`` (:func:`clipedu.runtime.mode` unless given). The fine-tuning recipe runs
    fewer steps, evaluates more often and has ``hard_negatives=True``."""
    mode = resolve_mode(mode)
    full = mode == "full"
    name = "tiny" if full else "narrow"
    model = preset("tiny") if full else preset("tiny", **PAIR_NARROW)
    plain = TrainConfig(steps=1000 if full else 600, warmup_steps=50 if full else 30, batch_size=128, lr=2e-3,
                        eval_every=100 if full else 50)
    negclip = replace(plain, steps=250 if mode == "fast" else 400, warmup_steps=25, eval_every=25,
                      hard_negatives=True)
    return name, model, plain, negclip


def pair_models(mode: str | None = None, *, data: CaptionedImages | None = None,
                device: str | torch.device | None = None, eval_fn: Callable[[CLIP], dict] | None = None,
                progress: bool = True) -> tuple[Run, Run]:
    """(plain run, hard-negative run) of notebook 07: loaded from the runs folder when trained,
    trained there otherwise (:func:`train_or_load`); the second starts from the first. ``data``
    defaults to :func:`training_data` of ``"shapes2"`` in ``mode``."""
    mode = resolve_mode(mode)
    name, model, plain_recipe, negclip_recipe = pair_recipes(mode)
    data = data if data is not None else training_data("shapes2", mode=mode)
    plain = train_or_load("shapes2", model, plain_recipe, name=name, data=data, mode=mode, device=device,
                          eval_fn=eval_fn, progress=progress)
    negclip = train_or_load("shapes2", model, negclip_recipe, name=f"{name}-negclip", data=data, mode=mode,
                            device=device, eval_fn=eval_fn, progress=progress, init=plain)
    return plain, negclip


def estimate_steps(model: str | CLIPConfig, data: CaptionedImages, train_config: TrainConfig, device,
                   seconds: float, tokenizer: WordTokenizer | None = None) -> int:
    """How many steps fit in ``seconds``: time a few steps of a throwaway copy of the run."""
    probe = new_trainer(model, data, replace(train_config, steps=12, warmup_steps=1), tokenizer=tokenizer,
                        device=device)
    batches = probe.loader.forever()
    for _ in range(2):  # the first steps pay for allocation and kernel selection
        probe.train_step(next(batches))
    if probe.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(8):
        probe.train_step(next(batches))
    if probe.device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / 8
    return max(10, int(seconds / per_step))
