"""What notebook 02 measures and draws about attention: weights, masks, the scale, the cost.

Pure functions compute the numbers (``softmax_saturation``, ``one_query_weights``,
``attention_flops``, ``time_attention``); the plots and the head-width widget only draw them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from clipedu.attention import scaled_dot_product_attention
from clipedu.viz.explorers import show


# --- why divide by sqrt(d) --------------------------------------------------------------------------
def softmax_saturation(
    dims: Sequence[int], n_keys: int = 16, samples: int = 1000, seed: int = 0
) -> dict[str, list[float]]:
    """How peaked the attention weights of random queries and keys get as the head width d grows.

    For each d: ``samples`` queries, each against ``n_keys`` keys, entries drawn from N(0, 1) (what
    a layer sees at unit-scale activations). Returns, with and without dividing by sqrt(d), the
    mean largest weight (1 = all weight on one key), the mean entropy of a row in nats (ln(n_keys)
    = spread evenly, 0 = one-hot), and the mean Frobenius norm of the softmax's Jacobian (how much
    gradient flows back to the scores; 0 when saturated). Also the standard deviation of the raw
    dot products, which grows like sqrt(d).
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[float]] = {"dims": list(dims), "score_std": []}
    for key in ("max_weight", "entropy", "jacobian"):
        out[f"{key}_scaled"], out[f"{key}_unscaled"] = [], []
    for d in dims:
        q = torch.randn(samples, 1, d, generator=gen)  # (S, 1, d)
        k = torch.randn(samples, n_keys, d, generator=gen)  # (S, K, d)
        scores = (q @ k.transpose(1, 2)).squeeze(1)  # (S, K)
        out["score_std"].append(scores.std().item())
        for label, s in (("unscaled", scores), ("scaled", scores / math.sqrt(d))):
            p = s.softmax(dim=-1)  # (S, K)
            out[f"max_weight_{label}"].append(p.max(dim=-1).values.mean().item())
            entropy = -(p * p.clamp_min(1e-30).log()).sum(dim=-1)
            out[f"entropy_{label}"].append(entropy.mean().item())
            jac = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # (S, K, K) d softmax / d scores
            out[f"jacobian_{label}"].append(jac.flatten(1).norm(dim=-1).mean().item())
    return out


