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
    with pytest.raises(ValueError, match=r"columns \['image', 'caption'\] \(or open_clip's \['filepath', 'title'\], "
                       r"or name yours with image_key= and caption_key=\); found columns \['filename', 'text'\]"):
        image_caption_folder(folder)
    data = image_caption_folder(folder, image_key="filename", caption_key="text")
    assert data.captions == [["red"]]
    with pytest.raises(ValueError, match=r"no column 'title' \(caption_key\); found columns \['filename', 'text'\]"):
        image_caption_folder(folder, image_key="filename", caption_key="title")


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


# --- open_clip's CSV convention: filepath and title, tab-separated, the file passed itself ----------
def test_open_clip_csv_is_read_as_it_is(folder):
    (folder / "sub").mkdir()
    save_picture(folder / "sub" / "c.png", 12, 12, (0, 255, 0))
    (folder / "train.csv").write_text(
        "filepath\ttitle\n"
        "a.png\ta red square, drawn with care\n"  # a comma inside a tab-separated caption
        f"{folder / 'sub' / 'c.png'}\ta green square at an absolute path\n"
        "b.jpg\ta blue square\n"
    )
    data = image_caption_folder(folder / "train.csv", image_size=8)
    assert data.captions == [["a red square, drawn with care"], ["a green square at an absolute path"],
                             ["a blue square"]]
    assert data.name == folder.name and data.info["caption_file"] == "train.csv"
    assert data.images[1, 1].float().mean() > 250  # green
    through_catalog = get_dataset(f"folder:{folder / 'train.csv'}", "all", image_size=8)
    assert through_catalog.captions == data.captions


def test_open_clip_keys_and_separator_pass_through_get_dataset(folder):
    (folder / "pairs.csv").write_text("path;text\na.png;red\nb.jpg;blue\n")
    data = get_dataset(f"folder:{folder / 'pairs.csv'}", "all", image_key="path", caption_key="text", separator=";",
                       image_size=8)
    assert data.captions == [["red"], ["blue"]]
    with pytest.raises(ValueError, match=r"found columns \['path;text'\]"):  # read with the wrong separator
        image_caption_folder(folder / "pairs.csv", image_key="path", caption_key="text")
    with pytest.raises(ValueError, match="separator must be one character"):
        image_caption_folder(folder / "pairs.csv", separator=";;")


def test_open_clip_relative_paths_from_the_working_directory(folder, tmp_path_factory, monkeypatch):
    elsewhere = tmp_path_factory.mktemp("lists")
    (elsewhere / "train.csv").write_text("filepath,title\na.png,red from the working directory\n")
    monkeypatch.chdir(folder)  # open_clip opens relative paths from where it runs
    data = image_caption_folder(elsewhere / "train.csv", image_size=8)
    assert data.captions == [["red from the working directory"]]


def test_jsonl_with_open_clip_keys(folder):
    lines = [json.dumps({"filepath": "a.png", "title": "red"}), json.dumps({"filepath": "b.jpg", "title": "blue"})]
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    assert image_caption_folder(folder).captions == [["red"], ["blue"]]
    (folder / "captions.jsonl").write_text(json.dumps({"file": "a.png", "text": "red"}) + "\n")
    with pytest.raises(ValueError, match=r"objects with 'image' and 'caption'.*line 1 has \['file', 'text'\]"):
        image_caption_folder(folder)
    assert image_caption_folder(folder, image_key="file", caption_key="text").captions == [["red"]]


def test_missing_path_says_folder_or_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist .or is not a folder or a captions file."):
        image_caption_folder(tmp_path / "train.csv")
