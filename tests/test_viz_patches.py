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


# --- notebook 01: patch grids, patch sequences, position embeddings ---------------------------------
from clipedu.viz import patches as vp  # noqa: E402


@pytest.mark.parametrize("size,p,expected", [(224, 32, (7, 49, 3072, 50)), (32, 8, (4, 16, 192, 17)),
                                             (224, 14, (16, 256, 588, 257))])
def test_patch_grid_info(size, p, expected):
    info = vp.patch_grid_info(size, p)
    assert (info["grid"], info["num_patches"], info["patch_dim"], info["sequence_length"]) == expected


def test_patch_grid_info_rejects_a_size_that_does_not_tile():
    with pytest.raises(ValueError, match="not a multiple of the patch size 30"):
        vp.patch_grid_info(224, 30)


def test_patch_sizes_all_tile_the_image():
    sizes = vp.patch_sizes(224)
    assert sizes[0] == 4 and sizes[-1] == 112 and 32 in sizes and 14 in sizes
    assert all(224 % p == 0 for p in sizes)


def test_patch_sequence_cuts_row_by_row():
    image = torch.arange(3 * 8 * 8).reshape(3, 8, 8)
    seq = vp.patch_sequence(image, 4)  # (4, 3, 4, 4)
    assert seq.shape == (4, 3, 4, 4)
    torch.testing.assert_close(seq[1], image[:, :4, 4:])  # second patch: top right
    torch.testing.assert_close(seq[2], image[:, 4:, :4])  # third: bottom left


def test_position_similarity_is_a_symmetric_cosine_grid_without_cls():
    g, d = 3, 16
    pos = torch.randn(g * g + 1, d)
    sim = vp.position_similarity(pos, g)
    assert sim.shape == (g, g, g, g)
    flat = sim.reshape(g * g, g * g)
    torch.testing.assert_close(flat.diagonal(), torch.ones(g * g))
    torch.testing.assert_close(flat, flat.T)
    # Row 0 of the CLS-free embeddings is position (0, 0): the CLS row was dropped.
    torch.testing.assert_close(sim[0, 0, 0, 1], torch.nn.functional.cosine_similarity(pos[1], pos[2], dim=0))
    with pytest.raises(ValueError, match="4x4 grid"):
        vp.position_similarity(pos, 4)


def test_neighbour_contrast_sees_smooth_embeddings():
    g = 4
    rows, cols = torch.arange(g).repeat_interleave(g).float(), torch.arange(g).repeat(g).float()
    # Embeddings that vary smoothly with the position: a sine and a cosine of row and column.
    smooth = torch.stack([torch.sin(rows), torch.cos(rows), torch.sin(cols), torch.cos(cols)], dim=1)
    near, far = vp.neighbour_contrast(vp.position_similarity(smooth, g))
    assert near > far + 0.2
    near, far = vp.neighbour_contrast(vp.position_similarity(torch.randn(g * g, 512), g))
    assert abs(near) < 0.15 and abs(far) < 0.15


def test_patch_plots_draw():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    for fig in (vp.plot_patch_grid(image, 8), vp.plot_patch_sequence(image, 8, count=6),
                vp.plot_position_similarity(vp.position_similarity(torch.randn(17, 8), 4), "x")):
        assert fig.axes
        plt.close(fig)


@pytest.mark.parametrize("patch_size", [8, 32, 56])
def test_patch_size_widget_draws_for_several_slider_values(patch_size, capsys):
    image = torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8)
    box = vp.patch_size_widget(image, default=32)
    slider = box.children[0]
    assert slider.value == 32 and 32 in slider.options
    slider.value = patch_size  # redraws through the same pure functions
    plt.close("all")
