"""One training loop for every model of the course (notebook 06).

    for each step:  batch from the loader -> losses(batch) under autocast -> check it is finite
                    -> backward -> recipe.optimizer_step -> after_step() -> log, evaluate, save

:class:`Loop` keeps the bookkeeping: a progress bar, a :class:`History` of everything logged,
evaluation every so often, checkpoints written atomically that resume the run exactly (weights,
optimiser, schedule, loss scale, data order and every random generator), and an alarm when the
loss stops being a number. A model's loop says only what one step computes, in ``losses``:
CLIP's in :class:`clipedu.train.Trainer`, BLIP-2's stages in :mod:`clipedu.blip2.training`, the
supervised baseline in :mod:`clipedu.supervised`. All of them read one :class:`TrainConfig`.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from clipedu.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, load_checkpoint, run_lock, save_checkpoint
from clipedu.data import DeviceLoader
from clipedu.distributed import barrier, broadcast_object, current, global_mean
from clipedu.recipe import Precision, make_optimizer, make_scheduler, optimizer_step, parameter_groups


@dataclass
class TrainConfig:
    """How to train: the recipe (AdamW, warm-up then cosine decay, clipping, precision) and the
    bookkeeping (how often to log, evaluate and save). Defaults are the CLIP loop's."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int | None = 50  # long enough that a logit_scale of ln(1/0.07) does not collapse; None: a tenth
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 1.0  # 0: no clipping
    precision: str = "auto"  # "auto", "fp32", "bf16" or "fp16"
    augment: bool = False  # random crops and flips in the loader
    hard_negatives: bool = False  # CLIP only (NegCLIP): each image's swapped caption as an extra negative
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end (when an eval_fn is given)
    checkpoint_every: int = 0  # 0: only at the end (when there is an out_dir)
    seed: int = 0
    # CLIP only. Micro-batches per step: the contrastive batch stays whole (batch_size pairs), only
    # the memory for activations shrinks; see clipedu.train.Trainer._accumulate_gradients.
    accum_steps: int = 1

    def __post_init__(self):
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "log_every", "accum_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.warmup_steps is None:
            self.warmup_steps = self.steps // 10
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}), got {self.warmup_steps}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.batch_size % self.accum_steps:
            raise ValueError(
                f"batch_size {self.batch_size} does not split into accum_steps={self.accum_steps} equal "
                "micro-batches; choose a batch size that is a multiple of accum_steps"
            )

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def differences(self, other: TrainConfig) -> dict[str, tuple]:
        """{field: (this value, ``other``'s)} for every setting a resumed run cannot change.

        A run may go on for more steps (its warm-up then follows from them, as ``warmup_steps=None``
        asks), log, evaluate and save at other intervals, and split its batch into other
        micro-batches (the same gradients in less memory). Anything else (the learning rate, the
        batch, the seed, the optimiser's settings, the data's augmentation) would not be the run
        the checkpoint continues: the optimiser's and the loader's saved states carry the old ones.
        """
        free = {"steps", "log_every", "eval_every", "checkpoint_every", "accum_steps"}
        if self.steps != other.steps:
            free.add("warmup_steps")
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                if f.name not in free and getattr(self, f.name) != getattr(other, f.name)}

    @staticmethod
    def describe(changed: dict[str, tuple], asked: str = "here") -> str:
        """:meth:`differences` in words: ``lr 0.002 there, 0.001 here, ...``."""
        return ", ".join(f"{k} {was!r} there, {new!r} {asked}" for k, (was, new) in changed.items())


