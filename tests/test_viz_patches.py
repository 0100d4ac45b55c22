"""The pure functions behind notebooks 00 and 01's figures: what they compute is what is drawn."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from clipedu.data import ShapesWorld  # noqa: E402
from clipedu.viz import tour  # noqa: E402


# --- notebook 00: the course map and the held-out grid ----------------------------------------------
def test_pipeline_map_tags_every_notebook_and_connects_known_boxes():
    boxes, arrows = tour.pipeline_layout()
    keys = [b.key for b in boxes]
    assert len(keys) == len(set(keys))
    text = " ".join(f"{b.notebook} {b.label}" for b in boxes)  # a tag, or named in a label ("attention: 02")
    assert all(f"{i:02d}" in text for i in range(1, 13))
    assert all(a in keys and b in keys for a, b in arrows)
    # Both towers lead to the similarity matrix, and it to the loss.
    assert ("img_emb", "sim") in arrows and ("txt_emb", "sim") in arrows and ("sim", "loss") in arrows


def test_pipeline_boxes_do_not_overlap():
    boxes, _ = tour.pipeline_layout()
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y
            assert apart, f"{a.key} overlaps {b.key}"


def test_arrows_start_and_end_on_box_edges():
    box = tour.Box("b", "", "01", 0.0, 0.0, w=2.0, h=1.0)
    assert tour._edge_point(box, (10.0, 0.5)) == (2.0, 0.5)
    assert tour._edge_point(box, (1.0, -5.0)) == (1.0, 0.0)


def test_heldout_matrix_marks_one_pair_per_colour_and_shape_by_default():
    held = tour.heldout_matrix(ShapesWorld())
    assert held.shape == (8, 8) and held.dtype == torch.bool
    assert held.sum(0).tolist() == [1] * 8 and held.sum(1).tolist() == [1] * 8
    assert held[0, ShapesWorld.SHAPES.index("triangle")]  # red triangle


def test_heldout_matrix_follows_a_custom_holdout():
    held = tour.heldout_matrix(ShapesWorld(holdout=[("blue", "star")]))
    assert held.sum() == 1 and held[ShapesWorld.COLOURS.index("blue"), ShapesWorld.SHAPES.index("star")]


def test_pair_images_draw_each_pair_in_its_colour():
    world = ShapesWorld()
    images = tour.pair_images(world, size=24)
    assert images.shape == (8, 8, 3, 24, 24) and images.dtype == torch.uint8
    centre = images[:, :, :, 12, 12].float()  # (colours, shapes, 3); the ring's hole aside, all filled
    for c, colour in enumerate(world.COLOURS):
        rgb = torch.tensor(world.RGB[colour], dtype=torch.float)
        for s, shape in enumerate(world.SHAPES):
            if shape != "ring":
                assert (centre[c, s] - rgb).abs().max() <= 1, (colour, shape)
    assert images[:, :, :, 0, 0].max() <= 21  # the background corner stays dark


@pytest.mark.parametrize("plot", ["pipeline", "pairs"])
def test_plots_draw(plot):
    fig = tour.plot_pipeline() if plot == "pipeline" else tour.plot_pairs(ShapesWorld())
    assert fig.axes
    plt.close(fig)
