"""Where the course runs: device, mode, seeds, Colab, and the folders for data and runs.

Every notebook starts with ``rt = clipedu.runtime.setup()``. It picks the best device, seeds every
random number generator, picks the mode that sizes data and training to the machine, and says
where data and checkpoints go. Three modes:

- ``fast``: continuous integration; each notebook in about a minute on a 2-core CPU.
- ``cpu``: a laptop or a Colab CPU runtime; each notebook within about 5 minutes.
- ``full``: a GPU; the real experiment, each notebook within about 10 minutes on a T4.

The mode follows the machine: ``fast`` when ``CI`` is set, else ``full`` on a CUDA GPU and ``cpu``
elsewhere. ``CLIPEDU_MODE=fast|cpu|full`` overrides it; ``CLIPEDU_FAST=1`` still means ``fast``
(and ``CLIPEDU_FAST=0`` the machine's own mode, even in CI).

``CLIPEDU_SEED=N`` overrides the seed ``setup()`` is given: run the notebooks with another seed
(``benchmarks/bench_notebooks.py --seeds 1 2``) to check that a lesson's outcome does not rest on
the one seed CI uses.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _env_flag(name: str) -> bool | None:
    """Read an on/off environment variable; None when it is not set."""
    value = os.environ.get(name)
    if value is None:
        return None
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be one of {sorted(_TRUE | _FALSE - {''})}, got {value!r}")


MODES = ("fast", "cpu", "full")
MODE_TIME = {
    "fast": "about a minute per notebook on a 2-core CPU (small data, few steps)",
    "cpu": "within about 5 minutes per notebook on a laptop CPU",
    "full": "within about 10 minutes per notebook on a T4 GPU",
}


def device_mode(device: str | torch.device | None = None) -> str:
    """The mode a device runs when nothing says otherwise: ``full`` on CUDA, ``cpu`` elsewhere
    (Apple's MPS included: a laptop's budget)."""
    device = pick_device() if device is None else torch.device(device)
    return "full" if device.type == "cuda" else "cpu"


def mode(device: str | torch.device | None = None) -> str:
    """``fast``, ``cpu`` or ``full``: ``CLIPEDU_MODE`` if set, else ``fast`` under ``CLIPEDU_FAST=1``
    or in CI (``CI`` set and ``CLIPEDU_FAST`` not 0), else the device's own mode (:func:`device_mode`)."""
    value = os.environ.get("CLIPEDU_MODE", "").strip().lower()
    if value:
        if value not in MODES:
            raise ValueError(f"CLIPEDU_MODE must be one of {', '.join(MODES)}; got {os.environ['CLIPEDU_MODE']!r}")
        return value
    flag = _env_flag("CLIPEDU_FAST")
    if flag or (flag is None and os.environ.get("CI")):
        return "fast"
    return device_mode(device)


def resolve_mode(mode_: str | None = None, fast: bool | None = None) -> str:
    """A mode from an explicit ``mode``, else from the older ``fast`` flag (True: ``fast``; False:
    the machine's mode other than fast), else :func:`mode`."""
    if mode_ is not None:
        if mode_ not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode_!r}")
        return mode_
    if fast is True:
        return "fast"
    found = mode()
    if fast is False and found == "fast":
        return device_mode()
    return found


