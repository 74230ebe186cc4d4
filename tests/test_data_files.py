"""Reading the on-disk formats: CIFAR python pickles (safely) and Fashion-MNIST IDX files."""

import gzip
import os
import pickle

import numpy as np
import pytest

from conftest import REAL_FMNIST, needs_fmnist, write_fake_cifar, write_fake_fmnist, write_idx
from longtail.config import load_config
from longtail.data import build_data
from longtail.data.cifar import load_cifar, safe_unpickle
from longtail.data.fmnist import load_fmnist, read_idx
from longtail.errors import LongtailError


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_pickles_are_read_with_images_in_chw_order(tmp_path, variant):
    write_fake_cifar(tmp_path, variant, train_per_class=10, test_per_class=3)
    raw = load_cifar(variant, str(tmp_path), download=False)
    classes = 10 if variant == "cifar10" else 100
    assert raw.num_classes == classes
    assert raw.train.images.shape == (10 * classes, 3, 32, 32)
    assert np.bincount(raw.test.labels.numpy()).tolist() == [3] * classes
    # the first row of the file is image 0 of the first batch, channels first
    name = "data_batch_1" if variant == "cifar10" else "train"
    folder = "cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python"
    with open(tmp_path / folder / name, "rb") as f:
        first = pickle.load(f, encoding="bytes")[b"data"][0]
    assert raw.train.images[0].flatten().tolist() == first.tolist()


def test_cifar_long_tailed_bundle(tmp_path):
    write_fake_cifar(tmp_path, "cifar10", train_per_class=50, test_per_class=5)
    cfg = load_config(None, ["dataset.name=cifar10_lt", f"dataset.root={tmp_path}", "dataset.n_max=40",
                             "dataset.imbalance_factor=10", "dataset.val_per_class=5", "dataset.download=false"])
    bundle = build_data(cfg)
    assert bundle.class_counts == [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]  # 40 * 0.1 ** (i / 9), floored
    assert np.bincount(bundle.train.labels.numpy()).tolist() == bundle.class_counts
    assert len(bundle.val) == 50 and len(bundle.test) == 50


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/longtail_pwned",))


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(tmp_path, "cifar10")
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    marker = "/tmp/longtail_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    with pytest.raises(LongtailError, match="refusing to load 'posix.system'|refusing to load 'os.system'"):
        load_cifar("cifar10", str(tmp_path), download=False)
    assert not os.path.exists(marker)


def test_truncated_pickle_is_a_clear_error(tmp_path):
    write_fake_cifar(tmp_path, "cifar100")
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(LongtailError, match="corrupt"):
        safe_unpickle(path)


def test_missing_cifar_names_the_folder_and_the_source(tmp_path):
    with pytest.raises(LongtailError, match="cifar-10-batches-py.*cifar.html"):
        load_cifar("cifar10", str(tmp_path), download=False)


def test_idx_reader_round_trip_and_corruption(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(raw[:-3])
    with pytest.raises(LongtailError, match="header says 24"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "garbage.gz").write_bytes(b"not gzip at all")
    with pytest.raises(LongtailError, match="corrupt"):
        read_idx(tmp_path / "garbage.gz")


def test_fmnist_from_dataset_root(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    raw = load_fmnist(str(tmp_path), download=False)
    assert raw.train.images.shape == (40, 1, 28, 28) and raw.test.labels.tolist()[:3] == [0, 1, 2]


def test_fmnist_is_found_in_root_then_debian_then_the_cache_and_so_are_the_tests(tmp_path, monkeypatch):
    import conftest
    import longtail.data.fmnist as fm

    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(fm, "CACHE_DIR", tmp_path / "cache")
    root, debian, cache = tmp_path / "root", tmp_path / "debian", tmp_path / "cache" / "FashionMNIST" / "raw"
    for seed, folder in enumerate((cache, debian, root)):  # each later folder shadows the earlier ones
        write_fake_fmnist(folder, train_per_class=1, test_per_class=1, seed=seed)
        assert fm.locate(str(root), download=False) == folder
        monkeypatch.setenv(conftest.FMNIST_ENV, "")
        assert conftest.find_fmnist() == (debian if folder == root else folder)  # without a root: Debian, the cache
    monkeypatch.setenv(conftest.FMNIST_ENV, str(root))
    assert conftest.find_fmnist() == root
    monkeypatch.setenv(conftest.FMNIST_ENV, "none")
    assert conftest.find_fmnist() is None
    monkeypatch.setenv(conftest.FMNIST_ENV, str(tmp_path / "empty"))
    assert conftest.find_fmnist() is None  # the named folder alone: pytest_configure stops the run on it


def test_missing_fmnist_names_all_three_places(tmp_path, monkeypatch):
    import longtail.data.fmnist as fm

    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(fm, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(LongtailError, match=r"dataset.root.*apt-get install dataset-fashion-mnist.*cache"):
        load_fmnist(str(tmp_path / "root"), download=False)


@needs_fmnist
def test_fmnist_lt_standard_protocol_keeps_1000_unused_images_per_class():
    cfg = load_config(None, ["dataset.imbalance_factor=100", f"dataset.root={REAL_FMNIST}"])
    bundle = build_data(cfg)
    assert bundle.class_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert len(bundle.val) == 1000 and len(bundle.test) == 10000
    assert bundle.train.images.shape[1:] == (1, 28, 28)
