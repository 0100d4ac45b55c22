"""The one image-to-screen conversion, and the grids built on it."""

import numpy as np
import pytest
import torch

from clipedu.data import ShapesWorld
from clipedu.viz.images import gallery, show_examples, to_display


def test_to_display_gives_imshow_an_image_in_0_1_whatever_comes_in():
    uint8 = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    shown = to_display(uint8)
    assert shown.shape == (4, 5, 3) and shown.dtype == np.float32
    np.testing.assert_allclose(shown, uint8.permute(1, 2, 0).numpy() / 255.0)
    grey = to_display(torch.full((1, 2, 2), 255, dtype=torch.uint8))
    assert grey.shape == (2, 2) and (grey == 1.0).all()  # one channel: a 2-d array for a grey colour map
    normalised = to_display(torch.linspace(-2.0, 2.0, 12).view(3, 2, 2))  # as to_float gives it
    assert normalised.min() == pytest.approx(0.0) and normalised.max() == pytest.approx(1.0, abs=1e-6)
    already = np.full((2, 2, 3), 0.25, dtype=np.float32)
    assert (to_display(already) == 0.25).all()  # floats in [0, 1] are kept as they are
    with pytest.raises(ValueError, match=r"one image \(C, H, W\)"):
        to_display(torch.zeros(2, 3, 4, 4))


def test_show_examples_titles_each_image_with_its_caption():
    data = ShapesWorld(seed=0).generate(5, "train")
    fig = show_examples(data, n=5, cols=3)
    titled = [ax.get_title().replace("\n", " ") for ax in fig.axes if ax.get_title()]
    assert titled == [c[0] for c in data.captions]
    with pytest.raises(ValueError, match="uint8"):
        gallery(torch.zeros(2, 3, 4, 4))
