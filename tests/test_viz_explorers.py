"""Every explorer keeps one convention: it displays itself, once, as its live widget together with
a plain PNG of its first state (what a viewer without widgets shows), and returns the widget."""

import base64
import io

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from clipedu import CLIP, preset  # noqa: E402
from clipedu.data import ShapesWorld  # noqa: E402
from clipedu.text import TextTransformer  # noqa: E402
from clipedu.tokenizer import WordTokenizer  # noqa: E402
from clipedu.viz import attention, contrastive, explorers, geometry, interpret, patches, text  # noqa: E402

CAPTION = "a small red circle in the top left"


def _tokenizer():
    return WordTokenizer.build([CAPTION, "the blue square at the bottom"], context_length=12)


def _clip(tokenizer):
    cfg = preset("tiny", vision_width=32, vision_layers=2, vision_heads=2, text_width=32, text_layers=1,
                 text_heads=2, embed_dim=16, vocab_size=tokenizer.vocab_size, context_length=12,
                 eot_token_id=tokenizer.eot_id, pad_token_id=tokenizer.pad_id)
    return CLIP(cfg).eval()


def _text_model(tokenizer):
    cfg = preset("tiny", text_width=32, text_layers=2, text_heads=2, vocab_size=tokenizer.vocab_size,
                 context_length=12).text
    return TextTransformer(cfg, embed_dim=16).eval()


def _embeds(n=6, d=8):
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.3 * torch.randn(n, d, generator=gen), dim=-1)
    return img, txt


def _head_width():
    return attention.head_width_widget(n_keys=8, default=64)


def _temperature():
    img, txt = _embeds()
    return contrastive.temperature_explorer(img @ txt.T, [f"caption {j}" for j in range(6)])


def _similarity():
    img, txt = _embeds()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    return contrastive.similarity_explorer(images, [f"caption {j}" for j in range(6)], img, txt, k=3)


def _projection():
    points = {"pca": torch.randn(20, 2), "umap": torch.randn(20, 2)}
    labels = {"colour": torch.arange(20) % 3}
    return geometry.projection_explorer(points, labels, {"colour": ["r", "g", "b"]})


def _attention_maps():
    tokenizer = _tokenizer()
    images = ShapesWorld(seed=0).generate(2, "test").images
    return interpret.attention_explorer(_clip(tokenizer), images, tokenizer, [CAPTION], method="relevancy")


def _patch_size():
    return patches.patch_size_widget(torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), default=16)


def _causal():
    tokenizer = _tokenizer()
    return text.causal_widget(_text_model(tokenizer), tokenizer, CAPTION, ["blue", "square"])


EXPLORERS = {"head width": _head_width, "temperature": _temperature, "similarity": _similarity,
             "projection": _projection, "attention": _attention_maps, "patch size": _patch_size,
             "causal mask": _causal}


@pytest.mark.parametrize("build", EXPLORERS.values(), ids=EXPLORERS.keys())
def test_explorer_displays_widget_and_static_figure_once_and_returns_the_widget(build, monkeypatch):
    shown = []
    monkeypatch.setattr(explorers, "display", lambda *objs, **kw: shown.append((objs, kw)))
    plt.close("all")
    box = build()
    assert isinstance(box, widgets.Box)
    assert len(shown) == 1, "an explorer displays itself exactly once"
    (bundle,), kwargs = shown[0]
    assert kwargs["raw"] is True and "explorer" in kwargs["metadata"][explorers.EXPLORER]
    # the live widget: a front-end with widgets draws this one, the returned one
    assert bundle[explorers.WIDGET_VIEW]["model_id"] == box.model_id
    # the fallback: a real picture of the first state, and no "VBox(children=...)"
    picture = Image.open(io.BytesIO(base64.b64decode(bundle["image/png"])))
    width, height = picture.size
    assert width > 100 and height > 50
    lo, hi = picture.convert("L").getextrema()
    assert hi - lo > 50  # drawn, not blank
    assert "VBox(" not in bundle["text/plain"] and "explorer" in bundle["text/plain"]
    plt.close("all")


def test_the_static_figure_is_closed_once_rendered():
    plt.close("all")
    box = widgets.VBox([])
    fig = plt.figure()
    bundle = explorers.explorer_bundle(box, fig, "demo explorer")
    assert plt.get_fignums() == []  # never shown a second time inline
    assert base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="expected the matplotlib figure of the demo explorer's first state"):
        explorers.explorer_bundle(box, "not a figure", "demo explorer")
