"""Checkpoint files: written atomically, read without running code (notebook 06).

A checkpoint is one dict saved with ``torch.save``: the weights, the optimiser and schedule, the
data order and every random generator, so a run resumes exactly where it stopped
(:meth:`clipedu.loop.Loop.state_dict` says what is in it). Its ``"format"`` entry marks it as
ours; anything else is refused with a clear message.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT_FORMAT = "clipedu-checkpoint-1"
CHECKPOINT_NAME = "checkpoint.pt"  # the file's name inside a run folder


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write atomically: to a temporary file in the same folder, then rename over the old one, so
    an interruption mid-write never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint file (or a run folder's) with ``weights_only=True`` (no arbitrary code
    runs) and check its format."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise ValueError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a text file, a truncated download, a pickle of arbitrary code ...
        # ... fail in many ways inside torch.load (UnpicklingError, RuntimeError, EOFError, IndexError)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not a clipedu checkpoint: torch.load cannot read it ({reason[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a clipedu checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return state
