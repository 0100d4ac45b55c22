"""Checkpoint files: written atomically, read without running code (notebook 06).

A checkpoint is one dict saved with ``torch.save``: the weights, the optimiser and schedule, the
data order and every random generator, so a run resumes exactly where it stopped
(:meth:`clipedu.loop.Loop.state_dict` says what is in it). Its ``"format"`` entry marks it as
ours; anything else is refused with a clear message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

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


_held = threading.local()  # the run folders this thread holds (run_lock is re-entrant)
WAITING = "waiting for another process that is training"  # what run_lock prints when it has to wait


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold a run folder for the length of a ``with`` block: another process, or another thread,
    asking for the same folder waits until this one lets go.

    Every loop with an ``out_dir`` (:meth:`clipedu.loop.Loop.fit`), :func:`clipedu.runs.train_or_load`
    and :func:`clipedu.architectures.train_architecture` hold it from looking for a finished
    checkpoint to writing the last one, so two notebooks open at once (or the tests on two workers)
    that both need one run train it once: the second waits, then finds the run finished and loads it.
    The lock is an exclusive ``flock`` on a file beside the folder, ``.<name>.lock``, and ends with
    the process that held it, however that ends. A thread may take the same folder again inside
    the block. Nothing is locked where ``fcntl`` is missing (Windows), nor in the processes of a
    data-parallel run (``torchrun`` sets ``WORLD_SIZE``): every rank opens the same run, and a rank
    waiting on the lock while the holder waits on it in a collective would never go on.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or (dist.is_available() and dist.is_initialized()):
        yield  # the processes of one data-parallel run share its folder by design and wait on each other
        return
    folder = Path(folder).resolve()
    held = _held.__dict__.setdefault("folders", set())
    if folder in held:
        yield
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{WAITING} {folder} ...", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        held.add(folder)
        try:
            yield
        finally:
            held.discard(folder)
            fcntl.flock(f, fcntl.LOCK_UN)


def load_checkpoint(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """Read a checkpoint file (or a run folder's) with ``weights_only=True`` (no arbitrary code
    runs) and check its format. ``mmap=True`` maps the file instead of reading it: a tensor's numbers
    are read from disk only when used, so reading the step of a large run costs almost nothing."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise ValueError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - a text file, a truncated download, a pickle of arbitrary code ...
        # ... fail in many ways inside torch.load (UnpicklingError, RuntimeError, EOFError, IndexError)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not a clipedu checkpoint: torch.load cannot read it ({reason[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a clipedu checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return state


def fingerprint(*parts, length: int = 12) -> str:
    """A short hex digest of what a run depends on, to name the folder it is saved in (notebook 17).

    ``parts`` may be modules (their weights), tensors, dataclasses (a config), dicts, lists, tuples,
    strings, numbers, bools and ``None``. The same parts give the same name on any machine; change
    one weight or one setting, or freeze a parameter, and the name changes, so a saved run is never
    reused for another.
    """
    if not isinstance(length, int) or not 1 <= length <= 64:
        raise ValueError(f"length must be an int from 1 to 64 hex digits, got {length!r}")
    digest = hashlib.sha256()
    for part in parts:
        _feed(digest, part)
    return digest.hexdigest()[:length]


def keyed_folder(parent: str | Path, name: str, *parts) -> Path:
    """``parent/<name>-<fingerprint of parts>``: the folder of a run named by everything it depends
    on (its starting weights, its data, its settings), every character of ``name`` that is not a
    letter or digit made a dash. With ``resume="auto"`` the run trains once and then only loads, and
    a changed input never meets a stale run: it gets another folder.
    :func:`clipedu.runs.keyed_run_dir` is this under the runs folder."""
    if not parts:
        raise ValueError("give what the run depends on (its starting model, data, configs) to name its folder by")
    return Path(parent) / f"{safe_name(name)}-{fingerprint(*parts)}"


def safe_name(text: str) -> str:
    """``text`` with every character that is not a letter or digit made a dash: a folder name."""
    return "".join(ch if ch.isalnum() else "-" for ch in text)


def _feed(digest, part) -> None:
    if isinstance(part, nn.Module):
        # A state dict does not say which weights train: the frozen ones' names go in too, so a
        # run with a frozen part is never loaded for the same weights trained whole (or the other
        # way round). A module with every parameter trainable is named by its state dict alone.
        frozen = [name for name, p in part.named_parameters() if not p.requires_grad]
        part = {"state_dict": part.state_dict(), "frozen": frozen} if frozen else part.state_dict()
    if isinstance(part, torch.Tensor):
        t = part.detach().cpu().contiguous().reshape(-1)  # 0-dim tensors too (a logit scale)
        digest.update(f"tensor{t.dtype}{tuple(part.shape)}:".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif dataclasses.is_dataclass(part) and not isinstance(part, type):
        digest.update(f"{type(part).__name__}:".encode())
        _feed(digest, dataclasses.asdict(part))
    elif isinstance(part, dict):
        digest.update(f"dict{len(part)}:".encode())
        for key in sorted(part, key=repr):
            _feed(digest, key)
            _feed(digest, part[key])
    elif isinstance(part, (list, tuple)):
        digest.update(f"{type(part).__name__}{len(part)}:".encode())
        for item in part:
            _feed(digest, item)
    elif part is None or isinstance(part, (str, int, float, bool)):
        digest.update(f"{type(part).__name__}:{part!r};".encode())
    else:
        raise TypeError(f"fingerprint takes modules, tensors, dataclasses, dicts, lists, tuples, strings, numbers, "
                        f"bools and None; got {type(part).__name__}")
