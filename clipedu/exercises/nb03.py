"""Exercises of notebook 03 (the Vision Transformer): the pre-LN block, counting its parameters, rank collapse
predicted and measured against depth."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipedu.exercises import Exercise, as_number, prediction
from clipedu.transformer import ResidualBlock, Transformer


# --- 1. parameters of one block ---------------------------------------------------------------------
def _true_block_params(width: int, mlp_ratio: float) -> int:
    heads = 2 if width % 2 == 0 else 1
    return sum(p.numel() for p in ResidualBlock(width, heads, mlp_ratio).parameters())


_BLOCK_CASES = ((128, 4.0), (64, 2.0), (768, 4.0), (10, 3.0))


def _check_block_params(fn) -> str | None:
    for width, ratio in _BLOCK_CASES:
        got = fn(width, ratio)
        expected = _true_block_params(width, ratio)
        if not isinstance(got, (int, float)) or isinstance(got, bool) or got != int(got):
            return f"block_params({width}, {ratio}) should return a whole number, got {got!r}."
        got = int(got)
        if got == expected:
            continue
        hidden = int(width * ratio)
        d = width
        where = f"For width={width}, mlp_ratio={ratio} a block has {expected:,} parameters; yours says {got:,}."
        if got == 4 * d * d + 2 * d * hidden:
            return where + (" That counts the weight matrices only: every Linear also has a bias, and each "
                            "LayerNorm a gain and a bias.")
        if got == expected - 4 * d:
            return where + " The two LayerNorms (ln_1, ln_2) are missing: each has a gain and a bias of width D."
        if got == expected - (d * d + d):
            return where + " The attention's output projection (out_proj, D x D plus a bias) is missing."
        if got == expected - 2 * d * hidden - hidden + 2 * d * d + d:
            return where + " The MLP's hidden width is mlp_ratio * D, not D."
        return where + f" Count ln_1, attn.qkv, attn.out_proj, ln_2, mlp.fc1 and mlp.fc2 (hidden width {hidden})."
    return None


def _ref_block_params(width, mlp_ratio=4.0):
    hidden = int(width * mlp_ratio)
    layer_norms = 2 * (2 * width)  # ln_1 and ln_2: gain and bias each
    attention = (width * 3 * width + 3 * width) + (width * width + width)  # qkv, out_proj
    mlp = (width * hidden + hidden) + (hidden * width + width)  # fc1, fc2
    return layer_norms + attention + mlp


block_params = Exercise(
    name="block_params",
    task="Count the parameters of one pre-LN block of width D with an MLP of hidden width mlp_ratio * D.",
    checker=_check_block_params,
    hint_text="Six pieces: ln_1 and ln_2 (gain + bias, D each), qkv (D x 3D + 3D), out_proj (D x D + D), "
    "fc1 (D x H + H) and fc2 (H x D + D) with H = int(mlp_ratio * D).",
    solution_code="""
    def block_params(width, mlp_ratio=4.0):
        hidden = int(width * mlp_ratio)
        layer_norms = 2 * (2 * width)
        attention = (width * 3 * width + 3 * width) + (width * width + width)
        mlp = (width * hidden + hidden) + (hidden * width + width)
        return layer_norms + attention + mlp
    """,
    reference=lambda: _ref_block_params,
    mistakes=[
        (lambda: lambda w, r=4.0: 4 * w * w + 2 * w * int(w * r), "bias"),
        (lambda: lambda w, r=4.0: _ref_block_params(w, r) - 4 * w, "LayerNorm"),
        (lambda: lambda w, r=4.0: _ref_block_params(w, r) - w * w - w, "out_proj"),
        (lambda: lambda w, r=4.0: _ref_block_params(w, 1.0), "mlp_ratio * D"),
    ],
    success="a block has about 12 D^2 parameters: 4 D^2 in attention, 8 D^2 in the MLP.",
    kind="derive",
)


# --- 2. the pre-LN block's forward pass ---------------------------------------------------------------
def _variants(block: ResidualBlock, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Typical wrong forward passes, to say which one an answer matches."""

    def attn(h):
        return block.attn(h)[0]

    a = x + attn(block.ln_1(x))
    return {
        "post-LN": block.ln_2((y := block.ln_1(x + attn(x))) + block.mlp(y)),
        "no attention residual": (b := attn(block.ln_1(x))) + block.mlp(block.ln_2(b)),
        "no MLP residual": block.mlp(block.ln_2(a)),
        "MLP without ln_2": a + block.mlp(a),
        "ln_1 used twice": a + block.mlp(block.ln_1(a)),
    }


_VARIANT_ADVICE = {
    "post-LN": "your block normalises after adding (post-LN). Pre-LN normalises the input of each "
    "sub-layer and adds the sub-layer's output to the un-normalised stream: x + attn(ln_1(x)).",
    "no attention residual": "the attention output replaces the stream instead of being added to it: "
    "keep the residual, x = x + attn(ln_1(x)).",
    "no MLP residual": "the MLP output replaces the stream instead of being added to it: "
    "keep the residual, x = x + mlp(ln_2(x)).",
    "MLP without ln_2": "the MLP reads the stream without its LayerNorm: use mlp(ln_2(x)).",
    "ln_1 used twice": "the MLP's input goes through ln_1; the block has its own ln_2 for the MLP.",
}