def is_fast() -> bool:
    """True in fast mode (:func:`mode`), which shrinks data and steps to about a minute a notebook."""
    return mode() == "fast"


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def pick_device(prefer: str | None = None) -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` (or the ``CLIPEDU_DEVICE`` environment variable) forces one, e.g. ``"cpu"``.
    """
    prefer = prefer or os.environ.get("CLIPEDU_DEVICE")
    if prefer:
        try:
            device = torch.device(prefer)
        except RuntimeError:
            device = None
        if device is None or device.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"unknown device {prefer!r}; expected cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {prefer!r} was asked for, but CUDA is not available here")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {prefer!r} was asked for, but this machine has {torch.cuda.device_count()} "
                             f"GPUs (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
        if device.type == "mps" and not (torch.backends.mps.is_available()):
            raise ValueError(f"device {prefer!r} was asked for, but MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (every device) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def repo_root() -> Path | None:
    """The clipedu checkout this package was imported from, or None for an installed copy."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").exists() and (root / "notebooks").is_dir() else None


def _base_dir() -> Path:
    if in_colab():
        return Path("/content/clipedu")
    root = repo_root()
    return root if root is not None else Path.home() / ".cache" / "clipedu"


def data_dir() -> Path:
    """Where datasets and downloads go: ``$CLIPEDU_DATA``, else ``data/`` in the checkout."""
    path = Path(os.environ.get("CLIPEDU_DATA") or _base_dir() / "data")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Where downloaded weights and tokenizer files are kept (inside :func:`data_dir`)."""
    path = data_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """Where training runs and checkpoints go: ``$CLIPEDU_RUNS``, else ``runs/`` in the checkout."""
    path = Path(os.environ.get("CLIPEDU_RUNS") or _base_dir() / "runs")
    path.mkdir(parents=True, exist_ok=True)
    return path


class TorchThreads:
    """Sets torch's CPU thread count now and puts the old one back on ``restore()`` or at the end of
    a ``with`` block. ``None`` changes nothing."""

    def __init__(self, threads: int | None):
        self.before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)

    def restore(self) -> None:
        torch.set_num_threads(self.before)

    def __enter__(self) -> TorchThreads:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


@dataclass
class Runtime:
    """What :func:`setup` decided. ``rt.choose(fast=..., cpu=..., full=...)`` picks a size by mode."""

    device: torch.device
    mode: str
    seed: int
    colab: bool
    data_dir: Path
    runs_dir: Path

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")

    @property
    def fast(self) -> bool:
        return self.mode == "fast"

    def choose(self, *, fast, full, cpu=None):
        """The value for this mode: ``steps = rt.choose(fast=60, cpu=300, full=2000)``. Without
        ``cpu``, cpu mode takes the ``fast`` value (a laptop's budget is closer to CI's than to a GPU's)."""
        if self.mode == "full":
            return full
        if self.mode == "cpu" and cpu is not None:
            return cpu
        return fast

    def small_model_threads(self) -> TorchThreads:
        """One CPU thread in fast mode on a CPU, where the course's small models train faster on one
        thread than on two that wait for each other (much faster when the machine is busy); nothing
        changes elsewhere. ``with rt.small_model_threads(): ...`` for a block, or call it once for
        the rest of a notebook."""
        return TorchThreads(1 if self.fast and self.device.type == "cpu" else None)

    def describe(self) -> str:
        gpu = ""
        if self.device.type == "cuda":
            gpu = f" ({torch.cuda.get_device_name(self.device)})"
        return (
            f"clipedu | device: {self.device}{gpu} | mode: {self.mode}, {MODE_TIME[self.mode]} | "
            f"seed: {self.seed} | torch {torch.__version__}\n"
            f"data: {self.data_dir}\nruns: {self.runs_dir}"
        )


def seed_override() -> int | None:
    """``CLIPEDU_SEED`` as an int, or None when it is not set (or empty)."""
    value = os.environ.get("CLIPEDU_SEED", "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        got = os.environ["CLIPEDU_SEED"]
        raise ValueError(f"CLIPEDU_SEED must be a whole number, such as 1; got {got!r}") from None


def setup(seed: int = 0, device: str | None = None, quiet: bool = False) -> Runtime:
    """Pick the device, seed everything, and report the mode and folders.

    ``CLIPEDU_SEED``, when set, replaces ``seed`` (:func:`seed_override`).

    Returns a :class:`Runtime`. On Colab without a GPU it says how to switch one on.
    """
    override = seed_override()
    seed = override if override is not None else seed
    seed_everything(seed)
    chosen = pick_device(device)
    rt = Runtime(
        device=chosen,
        mode=mode(chosen),
        seed=seed,
        colab=in_colab(),
        data_dir=data_dir(),
        runs_dir=runs_dir(),
    )
    if not quiet:
        print(rt.describe())
        if rt.colab and rt.device.type == "cpu":
            print(
                "No GPU in this Colab runtime. For full mode choose Runtime > Change runtime type > "
                "T4 GPU, then run this cell again. (cpu mode runs every notebook on the CPU, each within "
                "about 5 minutes.)"
            )
    return rt


def use_google_drive(subfolder: str = "clipedu-runs") -> Path:
    """Opt-in: keep checkpoints on Google Drive so they survive a Colab restart.

    Mounts Drive (Colab asks for permission) and points :func:`runs_dir` there for this session.
    """
    if not in_colab():
        raise RuntimeError("use_google_drive() only works inside Google Colab")
    from google.colab import drive  # type: ignore[import-not-found]  # exists on Colab only

    drive.mount("/content/drive")
    path = Path("/content/drive/MyDrive") / subfolder
    path.mkdir(parents=True, exist_ok=True)
    os.environ["CLIPEDU_RUNS"] = str(path)
    return path
