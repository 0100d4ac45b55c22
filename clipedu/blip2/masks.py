"""The Q-Former's three self-attention masks, one per stage-1 objective (notebook 11).

The Q-Former runs its learned queries and a caption through *one* self-attention, laid out as

    [ q_1 ... q_Q | t_1 ... t_T ]        Q query positions, then T text positions

Each objective decides who may look at whom by masking that attention (True = may attend):

- **unimodal** (ITC): queries see queries, text sees text. The two halves never meet, so the query
  outputs describe the image alone and the text outputs the caption alone, and the two can be
  compared like CLIP's two towers.
- **bidirectional** (ITM): everyone sees everyone. The queries read the caption and the picture
  together and can judge whether they match.
- **multimodal causal** (ITG): queries see queries only; text token i sees every query and text
  tokens 1..i. Generating the caption then has to go *through* the queries: the only way
  information from the image reaches the text.

Rows are the positions asking (attention queries), columns the positions answered (keys).
"""

from __future__ import annotations

import torch

OBJECTIVE_MASKS = ("unimodal", "bidirectional", "multimodal_causal")


def _check_sizes(num_queries: int, text_length: int) -> None:
    for name, value in (("num_queries", num_queries), ("text_length", text_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if num_queries + text_length == 0:
        raise ValueError("a mask needs at least one position (num_queries + text_length > 0)")


def unimodal_mask(num_queries: int, text_length: int, device=None) -> torch.Tensor:
    """(Q+T, Q+T) bool for ITC: two diagonal blocks, queries <-> queries and text <-> text."""
    _check_sizes(num_queries, text_length)
    n = num_queries + text_length
    is_query = torch.arange(n, device=device) < num_queries  # (Q+T,)
    return is_query[:, None] == is_query[None, :]


def bidirectional_mask(num_queries: int, text_length: int, device=None) -> torch.Tensor:
    """(Q+T, Q+T) bool for ITM: all True."""
    _check_sizes(num_queries, text_length)
    n = num_queries + text_length
    return torch.ones(n, n, dtype=torch.bool, device=device)


def multimodal_causal_mask(num_queries: int, text_length: int, device=None) -> torch.Tensor:
    """(Q+T, Q+T) bool for ITG: queries see queries; text sees all queries and earlier text."""
    _check_sizes(num_queries, text_length)
    n = num_queries + text_length
    position = torch.arange(n, device=device)
    is_query = position < num_queries
    # A text row may look at any key up to its own position: that covers every query (they come
    # first) and text tokens 1..i. A query row may look only at queries.
    text_rows = position[None, :] <= position[:, None]  # (Q+T, Q+T) lower triangle
    query_rows = is_query[None, :].expand(n, n)
    return torch.where(is_query[:, None], query_rows, text_rows)


def objective_mask(kind: str, num_queries: int, text_length: int, device=None) -> torch.Tensor:
    """The mask of ``kind``: "unimodal" (ITC), "bidirectional" (ITM) or "multimodal_causal" (ITG)."""
    makers = {"unimodal": unimodal_mask, "bidirectional": bidirectional_mask,
              "multimodal_causal": multimodal_causal_mask}
    if kind not in makers:
        raise ValueError(f"unknown mask {kind!r}; expected one of {OBJECTIVE_MASKS}")
    return makers[kind](num_queries, text_length, device)


def with_text_padding(mask: torch.Tensor, text_is_real: torch.Tensor) -> torch.Tensor:
    """Add the padding: (Q+T, Q+T) objective mask and (B, T) real-token flags -> (B, 1, Q+T, Q+T).

    No position may attend to a padding token (a key); the padding rows themselves still attend
    to something (their outputs are simply never used), so no row of the softmax is empty.
    The extra axis of size 1 broadcasts over the attention heads.
    """
    b, t = text_is_real.shape
    n = mask.shape[-1]
    q = n - t
    if q < 0:
        raise ValueError(f"a mask over {n} positions cannot hold {t} text tokens")
    keys = torch.cat([text_is_real.new_ones(b, q), text_is_real.bool()], dim=1)  # (B, Q+T)
    return mask[None, None] & keys[:, None, None, :]  # (B, 1, Q+T, Q+T)