def _check_pre_ln_block(fn) -> str | None:
    torch.manual_seed(3)
    block = ResidualBlock(16, 2).eval()
    with torch.no_grad():  # random LayerNorm gains and biases, so a forgotten LayerNorm shows
        for ln in (block.ln_1, block.ln_2):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.normal_(0, 0.1)
    x = torch.randn(2, 5, 16) * 2 + 0.5  # (B, N, D), deliberately not unit scale
    with torch.no_grad():
        got = fn(block, x)
        expected = block(x)[0]
        if isinstance(got, tuple):
            return ("return only the new tokens (B, N, D), not a tuple (block.attn returns (output, weights): "
                    "unpack it).")
        if not isinstance(got, torch.Tensor):
            return f"the block should return a tensor of shape {tuple(expected.shape)}, got {type(got).__name__}."
        if got.shape != expected.shape:
            return f"the output should have shape {tuple(expected.shape)} (B, N, D), got {tuple(got.shape)}."
        if torch.allclose(got, expected, atol=1e-5):
            return None
        for name, wrong in _variants(block, x).items():
            if torch.allclose(got, wrong, atol=1e-5):
                return _VARIANT_ADVICE[name]
        diff = (got - expected).abs().max().item()
        return (f"the output differs from ResidualBlock's by up to {diff:.3g}. Two lines: "
                "x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x)).")


def _ref_pre_ln_block(block, x):
    attended, _ = block.attn(block.ln_1(x))  # (B, N, D)
    x = x + attended
    return x + block.mlp(block.ln_2(x))


def _wrong(name):
    return lambda: lambda block, x: _variants(block, x)[name]


pre_ln_block = Exercise(
    name="pre_ln_block",
    task="Write the forward pass of a pre-LN block from its parts: ln_1, attn, ln_2, mlp.",
    checker=_check_pre_ln_block,
    hint_text="Normalise, transform, add: x = x + attn(ln_1(x)) (attn returns (output, weights)), "
    "then x = x + mlp(ln_2(x)).",
    solution_code="""
    def my_block(block, x):
        attended, _ = block.attn(block.ln_1(x))  # (B, N, D)
        x = x + attended
        return x + block.mlp(block.ln_2(x))
    """,
    reference=lambda: _ref_pre_ln_block,
    mistakes=[
        (_wrong("post-LN"), "post-LN"),
        (_wrong("no attention residual"), "residual"),
        (_wrong("no MLP residual"), "mlp(ln_2(x))"),
        (_wrong("MLP without ln_2"), "ln_2"),
        (lambda: lambda block, x: block(x), "tuple"),
    ],
    success="that is CLIP's block: the stream x is only ever added to.",
)


# --- 3. a prediction: what happens to the tokens without residuals? ----------------------------------------
predict_no_residual = prediction(
    "predict_no_residual",
    "In a stack of 24 blocks without the residual additions, the mean cosine similarity between different tokens "
    "of one image after the last block will be: 'near 0', 'about 0.5' or 'near 1'?",
    "near 1",
    choices=("near 0", "about 0.5", "near 1"),
    why="Attention replaces each token by a weighted average of all of them; repeated block after block with nothing "
    "carrying each token's own input forward, the averages become one and the same vector (rank collapse).",
    hint="What does attention do to a set of tokens, and what keeps a token's own input around in the usual block?",
)


# --- 4. an experiment: how fast do the tokens collapse? -------------------------------------------------------
_DEPTH = 24


