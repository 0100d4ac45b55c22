"""CIFAR-10/100 through the real on-disk format, on tiny fake files; never the network."""

import pickle
import urllib.error

import numpy as np
import pytest
import torch

from clipedu.data import CIFAR_TEMPLATES, cifar10, cifar100, get_dataset
from clipedu.data import cifar as cifar_module


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to download fails as it would offline."""
    calls = []

    def offline(kind, root):
        calls.append((kind, root))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar_module, "_download", offline)
    return calls


def batch(n, labels_key, labels, rng):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[0, :1024] = 255  # picture 0: red plane full, green and blue planes empty
    data[0, 1024:] = 0
    return {b"batch_label": b"fake", labels_key: list(labels), b"data": data}


def dump(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(content, f)


def write_cifar10(root, per_batch=3):
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    for i in range(1, 6):
        dump(folder / f"data_batch_{i}", batch(per_batch, b"labels", [(i + j) % 10 for j in range(per_batch)], rng))
    dump(folder / "test_batch", batch(4, b"labels", [9, 8, 7, 6], rng))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})


def write_cifar100(root):
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    for split, n in (("train", 6), ("test", 2)):
        part = batch(n, b"fine_labels", [(7 * j) % 100 for j in range(n)], rng)
        part[b"coarse_labels"] = [j % 20 for j in range(n)]
        dump(folder / split, part)
    dump(folder / "meta", {
        b"fine_label_names": [f"thing_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"group_{i}".encode() for i in range(20)],
    })


def test_cifar10_reads_the_real_layout(tmp_path, no_network):
    write_cifar10(tmp_path)
    data = cifar10(train=True, root=tmp_path)
    assert data.images.shape == (15, 3, 32, 32) and data.images.dtype == torch.uint8
    assert (data.images[0, 0] == 255).all() and (data.images[0, 1:] == 0).all()  # channel planes in order
    assert data.labels["class"].tolist()[:4] == [1, 2, 3, 2]
    assert data.class_names["class"][0] == "airplane"
    label = int(data.labels["class"][0])
    assert data.captions[0] == [t.format(data.class_names["class"][label]) for t in CIFAR_TEMPLATES]
    assert len(CIFAR_TEMPLATES) == 18 and data.templates["class"] == CIFAR_TEMPLATES
    test = cifar10(train=False, root=tmp_path)
    assert len(test) == 4 and test.labels["class"].tolist() == [9, 8, 7, 6]
    assert test.captions[0][0] == "a photo of a truck."
    assert no_network == []  # the files were there: no download was tried


def test_cifar100_fine_and_coarse_labels(tmp_path):
    write_cifar100(tmp_path)
    data = cifar100(train=True, root=tmp_path)
    assert len(data) == 6 and data.labels["class"].tolist() == [0, 7, 14, 21, 28, 35]
    assert data.class_names["class"][7] == "thing 7"  # underscores become spaces
    assert data.labels["superclass"].tolist() == [0, 1, 2, 3, 4, 5]
    assert data.class_names["superclass"][1] == "group 1"
    assert data.captions[1][0] == "a photo of a thing 7."
    assert len(get_dataset("cifar100", "test", root=tmp_path)) == 2


def test_offline_download_error_says_what_to_do(tmp_path, no_network):
    with pytest.raises(RuntimeError) as info:
        cifar10(root=tmp_path)
    message = str(info.value)
    assert "Downloading CIFAR-10 failed" in message and "URLError" in message
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "ShapesWorld" in message and "digits" in message
    assert no_network == [("cifar10", tmp_path)]


def test_missing_files_without_download(tmp_path, no_network):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    assert len(cifar10(train=True, root=tmp_path, download=False)) == 15
    with pytest.raises(FileNotFoundError, match="test_batch"):
        cifar10(train=False, root=tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        cifar100(root=tmp_path, download=False)
    assert no_network == []


def test_corrupt_or_wrong_files_are_clear_errors(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot read .*test_batch as a CIFAR batch file"):
        cifar10(train=False, root=tmp_path)
    dump(tmp_path / "cifar-10-batches-py" / "test_batch",
         {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"expected data of shape \(N, 3072\)"):
        cifar10(train=False, root=tmp_path)


def test_default_root_is_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPEDU_DATA", str(tmp_path))
    write_cifar10(tmp_path)
    assert len(cifar10(train=False)) == 4