def one_query_weights(d: int, n_keys: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One random query's weights over ``n_keys`` random keys of width d: (scaled, unscaled), each (K,)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(d, generator=gen, dtype=torch.float64)
    k = torch.randn(n_keys, d, generator=gen, dtype=torch.float64)
    scores = k @ q  # (K,)
    return (scores / math.sqrt(d)).softmax(-1).float(), scores.softmax(-1).float()


# --- cost ---------------------------------------------------------------------------------------------
def attention_flops(n: int, head_dim: int, heads: int = 1, batch: int = 1) -> int:
    """Floating-point operations of softmax(q k^T) v for n queries and n keys: 4 n^2 d per head.

    q k^T is n x n dot products of length d (2 n^2 d multiply-adds); weights @ v the same again.
    The softmax's O(n^2) is left out: it is small next to these when d is tens or more.
    """
    return 4 * n * n * head_dim * heads * batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _attention_paths(q, k, v) -> dict:
    return {"explicit": lambda: scaled_dot_product_attention(q, k, v)[0],
            "fused": lambda: F.scaled_dot_product_attention(q, k, v)}


@torch.no_grad()
def time_attention(
    lengths: Sequence[int],
    head_dim: int = 64,
    heads: int = 8,
    batch: int = 1,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    min_time: float = 0.05,
    cpu_threads: int | None = None,
) -> list[dict]:
    """Time attention over ``lengths`` tokens, explicit (the n x n weights in memory) and fused.

    "explicit" is :func:`clipedu.attention.scaled_dot_product_attention`, "fused" is
    ``F.scaled_dot_product_attention``. Each is run once to warm up, then at least ``repeats``
    times and until ``min_time`` seconds have passed (at most 100 runs); the fastest run counts,
    the one least disturbed by other work on the machine. Each row: ``n``,
    ``flops``, ``weights_bytes`` (the size of the explicit path's weight matrix), ``explicit`` and
    ``fused`` in seconds, and on CUDA the peak extra memory of each path (``*_peak_bytes``).

    ``cpu_threads``: on a CPU, time with this many threads (then restore the setting). One thread
    is the steadiest measure on a shared machine: several threads must wait for each other, and
    one of them being paused by other work stalls every run.
    """
    device = torch.device(device)
    threads = torch.get_num_threads()
    if cpu_threads is not None and device.type == "cpu":
        torch.set_num_threads(cpu_threads)
    try:
        return _time_attention(lengths, head_dim, heads, batch, repeats, device, dtype, min_time)
    finally:
        torch.set_num_threads(threads)


def _time_attention(lengths, head_dim, heads, batch, repeats, device, dtype, min_time) -> list[dict]:
    element = torch.tensor([], dtype=dtype).element_size()
    rows = []
    for n in lengths:
        q, k, v = torch.randn(3, batch, heads, n, head_dim, device=device, dtype=dtype).unbind(0)
        row = {"n": int(n), "flops": attention_flops(n, head_dim, heads, batch),
               "weights_bytes": batch * heads * n * n * element}
        for name, run in _attention_paths(q, k, v).items():
            run()
            _sync(device)
            best, runs, began = float("inf"), 0, time.perf_counter()
            while runs < repeats or (time.perf_counter() - began < min_time and runs < 100):
                start = time.perf_counter()
                run()
                _sync(device)
                best = min(best, time.perf_counter() - start)
                runs += 1
            row[name] = best
            if device.type == "cuda":
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                run()
                _sync(device)
                row[f"{name}_peak_bytes"] = torch.cuda.max_memory_allocated(device) - base
        rows.append(row)
        del q, k, v
    return rows


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The slope of a least-squares line through (log x, log y): 2 means y grows like x^2."""
    lx = torch.tensor([math.log(x) for x in xs], dtype=torch.float64)
    ly = torch.tensor([math.log(y) for y in ys], dtype=torch.float64)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())


# --- plots ---------------------------------------------------------------------------------------------
def plot_matrix(matrix, ax=None, rows: Sequence[str] | None = None, cols: Sequence[str] | None = None,
                title: str = "", fmt: str = ".2f", cmap: str = "Blues", vmin=None, vmax=None):
    """A small matrix as a heatmap with its values written in (attention weights, masks, scores).

    Boolean masks show as 1 (may attend) and 0; ``fmt="d"`` writes whole numbers.
    """
    m = torch.as_tensor(matrix).detach().float().cpu()
    if ax is None:
        _, ax = plt.subplots(figsize=(0.55 * m.shape[1] + 1.2, 0.5 * m.shape[0] + 0.9))
    ax.imshow(m.numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
    lo, hi = (m.min().item(), m.max().item()) if vmin is None or vmax is None else (vmin, vmax)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            value = m[i, j].item()
            if value == float("-inf"):
                text = "-inf"
            else:
                text = str(int(value)) if fmt == "d" else format(value, fmt)
            dark = hi > lo and (value - lo) / (hi - lo) > 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(m.shape[1]), cols if cols is not None else range(m.shape[1]), fontsize=8)
    ax.set_yticks(range(m.shape[0]), rows if rows is not None else range(m.shape[0]), fontsize=8)
    ax.set_xlabel("key", fontsize=8)
    ax.set_ylabel("query", fontsize=8)
    ax.set_title(title, fontsize=9)
    return ax.figure


def plot_saturation(result: dict, n_keys: int = 16):
    """Three panels against the head width d: largest weight, entropy, gradient through the softmax."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    dims = result["dims"]
    panels = (("max_weight", "mean largest weight", (0, 1.02)),
              ("entropy", "mean entropy of a row (nats)", (0, math.log(n_keys) * 1.05)),
              ("jacobian", "size of d softmax / d scores", None))
    for ax, (key, label, ylim) in zip(axes, panels):
        ax.plot(dims, result[f"{key}_scaled"], "o-", label="q.k / sqrt(d)")
        ax.plot(dims, result[f"{key}_unscaled"], "s--", label="q.k (no scale)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("head width d")
        ax.set_title(label, fontsize=10)
        if ylim:
            ax.set_ylim(*ylim)
    axes[1].axhline(math.log(n_keys), color="grey", lw=0.8, ls=":")
    axes[1].text(dims[0], math.log(n_keys) * 0.97, f"ln {n_keys}: spread evenly", fontsize=7, va="top")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"softmax over {n_keys} random keys, as the head width grows", fontsize=10)
    fig.tight_layout()
    return fig


def plot_attention_cost(rows: Sequence[dict], device_name: str = ""):
    """Measured time of both paths against n (log-log, with an n^2 guide), and FLOPs and memory."""
    ns = [r["n"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    ax = axes[0]
    ax.plot(ns, [r["explicit"] * 1e3 for r in rows], "o-", label="explicit (weights in memory)")
    ax.plot(ns, [r["fused"] * 1e3 for r in rows], "s-", label="fused F.scaled_dot_product_attention")
    guide = [rows[-1]["explicit"] * 1e3 * (n / ns[-1]) ** 2 for n in ns]
    ax.plot(ns, guide, ":", color="grey", label="grows like n^2")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length n")
    ax.set_ylabel("milliseconds (fastest run)")
    ax.set_title(f"measured time{' on ' + device_name if device_name else ''}", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(ns, [r["flops"] / 1e9 for r in rows], "o-", color="C2", label="GFLOPs: 4 n^2 d per head")
    ax.plot(ns, [r["weights_bytes"] / 2**20 for r in rows], "s-", color="C3", label="MiB: the n x n weights")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length n")
    ax.set_title("work and memory of the explicit path", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def head_width_widget(n_keys: int = 12, default: int = 64):
    """A slider over the head width d: one query's weights over random keys, with and without the scale."""
    dims = [2**i for i in range(1, 11)]
    slider = widgets.SelectionSlider(options=dims, value=default if default in dims else 64,
                                     description="head width d", continuous_update=False)

    def figure(d):
        scaled, unscaled = one_query_weights(d, n_keys)
        fig, axes = plt.subplots(1, 2, figsize=(8, 2.4), sharey=True)
        for ax, w, title in ((axes[0], scaled, "softmax(q.k / sqrt(d))"), (axes[1], unscaled, "softmax(q.k)")):
            ax.bar(range(n_keys), w.numpy(), color="C0" if ax is axes[0] else "C1")
            ax.set_ylim(0, 1)
            ax.set_xlabel("key")
            ax.set_title(f"{title}: largest weight {w.max():.2f}", fontsize=9)
        axes[0].set_ylabel("attention weight")
        fig.tight_layout()
        return fig

    def draw(d):
        figure(d)
        plt.show()

    out = widgets.interactive_output(draw, {"d": slider})
    box = widgets.VBox([slider, out])
    return show(box, figure(slider.value), "head width explorer")
