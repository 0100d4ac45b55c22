import pytest
import torch

from clipedu.patches import PatchEmbedding, check_images, patch_coverage, patchify, unpatchify


@pytest.mark.parametrize("c,size,p", [(3, 32, 8), (1, 12, 4), (3, 224, 32)])
def test_patchify_unpatchify_roundtrip(c, size, p):
    x = torch.randn(2, c, size, size)
    patches = patchify(x, p)
    assert patches.shape == (2, (size // p) ** 2, c * p * p)
    torch.testing.assert_close(unpatchify(patches, p, c), x, rtol=0, atol=0)


def test_patch_order_is_row_major_and_channel_first():
    x = torch.arange(2 * 4 * 4, dtype=torch.float).reshape(1, 2, 4, 4)
    patches = patchify(x, 2)  # 4 patches of 2x2x2
    # Patch 1 is the top-right one; its first four values are channel 0's 2x2 block.
    torch.testing.assert_close(patches[0, 1, :4], torch.tensor([2.0, 3.0, 6.0, 7.0]))
    torch.testing.assert_close(patches[0, 1, 4:], torch.tensor([18.0, 19.0, 22.0, 23.0]))
    torch.testing.assert_close(patches[0, 2, :4], torch.tensor([8.0, 9.0, 12.0, 13.0]))


def test_strided_conv_equals_linear_on_flattened_patches():
    embed = PatchEmbedding(patch_size=4, width=24, channels=3)
    x = torch.randn(5, 3, 16, 16)
    linear = embed.as_linear()
    torch.testing.assert_close(embed(x), linear(patchify(x, 4)), rtol=1e-5, atol=1e-5)


def test_patchify_rejects_non_multiple_size():
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        patchify(torch.zeros(1, 3, 30, 30), 8)


def test_unpatchify_rejects_wrong_vector_length():
    with pytest.raises(ValueError, match="C\\*P\\*P = 48, got 47"):
        unpatchify(torch.zeros(1, 4, 47), 4, 3)


def test_check_images_accepts_a_good_batch():
    check_images(torch.zeros(2, 3, 32, 32), 3, 32)


def test_patch_coverage_averages_each_patch_in_token_order():
    masks = torch.zeros(2, 8, 8)
    masks[0, :4, 4:] = 1.0  # the top-right patch of a 2 x 2 grid
    masks[1, 4:, :2] = 1.0  # half of the bottom-left patch
    cover = patch_coverage(masks, 4)
    assert torch.equal(cover, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0]]))
    # the same order as patchify: the mean of each flattened patch
    m = torch.rand(3, 12, 12)
    assert torch.allclose(patch_coverage(m, 4), patchify(m[:, None], 4).mean(-1))
    with pytest.raises(ValueError, match=r"expected \(B, H, W\) masks"):
        patch_coverage(torch.zeros(2, 1, 8, 8), 4)
    with pytest.raises(ValueError, match="not a multiple of the patch size 3"):
        patch_coverage(torch.zeros(2, 8, 8), 3)
