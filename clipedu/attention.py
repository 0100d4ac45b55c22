"""Attention, written out (notebook 02).

Each token asks a question (its query q), every token offers an answer key k and a value v; a token's
output is the average of the values, weighted by how well its query matches each key:

    attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V

Dividing by sqrt(d) keeps the dot products at unit scale whatever the head width d; without it the
softmax saturates and its gradients vanish. A mask removes some keys from a query's view (the
future, in a causal text model; padding). Multi-head attention runs several of these in parallel on
slices of the width, so different heads can look for different things.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(n: int, device=None) -> torch.Tensor:
    """(n, n) boolean mask, True where query i may look at key j, i.e. j <= i."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def prefix_mask(n_prefix: int, n: int, device=None) -> torch.Tensor:
    """(n, n) boolean mask of a prefix-LM: the first ``n_prefix`` tokens see each other both ways,
    and every token sees the whole prefix; after it, token i sees tokens 0..i (causal).

    ``prefix_mask(0, n)`` is :func:`causal_mask`; ``prefix_mask(n, n)`` lets every token see every token.
    """
    if not 0 <= n_prefix <= n:
        raise ValueError(f"the prefix must hold between 0 and n={n} tokens, got {n_prefix}")
    mask = causal_mask(n, device)
    mask[:, :n_prefix] = True
    return mask


def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, 1, 1, L) boolean mask, True for keys that are real tokens; broadcasts over heads and queries."""
    return (tokens != pad_id)[:, None, None, :]


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v, step by step. Returns (output, weights).

    q: (..., Nq, d), k and v: (..., Nk, d). ``mask`` broadcasts to (..., Nq, Nk): boolean (True =
    may attend) or float (added to the scores, -inf removes a key), the convention of
    ``F.scaled_dot_product_attention``. weights: (..., Nq, Nk), each row sums to 1.
    """
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (..., Nq, Nk)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    weights = scores.softmax(dim=-1)  # (..., Nq, Nk)
    return weights @ v, weights  # (..., Nq, d)


class MultiHeadAttention(nn.Module):
    """Self-attention with ``heads`` heads of width ``width // heads``.

    One linear layer makes queries, keys and values for all heads at once (``qkv``); ``out_proj``
    mixes the heads' outputs. With ``need_weights=False`` the fused kernel
    ``F.scaled_dot_product_attention`` does the work; with ``need_weights=True`` the explicit
    :func:`scaled_dot_product_attention` runs and its weights are returned. Both give the same output.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.width, self.heads, self.head_dim = width, heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def split_heads(
        self, x: torch.Tensor, rows: slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, D) -> q, k, v, each (B, H, N, D/H); with ``rows``, q only for those rows (B, H, R, D/H)."""
        b, n, d = x.shape
        if rows is None:
            qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim)  # (B, N, 3, H, D/H)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, D/H)
            return q, k, v
        # The same layer's weights, cut in two: the query rows of W for the chosen tokens only.
        (w_q, w_kv), (b_q, b_kv) = self.qkv.weight.split([d, 2 * d]), self.qkv.bias.split([d, 2 * d])
        picked = x[:, rows]  # (B, R, D)
        q = F.linear(picked, w_q, b_q).view(b, picked.shape[1], self.heads, self.head_dim).transpose(1, 2)
        k, v = F.linear(x, w_kv, b_kv).view(b, n, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        rows: slice | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, N, D). Returns (output (B, N, D), weights (B, H, N, N) or None).

        ``rows`` (a slice of the N tokens): compute only those tokens' outputs, (B, R, D), from keys
        and values of all N, the same numbers as the full output's rows. A layer whose other outputs
        nobody reads (the last one, for a loss that reads some tokens) saves their work this way.
        ``mask`` is still the full (..., N, N) mask."""
        b, n, d = x.shape
        if d != self.width:
            raise ValueError(f"expected tokens of width {self.width}, got {d}")
        if rows is not None and (not isinstance(rows, slice) or rows.step not in (None, 1)):
            raise ValueError(f"rows must be a slice with step 1, such as slice(0, 8), got {rows!r}")
        q, k, v = self.split_heads(x, rows)
        if is_causal and (need_weights or mask is not None or rows is not None):
            # The explicit path (and the fused kernel, given a mask or fewer queries) needs the causal mask spelled out.
            causal = causal_mask(n, x.device)
            mask, is_causal = (causal if mask is None else _combine(mask, causal)), False
        if rows is not None and mask is not None:
            mask = mask[..., rows, :] if mask.shape[-2] == n else mask  # a (..., 1, N) mask broadcasts as it is
        n = q.shape[2]
        if need_weights:
            out, weights = scaled_dot_product_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
            weights = None
        out = out.transpose(1, 2).reshape(b, n, d)  # (B, N, H, D/H) -> (B, N, D)
        return self.out_proj(out), weights


class CrossAttention(nn.Module):
    """Multi-head attention from ``x`` (the queries) to ``context`` (another sequence's tokens).

    Queries come from ``x`` (width ``width``); keys and values from ``context``, whose width
    (``context_width``: an encoder's, a frozen image tower's) may differ. No mask: every query sees
    every context token. The Q-Former's queries read the image this way (notebook 11), and so does an
    encoder-decoder's decoder read the encoder's outputs (notebook 16).
    """

    def __init__(self, width: int, context_width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.width, self.heads, self.head_dim = width, heads, width // heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_width, 2 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, Q, D), context: (B, N, C) -> (B, Q, D), and weights (B, H, Q, N) when asked for."""
        b, nq, d = x.shape
        n = context.shape[1]
        q = self.q(x).view(b, nq, self.heads, self.head_dim).transpose(1, 2)  # (B, H, Q, D/H)
        k, v = self.kv(context).view(b, n, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if need_weights:
            out, weights = scaled_dot_product_attention(q, k, v)  # (B, H, Q, D/H), (B, H, Q, N)
        else:
            out, weights = F.scaled_dot_product_attention(q, k, v), None
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, d)), weights


def _combine(mask: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
    """Intersect a user mask with the causal mask (both boolean, or float and boolean)."""
    if mask.dtype == torch.bool:
        return mask & causal
    return mask.masked_fill(~causal, float("-inf"))