@dataclass
class History:
    """Everything a loop logged: at each step in ``step``, one value in every series.

    ``series`` holds ``"loss"`` and ``"lr"`` for every loop, and what a model's loop adds
    (CLIP: ``"logit_scale"``, the similarities; BLIP-2: ``"itc"``, ``"itm"``, ``"itg"``; the
    classifier: ``"accuracy"``). A series reads as an attribute too: ``history.loss``.
    ``evals`` holds ``{"step": s, metric: value, ...}`` for each evaluation.
    """

    name: str = "training"
    step: list[int] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=lambda: {"loss": [], "lr": []})
    evals: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    batch_size: int = 0

    def __getattr__(self, name: str) -> list[float]:
        series = self.__dict__.get("series") or {}
        if name in series:
            return series[name]
        raise AttributeError(f"this history logged no {name!r}; it has {sorted(series)}")

    def log(self, step: int, **values: float) -> None:
        self.step.append(step)
        for key, value in values.items():
            self.series.setdefault(key, []).append(float(value))

    def last(self, key: str = "loss") -> float:
        return self.series[key][-1]

    @property
    def temperature(self) -> list[float]:
        """tau = 1 / exp(logit_scale) at each logged step (loops that learn a temperature)."""
        return [math.exp(-s) for s in self.logit_scale]

    def to_dict(self) -> dict:
        """One flat dict: the series beside ``step``, ``evals`` and the rest."""
        return {"name": self.name, "step": list(self.step), **{k: list(v) for k, v in self.series.items()},
                "evals": list(self.evals), "seconds": self.seconds, "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        d = dict(d)
        own = {name: d.pop(name) for name in ("name", "step", "evals", "seconds", "batch_size") if name in d}
        return cls(**own, series={k: list(v) for k, v in d.items()})


def frozen_submodules(model: nn.Module) -> list[nn.Module]:
    """The largest submodules of ``model`` whose parameters are all frozen (``requires_grad``
    False); a module without parameters, a lone dropout say, is not one."""
    found = []

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            found.append(module)
            return
        for child in module.children():
            visit(child)

    for child in model.children():
        visit(child)
    return found


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint (if any) is kept."""


class Loop:
    """Trains ``model`` on batches from ``loader`` with the course's recipe.

    A model's loop subclasses this and says what a step computes: :meth:`losses` returns a dict
    whose ``"loss"`` is minimised (its other one-number entries are logged beside it), and
    :meth:`after_step` may fix up the weights after each optimiser step. Everything else is
    shared: ``fit()`` with resume, evaluation, checkpoints, progress and the history.

    Only parameters with ``requires_grad`` are trained, so frozen parts stay as they are, and a
    frozen submodule (all its parameters frozen, as :func:`~clipedu.blip2.freeze_` leaves it) is
    kept in eval mode while the rest trains: its dropout stays off and its batch statistics fixed.
    ``eval_fn(model)`` returns a dict of metrics, every ``cfg.eval_every`` steps and at the end.
    ``out_dir`` receives ``checkpoint.pt`` every ``cfg.checkpoint_every`` steps and at the end.
    """

    contrastive = False  # True for CLIP's loop, the one that takes hard_negatives and accum_steps

    def __init__(self, model: nn.Module, loader: DeviceLoader, cfg: TrainConfig, device: torch.device,
                 out_dir: str | Path | None = None, eval_fn: Callable[[nn.Module], dict] | None = None,
                 name: str = "training"):
        if not self.contrastive and (cfg.hard_negatives or cfg.accum_steps > 1):
            raise ValueError(f"{name}: hard_negatives and accum_steps are options of CLIP's contrastive loop "
                             "(clipedu.train.Trainer); this loop takes neither")
        self.cfg = cfg
        self.device = torch.device(device)
        self.dist = current()
        self.model = model.to(self.device)
        self.loader = loader
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.eval_fn = eval_fn
        self.name = name
        groups = parameter_groups(model, cfg.weight_decay)
        self.optimizer = make_optimizer(groups, cfg.lr, cfg.betas, cfg.eps, self.device)
        self.scheduler = make_scheduler(self.optimizer, cfg.warmup_steps, cfg.steps)
        self.precision = Precision(cfg.precision, self.device)
        self.trained = [p for p in model.parameters() if p.requires_grad]
        self.frozen = frozen_submodules(model)
        # For the randomness inside a step (BLIP-2's hard negatives, say): saved with the checkpoint.
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.ddp = None  # a DistributedDataParallel wrapper, when a subclass trains under torchrun
        self.step = 0
        self.history = History(name=name, batch_size=cfg.batch_size)

    # -- what a model's loop says ----------------------------------------------------------------
    def losses(self, batch) -> dict[str, torch.Tensor]:
        """The losses of one batch (under autocast): ``"loss"`` is minimised."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Runs after every optimiser step (clamping a temperature, say)."""

    def logged(self, out: dict) -> dict[str, float]:
        """What to log for a step besides the loss and the learning rate: by default every other
        one-number entry of ``out``."""
        return {k: v.item() for k, v in out.items()
                if k != "loss" and isinstance(v, torch.Tensor) and v.numel() == 1}

    def after_log(self) -> None:
        """Runs after each logged step (an alarm, say)."""

    def postfix(self) -> dict[str, str]:
        """What the progress bar shows besides the loss."""
        return {}

    def diagnosis(self) -> str:
        """A few words on the state when the loss stops being a number."""
        return f"lr {self.scheduler.get_last_lr()[0]:.2e}"

    # -- one step --------------------------------------------------------------------------------
    def compute_gradients(self, batch) -> dict:
        """Set ``.grad`` of every trained parameter to the gradient of the loss on ``batch``
        (scaled when fp16 needs it), without a step. Returns the step's outputs, ``"loss"``
        detached (under DDP, the mean over processes)."""
        self.train_mode()
        with self.precision.autocast():
            out = self.losses(batch)
        logged = self._checked(out["loss"])
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(out["loss"])
        return {**out, "loss": logged}

    def train_mode(self) -> None:
        """The model in training mode, its frozen submodules in eval mode."""
        self.model.train()
        for module in self.frozen:
            module.eval()

    def train_step(self, batch) -> dict:
        """One optimiser step on a batch from the loader."""
        out = self.compute_gradients(batch)
        optimizer_step(self.optimizer, self.scheduler, self.trained, self.cfg.grad_clip, self.precision.scaler)
        self.after_step()  # on every process: they all hold the same weights
        self.step += 1
        return out

    def _checked(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to log (under DDP the mean over processes, so all of them stop together on a
        non-finite value); raises TrainingDiverged when it is not finite."""
        value = global_mean(loss.detach()) if self.ddp is not None else loss.detach()
        if not torch.isfinite(value):
            raise TrainingDiverged(
                f"{self.name}: the loss became {value.item()} at step {self.step + 1} ({self.diagnosis()}). "
                "Lower the learning rate or use fp32/bf16; "
                + (f"the last good checkpoint is kept in {self.out_dir}." if self.out_dir else "nothing was saved.")
            )
        return value

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, resume: bool | str = False, progress: bool = True,
            callback: Callable[[Loop], None] | None = None, max_seconds: float | None = None) -> History:
        """Train until ``cfg.steps`` (or ``max_seconds`` of wall time; the schedule is unchanged).

        ``resume=True`` continues from ``out_dir``'s checkpoint exactly where it stopped;
        ``resume="auto"`` does so where ``out_dir`` holds one and starts afresh where it does not (a
        finished run then only loads: how a notebook keeps a run for its next execution).
        ``callback(loop)`` runs after every logged step (a live plot, say). The model is left in
        eval mode.

        A loop with an ``out_dir`` holds :func:`~clipedu.checkpoint.run_lock` on it from looking for
        a checkpoint to writing the last one: a second process that asks for the same run (two
        notebooks open at once, two test workers) waits, then finds it finished and only loads.
        """
        if resume not in (True, False, "auto"):
            raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
        if resume == "auto" and self.out_dir is None:
            raise ValueError("resume='auto' needs an out_dir to look for a checkpoint in")
        with run_lock(self.out_dir) if self.out_dir is not None else contextlib.nullcontext():
            return self._fit(resume, progress, callback, max_seconds)

    def _fit(self, resume: bool | str, progress: bool, callback: Callable[[Loop], None] | None,
             max_seconds: float | None) -> History:
        cfg = self.cfg
        if resume == "auto":
            resume = (self.out_dir / CHECKPOINT_NAME).exists()
        if resume:
            if self.out_dir is None or not (self.out_dir / CHECKPOINT_NAME).exists():
                raise ValueError(f"nothing to resume: no {CHECKPOINT_NAME} in {self.out_dir}")
            self.load_state_dict(load_checkpoint(self.out_dir / CHECKPOINT_NAME))
        main = self.dist.is_main  # under DDP, rank 0 alone shows progress, logs, evaluates and saves
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (progress and main), desc=self.name, unit="step")
        start = time.perf_counter()
        seconds_before, step_before = self.history.seconds, self.step
        window_start, window_examples = time.perf_counter(), 0
        batches = self.loader.forever()
        try:
            while self.step < cfg.steps:
                if max_seconds is not None:
                    stop = time.perf_counter() - start >= max_seconds
                    if self.ddp is not None:
                        stop = broadcast_object(stop)  # rank 0's clock decides for all
                    if stop:
                        break
                batch = next(batches)
                out = self.train_step(batch)
                window_examples += batch.images.shape[0]
                last = self.step == cfg.steps
                if main and (self.step % cfg.log_every == 0 or last or self.step == 1):
                    now = time.perf_counter()
                    rate = window_examples / max(now - window_start, 1e-9)
                    window_start, window_examples = now, 0
                    self.history.log(self.step, loss=out["loss"].item(), lr=self.scheduler.get_last_lr()[0],
                                     **self.logged(out), examples_per_s=rate)
                    bar.set_postfix(loss=f"{self.history.last():.3f}", **self.postfix(), per_s=f"{rate:.0f}")
                    self.after_log()
                    if callback is not None:
                        callback(self)
                if main and self.eval_fn is not None and ((cfg.eval_every and self.step % cfg.eval_every == 0) or last):
                    self.evaluate()  # the others wait for rank 0 in their next collective
                if self.out_dir is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.history.seconds = seconds_before + time.perf_counter() - start
                    self.save()
                    barrier()  # the checkpoint is whole before any process goes on
                bar.update(1)
        finally:
            bar.close()
        if self.step != step_before:  # a finished run that only loaded keeps its seconds, its file untouched
            self.history.seconds = seconds_before + time.perf_counter() - start
            if self.out_dir is not None:
                self.save()
        barrier()  # no process returns (and reads the checkpoint, or exits) before rank 0 is done
        self.model.eval()
        return self.history

    def evaluate(self) -> dict:
        self.model.eval()
        with torch.no_grad():
            metrics = dict(self.eval_fn(self.model))
        self.history.evals.append({"step": self.step, **metrics})
        return metrics

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly (tensors and plain Python only, so
        the file loads with ``weights_only=True``)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "train_config": asdict(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler else None,
            "step": self.step,
            "history": self.history.to_dict(),
            "loader": self.loader.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "generator": self.generator.get_state()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the run ``state`` holds (:meth:`state_dict`); its recipe must be this loop's, but
        for what :meth:`TrainConfig.differences` lets a resumed run change."""
        if "train_config" in state:  # older files: nothing to compare
            changed = TrainConfig.from_dict(state["train_config"]).differences(self.cfg)
            if changed:
                raise ValueError(f"the checkpoint was trained with another recipe ({TrainConfig.describe(changed)}); "
                                 "a resumed run may change only its steps and how often it logs, evaluates and saves. "
                                 "Resume with the same recipe, or start afresh in another folder")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.precision.scaler and state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.history = History.from_dict(state["history"])
        self.loader.load_state_dict(state["loader"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate((3, tuple(rng["python"]), None))
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if "generator" in rng:
            self.generator.set_state(rng["generator"])

    def save(self) -> Path | None:
        if self.out_dir is None:
            return None
        path = self.out_dir / CHECKPOINT_NAME
        if self.dist.is_main:  # one writer: every process holds the same weights
            save_checkpoint(path, self.state_dict())
        return path
