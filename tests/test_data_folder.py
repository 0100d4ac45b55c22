"""A folder of your own images with captions: bad rows are skipped and counted, never silently."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipedu.data import get_dataset, image_caption_folder


def save_picture(path, width, height, colour=(255, 0, 0)):
    Image.new("RGB", (width, height), colour).save(path)


@pytest.fixture
def folder(tmp_path):
    save_picture(tmp_path / "a.png", 40, 40, (255, 0, 0))
    save_picture(tmp_path / "b.jpg", 30, 30, (0, 0, 255))
    # A wide picture: green in the middle square, red at both ends, so the centre crop is all green.
    wide = np.zeros((20, 60, 3), dtype=np.uint8)
    wide[:, :20] = wide[:, 40:] = (255, 0, 0)
    wide[:, 20:40] = (0, 255, 0)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a picture")
    return tmp_path


def write_csv(folder, text):
    (folder / "captions.csv").write_text(text)


def test_csv_with_bad_rows_skips_and_counts(folder):
    write_csv(folder, "\n".join([
        "image,caption",
        "a.png,a red square",
        "b.jpg,a blue square",
        "a.png,\"a red picture, all red\"",
        "missing.png,nobody drew this",
        "broken.png,a corrupt file",
        "broken.png,another caption for the corrupt file",
        "b.jpg,",
        "wide.png,a green middle",
        ",no image name here",
    ]))
    with pytest.warns(UserWarning) as record:
        data = image_caption_folder(folder, image_size=16)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 5 caption rows" in message
    for part in ("2 unreadable image", "1 missing file", "1 empty caption", "1 no image name"):
        assert part in message
    assert data.info["skipped"] == {"unreadable image": 2, "missing file": 1, "empty caption": 1,
                                    "no image name": 1}
    assert data.captions == [["a red square", "a red picture, all red"], ["a blue square"], ["a green middle"]]
    assert data.images.shape == (3, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.images[0, 0].float().mean() > 250 and data.images[0, 1:].float().mean() < 5  # red
    assert data.images[1, 2].float().mean() > 250  # blue
    centre_crop = data.images[2].float()
    assert centre_crop[1].mean() > 250 and centre_crop[0].mean() < 5  # the crop kept the green middle


def test_clean_folder_gives_no_warning(folder):
    write_csv(folder, "image,caption\na.png,red\nb.jpg,blue\n")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = image_caption_folder(folder)
    assert len(data) == 2 and data.image_size == 32 and data.info["skipped"] == {}


def test_jsonl_with_several_captions(folder):
    lines = [
        json.dumps({"image": "a.png", "captions": ["red one", "red two"]}),
        json.dumps({"image": "b.jpg", "caption": "blue"}),
        "{not json",
        json.dumps({"image": "wide.png", "caption": "  "}),
    ]
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"1 unreadable line, 1 empty caption|1 empty caption, 1 unreadable line"):
        data = image_caption_folder(folder)
    assert data.captions == [["red one", "red two"], ["blue"]]


def test_wrong_columns_name_what_was_found(folder):
    write_csv(folder, "filename,text\na.png,red\n")
    with pytest.raises(ValueError, match=r"columns \['image', 'caption'\]; found columns \['filename', 'text'\]"):
        image_caption_folder(folder)


def test_missing_folder_and_missing_caption_file(tmp_path, folder):
    with pytest.raises(ValueError, match="does not exist"):
        image_caption_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no captions file; expected one of captions.csv"):
        image_caption_folder(folder)


def test_nothing_usable_is_an_error(folder):
    write_csv(folder, "image,caption\nmissing.png,x\nbroken.png,y\n")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no usable image-caption pairs"):
        image_caption_folder(folder)


def test_folder_through_get_dataset_has_splits(folder):
    rows = ["image,caption"] + [f"p{i}.png,picture {i}" for i in range(10)]
    for i in range(10):
        save_picture(folder / f"p{i}.png", 8, 8, (i * 20, 0, 0))
    write_csv(folder, "\n".join(rows))
    train = get_dataset(f"folder:{folder}", "train", image_size=8)
    test = get_dataset(f"folder:{folder}", "test", image_size=8)
    everything = get_dataset(f"folder:{folder}", "all", image_size=8)
    assert len(test) == 1 and len(train) == 9 and len(everything) == 10
    assert set(train.all_captions()).isdisjoint(test.all_captions())
