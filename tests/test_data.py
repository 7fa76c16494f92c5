import os
import pickle
import struct
import urllib.error

import numpy as np
import pytest
import torch

from fedlib import data as data_mod
from fedlib.data import DatasetUnavailable, load_dataset


def test_mnist5k_is_the_shipped_5000_digits():
    ds = load_dataset("mnist5k")
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert torch.bincount(ds.y_test).tolist() == [100] * 10          # stratified split
    assert abs(ds.x_train.mean().item()) < 1e-4                       # standardised on the training set


def test_digits_and_synthetic():
    d = load_dataset("digits")
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.y_train) + len(d.y_test) == 1797
    s = load_dataset("synthetic", synthetic_samples=2000, synthetic_clients=20)
    assert s.groups is not None and len(s.groups) == len(s.y_train)
    assert len(np.unique(s.groups)) == 20 and s.x_train.shape[1] == 60


def _write_idx(path, arr):
    """The MNIST/Fashion-MNIST idx format: magic (0, 0, dtype 0x08, ndim), big-endian dims, bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim))
        f.write(struct.pack(">" + "I" * arr.ndim, *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


def test_fmnist_reads_idx_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    ds = load_dataset("fmnist", tmp_path)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.y_train.tolist() == [i % 10 for i in range(12)]


@pytest.mark.parametrize("name, folder, key, classes", [
    ("cifar10", "cifar-10-batches-py", "labels", 10),
    ("cifar100", "cifar-100-python", "fine_labels", 100),
])
def test_cifar_reads_python_pickles(tmp_path, monkeypatch, name, folder, key, classes):
    # tiny files cannot match the published MD5s: check existence only, parse everything for real
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda path, md5=None: os.path.isfile(path))
    d = tmp_path / folder
    d.mkdir()
    rng = np.random.default_rng(0)

    def batch(file, n):
        with open(d / file, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         key: (np.arange(n) % classes).tolist()}, f)

    if name == "cifar10":
        for i in range(1, 6):
            batch(f"data_batch_{i}", 2)
        batch("test_batch", 3)
        meta, names = "batches.meta", {"label_names": [str(i) for i in range(10)]}
    else:
        batch("train", 4)
        batch("test", 3)
        meta, names = "meta", {"fine_label_names": [str(i) for i in range(100)]}
    with open(d / meta, "wb") as f:
        pickle.dump(names, f)
    ds = load_dataset(name, tmp_path)
    assert ds.x_train.shape == (10 if name == "cifar10" else 4, 3, 32, 32) and ds.num_classes == classes
    assert ds.x_test.shape == (3, 3, 32, 32)


def test_missing_dataset_offline_names_path_and_offline_options(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("network unreachable")
    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)
    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)
    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline)
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    for name in ("fmnist", "cifar10"):
        with pytest.raises(DatasetUnavailable) as e:
            load_dataset(name, tmp_path / "nowhere")
        msg = str(e.value)
        assert str((tmp_path / "nowhere").resolve()) in msg and "mnist5k" in msg and "digits" in msg


def test_unknown_dataset():
    with pytest.raises(ValueError, match="allowed: mnist5k"):
        data_mod.load_dataset("imagenet")
