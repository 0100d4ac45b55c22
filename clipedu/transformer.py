"""The pre-LN transformer block and the stack of blocks (notebooks 02-03).

    x = x + attn(ln_1(x))     # tokens exchange information
    x = x + mlp(ln_2(x))      # each token is transformed on its own

Normalising *before* each sub-layer (pre-LN, as CLIP and GPT-2 do) leaves the residual stream
untouched from input to output, which keeps deep stacks trainable without a learning-rate warm-up
as delicate as post-LN needs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from clipedu.attention import CrossAttention, MultiHeadAttention


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the fast GELU approximation OpenAI's released CLIP models were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    """Width -> mlp_ratio * width -> width, with a GELU in between."""

    def __init__(self, width: int, mlp_ratio: float = 4.0, quick_gelu: bool = False):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.act = QuickGELU() if quick_gelu else nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ResidualBlock(nn.Module):
    """One pre-LN transformer block: attention then MLP, each added to the residual stream."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, quick_gelu)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, N, D) -> (B, N, D), and the attention weights (B, H, N, N) when asked for."""
        attended, weights = self.attn(self.ln_1(x), mask=mask, is_causal=is_causal, need_weights=need_weights)
        x = x + attended
        x = x + self.mlp(self.ln_2(x))
        return x, weights


class DecoderBlock(nn.Module):
    """One pre-LN block of an encoder-decoder's decoder (Vaswani et al. 2017, pre-LN as above).

        x = x + self_attn(ln_1(x))            # causal: token i sees targets 0..i
        x = x + cross_attn(ln_2(x), memory)   # every target token reads every encoder output
        x = x + mlp(ln_3(x))

    ``memory`` is the encoder's *final* output, the same tensor for every decoder block; each block
    has its own cross-attention weights to read it with.
    """

    def __init__(self, width: int, heads: int, memory_width: int | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.cross_attn = CrossAttention(width, memory_width or width, heads)
        self.ln_3 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x: (B, T, D), memory: (B, S, M) -> (B, T, D), self-attention weights (B, H, T, T) and
        cross-attention weights (B, H, T, S) when asked for."""
        attended, self_weights = self.attn(self.ln_1(x), is_causal=True, need_weights=need_weights)
        x = x + attended
        read, cross_weights = self.cross_attn(self.ln_2(x), memory, need_weights=need_weights)
        x = x + read
        x = x + self.mlp(self.ln_3(x))
        return x, self_weights, cross_weights


class TransformerOutput(NamedTuple):
    last: torch.Tensor  # (B, N, D) output of the last block
    hidden_states: list[torch.Tensor]  # layers + 1 tensors: the input, then each block's output
    attentions: list[torch.Tensor]  # one (B, H, N, N) tensor per block


class Transformer(nn.Module):
    """A stack of :class:`ResidualBlock`."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False):
        super().__init__()
        self.width, self.layers = width, layers
        self.blocks = nn.ModuleList(
            ResidualBlock(width, heads, mlp_ratio, quick_gelu) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        for block in self.blocks:
            x, _ = block(x, mask=mask, is_causal=is_causal)
        return x

    def forward_all(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> TransformerOutput:
        """Like ``forward``, keeping every layer's hidden states and attention weights (for plots)."""
        hidden, attentions = [x], []
        for block in self.blocks:
            x, weights = block(x, mask=mask, is_causal=is_causal, need_weights=True)
            hidden.append(x)
            attentions.append(weights)
        return TransformerOutput(x, hidden, attentions)

    def init_weights(self) -> None:
        """The initialisation of CLIP's text transformer: output projections scaled down by the depth.

        Each block adds its output to the residual stream, so with L blocks the stream's variance
        grows with 2L additions; scaling the projections that write into it by 1/sqrt(2L) (GPT-2's
        rule) keeps the stream nearer unit scale at initialisation. OpenAI's code applies it to the
        text transformer only and leaves its image transformer at PyTorch's defaults; the course
        uses it in both towers.
        """
        attn_std = self.width**-0.5
        proj_std = self.width**-0.5 * (2 * self.layers) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=attn_std)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.fc1.weight, std=fc_std)
            nn.init.normal_(block.mlp.fc2.weight, std=proj_std)
