"""PyTorch's data conventions: CaptionedImages as a map-style dataset, and datasets from torchvision
and Hugging Face ``datasets`` turned into CaptionedImages."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # datasets here are built in memory; nothing is downloaded

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from clipedu.data import CaptionedImages, ShapesWorld, from_hf_dataset, from_torchvision, to_float


@pytest.fixture(scope="module")
def shapes():
    return ShapesWorld().generate(10, seed=3)


# --- CaptionedImages is a map-style dataset ----------------------------------------------------------
def test_item_is_image_first_caption_and_labels(shapes):
    image, caption, labels = shapes[4]
    assert torch.equal(image, shapes.images[4]) and image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert caption == shapes.captions[4][0]
    assert labels.keys() == shapes.labels.keys()
    assert all(labels[k] == shapes.labels[k][4] for k in labels)
    assert shapes[-1][1] == shapes.captions[9][0] and shapes[np.int64(2)][1] == shapes.captions[2][0]
    assert [caption for _, caption, _ in shapes] == [c[0] for c in shapes.captions]  # iterable, ends at len


def test_dataloader_batches_and_shuffles(shapes):
    loader = DataLoader(shapes, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    images, captions, labels = batches[0]
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    assert labels["shape"].shape == (4,) and labels["shape"].dtype == torch.long
    seen = torch.cat([b[0] for b in batches])
    order = [int((shapes.images == img).flatten(1).all(1).nonzero()) for img in seen]  # which image each is
    assert sorted(order) == list(range(10)) and order != list(range(10))  # every image once, shuffled
    assert [c for b in batches for c in b[1]] == [shapes.captions[i][0] for i in order]  # captions follow
    assert to_float(images).dtype == torch.float32  # what the model takes, as for DeviceLoader


def test_bad_indices(shapes):
    with pytest.raises(IndexError, match="index 10 is out of range for 10 images"):
        shapes[10]
    with pytest.raises(ValueError, match=r"index one image with an int, got slice; for several use data.subset"):
        shapes[0:2]
    with pytest.raises(ValueError, match="index one image with an int, got float"):
        shapes[1.0]


# --- torchvision ---------------------------------------------------------------------------------------
def test_torchvision_classification_dataset(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    for name, colour in [("cat", (200, 0, 0)), ("dog", (0, 0, 200))]:
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (40 + i, 30), colour).save(tmp_path / name / f"{i}.png")
    folder = torchvision.datasets.ImageFolder(str(tmp_path))
    data = from_torchvision(folder, image_size=16, templates=["a photo of a {}.", "a {}."])
    assert isinstance(data, CaptionedImages) and data.name == "ImageFolder"
    assert data.images.shape == (6, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.class_names == {"class": ["cat", "dog"]} and data.labels["class"].tolist() == [0, 0, 0, 1, 1, 1]
    assert data.captions[4] == ["a photo of a dog.", "a dog."]
    assert data.images[4, 2].float().mean() > 190 and data.images[4, 0].float().mean() < 10  # blue
    assert data.prompts("class") == [["a photo of a cat.", "a cat."], ["a photo of a dog.", "a dog."]]


def test_torchvision_tensors_after_to_tensor_and_caption_targets():
    torchvision = pytest.importorskip("torchvision")
    fake = torchvision.datasets.FakeData(size=5, image_size=(3, 24, 20), num_classes=3,
                                         transform=torchvision.transforms.ToTensor())
    data = from_torchvision(fake, n=4)  # no class names: the label numbers
    assert data.images.shape == (4, 3, 20, 20)
    assert data.class_names["class"] == [str(k) for k in range(int(data.labels["class"].max()) + 1)]
    image, _ = fake[0]
    expected = (image[:, 2:22, :] * 255).round().to(torch.uint8)  # the centre 20 x 20 square, unresized
    assert torch.equal(data.images[0], expected)

    class Captioned(torch.utils.data.Dataset):  # CocoCaptions' shape: (image, list of captions)
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return Image.new("RGB", (8, 8), (i * 100, 0, 0)), [f"picture {i}", "  ", f"another of {i}"]

    data = from_torchvision(Captioned())
    assert data.captions == [["picture 0", "another of 0"], ["picture 1", "another of 1"]] and not data.labels


def test_torchvision_bad_inputs():
    torchvision = pytest.importorskip("torchvision")
    normalised = torchvision.datasets.FakeData(size=2, image_size=(3, 8, 8), transform=torchvision.transforms.Compose(
        [torchvision.transforms.ToTensor(), torchvision.transforms.Normalize((0.5,) * 3, (0.5,) * 3)]))
    with pytest.raises(ValueError, match=r"item 0's image has values in \[-1\.00, [0-9.]+\]: .*without Normalize"):
        from_torchvision(normalised)
    with pytest.raises(ValueError, match="n must be a positive int"):
        from_torchvision(normalised, n=0)
    with pytest.raises(ValueError, match=r"expected \(image, target\) pairs from the dataset; item 0 is Tensor"):
        from_torchvision([torch.zeros(3, 8, 8)])
    with pytest.raises(ValueError, match="expected a map-style dataset"):
        from_torchvision(iter([]))
    with pytest.raises(ValueError, match="templates must be strings that each contain"):
        from_torchvision([(Image.new("RGB", (8, 8)), 0)], templates=["a photo"])


# --- Hugging Face datasets -----------------------------------------------------------------------------
def _pictures(k):
    return [Image.new("RGB", (10 + i, 12), (40 * i, 0, 0)) for i in range(k)]


def test_hf_dataset_with_captions():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({
        "image": _pictures(4),
        "caption": [["a first picture", "the first"], ["a second"], [""], ["a fourth"]],
    }).cast_column("image", datasets.Image())
    with pytest.warns(UserWarning, match="skipped 1 images without a non-empty caption"):
        data = from_hf_dataset(ds, image_size=8)
    assert data.captions == [["a first picture", "the first"], ["a second"], ["a fourth"]]
    assert data.images.shape == (3, 3, 8, 8) and data.info["skipped"] == 1
    assert data.images[2, 0].float().mean() > 110  # the fourth picture is the reddest
    assert len(from_hf_dataset(ds, n=2)) == 2 and from_hf_dataset(ds, n=1).image_size == 10


def test_hf_dataset_with_class_labels_and_undecoded_images():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"img": datasets.Image(decode=False),
                                  "label": datasets.ClassLabel(names=["circle", "square"])})
    ds = datasets.Dataset.from_dict({"img": _pictures(3), "label": [1, 0, 1]}, features=features)
    data = from_hf_dataset(ds, image_column="img", image_size=8)
    assert data.class_names == {"class": ["circle", "square"]} and data.labels["class"].tolist() == [1, 0, 1]
    assert data.captions[0] == ["a photo of a square."]


def test_hf_dataset_unlabelled_rows_are_an_error():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": _pictures(2), "label": [0, -1]}, features=features)
    with pytest.raises(ValueError, match=r"item 1 has class -1, outside the 2 classes \['a', 'b'\] \(-1 marks"):
        from_hf_dataset(ds)


def test_hf_dataset_with_captions_and_labels_streamed():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["dark", "bright"])})
    ds = datasets.Dataset.from_dict({"image": _pictures(3), "text": ["a", "b", "c"], "label": [0, 1, 1]},
                                    features=features)
    data = from_hf_dataset(ds.to_iterable_dataset(), n=2)
    assert data.captions == [["a"], ["b"]] and data.labels["class"].tolist() == [0, 1]
    assert data.class_names["class"] == ["dark", "bright"]


def test_hf_dataset_bad_columns_list_what_it_has():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"picture": _pictures(1), "words": ["x"]})
    with pytest.raises(ValueError, match=r"no column 'image' \(image_column\); its columns are \['picture', 'words'\]"):
        from_hf_dataset(ds)
    with pytest.raises(ValueError, match=r"needs a caption column .* its columns are \['picture', 'words'\]"):
        from_hf_dataset(ds, image_column="picture")
    assert from_hf_dataset(ds, image_column="picture", caption_column="words").captions == [["x"]]
    with pytest.raises(ValueError, match="expected a Hugging Face dataset with named columns, got list"):
        from_hf_dataset([{"image": None}])
