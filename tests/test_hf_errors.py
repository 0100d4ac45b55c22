"""clipedu.hf names the one case where transformers is installed but cannot build a model."""

import re

import pytest
import torch

from clipedu import CLIP, preset
from clipedu.pretrained import to_hf

transformers = pytest.importorskip("transformers")


def test_a_transformers_too_new_for_torch_is_named(monkeypatch):
    monkeypatch.setattr(transformers.utils, "is_torch_available", lambda: False)
    expected = rf"transformers \S+ cannot use torch {re.escape(torch.__version__)} .*upgrade torch"
    with pytest.raises(ImportError, match=expected):
        to_hf(CLIP(preset("tiny")))