def experiment_setup():
    """The deep stack of section 2 (24 blocks of width 64, 4 heads, the scaled
    initialisation of CLIP's text tower) and 8 'images' of 17
    random tokens, the same on every call (the notebook's random state is left alone): (stack, tokens (8, 17, 64))."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        stack = Transformer(64, _DEPTH, heads=4)
        stack.init_weights()
        tokens = torch.randn(8, 17, 64)
    return stack, tokens


def _similarity(x: torch.Tensor, include_self: bool = False) -> float:
    unit = F.normalize(x, dim=-1)  # (B, N, D)
    cosines = unit @ unit.transpose(1, 2)  # (B, N, N)
    n = x.shape[1]
    if include_self:
        return cosines.mean().item()
    return ((cosines.sum((1, 2)) - n) / (n * (n - 1))).mean().item()


def _run_depths(stack, tokens, depths, residual=False, measure="similarity"):
    out = {}
    with torch.no_grad():
        for depth in depths:
            x = tokens
            for blk in stack.blocks[:depth]:
                if residual:
                    x = blk(x)[0]
                else:
                    x = blk.mlp(blk.ln_2(blk.attn(blk.ln_1(x))[0]))
            if measure == "rms":
                out[depth] = x.pow(2).mean().sqrt().item()
            else:
                out[depth] = _similarity(x, include_self=measure == "with self")
    return out


def _check_depth_experiment(fn) -> str | None:
    stack, tokens = experiment_setup()
    measured = fn(stack, tokens.clone())
    if not isinstance(measured, dict):
        return f"return a dict {{depth: mean cosine between different tokens}}, got {type(measured).__name__}."
    if len(measured) < 3:
        return (f"you measured {len(measured)} depth(s); an experiment needs at least 3 to show a trend "
                "(e.g. 0, 1, 2, 3 and 6).")
    for depth in measured:
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= _DEPTH:
            return f"each key is a number of blocks, a whole number from 0 to {_DEPTH}; got {depth!r}."
    if 0 not in measured:
        return "include the baseline, depth 0: the input tokens themselves, before any block."
    values = {}
    for depth, value in measured.items():
        got = as_number(value)
        if got is None:
            return f"the measurement for depth {depth} should be one number, got {type(value).__name__}."
        values[depth] = got
    stack, tokens = experiment_setup()
    depths = list(measured)

    def matches(reference):
        return all(abs(values[d] - reference[d]) <= 1e-4 for d in depths)

    expected = _run_depths(stack, tokens, depths)
    if matches(expected):
        return None
    if matches(_run_depths(stack, tokens, depths, residual=True)):
        return ("your blocks keep the residual additions (block(x) is pre-LN with residuals); the experiment runs "
                "them without: x = attn(ln_1(x)), then x = mlp(ln_2(x)), each replacing the stream.")
    if matches(_run_depths(stack, tokens, depths, measure="rms")):
        return ("you measured the scale of the stream (its RMS); the experiment measures how alike the tokens are, "
                "the mean cosine between different tokens of an image.")
    if matches(_run_depths(stack, tokens, depths, measure="with self")):
        return ("your mean includes each token's cosine with itself (always 1); average over different tokens only: "
                "(sum of the N x N cosines - N) / (N (N - 1)).")
    d = next(d for d in depths if abs(values[d] - expected[d]) > 1e-4)
    return (f"after {d} block(s) the checker measured a mean cosine of {expected[d]:.4f} between different tokens, you "
            f"reported {values[d]:.4f}: run the first {d} blocks of stack.blocks without residuals, then average the "
            "cosines of the different tokens of each image.")


def _reference_depth_experiment(stack, tokens, depths=(0, 1, 2, 3, 6), **kwargs):
    return _run_depths(stack, tokens, depths, **kwargs)


depth_experiment = Exercise(
    name="depth_experiment",
    task="my_experiment(stack, tokens) -> {depth L: mean cosine between different tokens after the first L blocks "
    "run without residuals}, at least 3 depths, 0 included",
    checker=_check_depth_experiment,
    hint_text="For each depth: x = tokens; for blk in stack.blocks[:depth]: x = blk.attn(blk.ln_1(x))[0]; "
    "x = blk.mlp(blk.ln_2(x)). Then unit = F.normalize(x, dim=-1), cosines = unit @ unit.transpose(1, 2), and "
    "average the off-diagonal entries.",
    solution_code="""
    import torch
    import torch.nn.functional as F


    def my_experiment(stack, tokens):
        similarity = {}
        with torch.no_grad():
            for depth in (0, 1, 2, 3, 6):  # the one thing changed: how many blocks, without residuals
                x = tokens
                for blk in stack.blocks[:depth]:
                    x = blk.attn(blk.ln_1(x))[0]  # each sub-layer's output replaces the stream
                    x = blk.mlp(blk.ln_2(x))
                unit = F.normalize(x, dim=-1)  # (B, N, D)
                cosines = unit @ unit.transpose(1, 2)  # (B, N, N)
                n = x.shape[1]
                similarity[depth] = ((cosines.sum((1, 2)) - n) / (n * (n - 1))).mean().item()  # different tokens
        return similarity
    """,
    reference=lambda: _reference_depth_experiment,
    mistakes=[
        (lambda: lambda stack, tokens: {0: 0.0, 1: 0.5, 2: 0.9, 3: 1.0}, "the checker measured"),
        (lambda: lambda stack, tokens: _reference_depth_experiment(stack, tokens, (0, 6)), "at least 3"),
        (lambda: lambda stack, tokens: _reference_depth_experiment(stack, tokens, (1, 2, 6)), "baseline"),
        (lambda: lambda stack, tokens: _reference_depth_experiment(stack, tokens, residual=True), "residual"),
        (lambda: lambda stack, tokens: _reference_depth_experiment(stack, tokens, measure="rms"), "RMS"),
        (lambda: lambda stack, tokens: _reference_depth_experiment(stack, tokens, measure="with self"), "itself"),
    ],
    success="random tokens start unrelated (cosine near 0); without residuals one block already makes them much "
    "alike, and within about three blocks every token of an image is the same vector.",
    kind="experiment",
)
