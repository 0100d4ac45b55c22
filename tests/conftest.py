import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_config():
    """A very small CLIP config so model tests run in milliseconds."""
    from clipedu import preset

    return preset(
        "tiny", vision_width=32, vision_layers=2, vision_heads=2, text_width=32, text_layers=2,
        text_heads=2, embed_dim=16, vocab_size=50, context_length=12,
    )
