"""Data sets. The torchvision sets are tested on tiny files written here in the real on-disk
formats (CIFAR pickles, MNIST idx-ubyte, SVHN .mat), so nothing is downloaded."""

import pickle
import random
import struct
import sys
import types

import numpy as np
import pytest
import scipy.io
import torch

from sharpcli.workload import data
from sharpcli.workload.data import load_dataset
from sharpcli.errors import SharpError

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- mnist1d

def test_mnist1d_shapes_and_fixed_content():
    d = load_dataset("mnist1d")
    assert d.name == "mnist1d" and d.num_classes == 10 and d.input_shape == (40,)
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    # The mnist1d package's default arguments (seed 42) always give these labels.
    assert d.y_train[:10].tolist() == [2, 6, 4, 5, 6, 6, 6, 0, 3, 1]
    assert torch.bincount(d.y_train).tolist() == [398, 396, 411, 394, 394, 402, 401, 404, 402, 398]


def test_mnist1d_is_deterministic_and_returns_fresh_tensors():
    a, b = load_dataset("mnist1d", train_size=500), load_dataset("mnist1d", train_size=500)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    a.x_train.zero_()
    a.y_train.zero_()  # modifying what we got must not reach the cache
    c = load_dataset("mnist1d", train_size=500)
    assert torch.equal(c.x_train, b.x_train) and torch.equal(c.y_train, b.y_train)


def test_standardised_with_training_subset_statistics():
    d = load_dataset("mnist1d", train_size=300, test_size=200)
    assert d.x_train.mean(0).abs().max() < 1e-5
    assert (d.x_train.std(0, correction=0) - 1).abs().max() < 1e-4
    raw_train, _, raw_test, _ = data._mnist1d_arrays()
    mean, std = raw_train[:300].mean(0), raw_train[:300].std(0)
    expected = torch.tensor((raw_test[:200] - mean) / std, dtype=torch.float32)
    assert torch.allclose(d.x_test, expected, atol=1e-5)


def test_first_n_examples():
    full, sub = load_dataset("mnist1d"), load_dataset("mnist1d", train_size=50, test_size=7)
    assert sub.x_train.shape == (50, 40) and sub.x_test.shape == (7, 40)
    assert torch.equal(sub.y_train, full.y_train[:50]) and torch.equal(sub.y_test, full.y_test[:7])
    # the same examples, only standardised with other statistics: per feature affine
    raw_train = torch.tensor(data._mnist1d_arrays()[0][:50], dtype=torch.float32)
    corr = [np.corrcoef(sub.x_train[:, j], raw_train[:, j])[0, 1] for j in range(40)]
    assert min(corr) > 0.9999


def test_mnist1d_generation_leaves_global_random_state_alone(monkeypatch):
    """mnist1d's make_dataset seeds the global generators; ours restores them. A stand-in
    module spares the test the 2 s import of the real one."""

    def fake_make_dataset(args):
        np.random.seed(args.seed)
        random.seed(args.seed)
        return {"x": np.zeros((4000, 40)), "y": np.zeros(4000), "x_test": np.zeros((1000, 40)),
                "y_test": np.zeros(1000)}

    fake = types.ModuleType("mnist1d.data")
    fake.make_dataset = fake_make_dataset
    fake.get_dataset_args = lambda: types.SimpleNamespace(seed=42)
    monkeypatch.setitem(sys.modules, "mnist1d.data", fake)
    np.random.seed(123)
    random.seed(123)
    data._generate_mnist1d()
    np.random.seed(123)
    expected_np = np.random.rand()
    random.seed(123)
    expected_py = random.random()
    np.random.seed(123)
    random.seed(123)
    data._generate_mnist1d()
    assert np.random.rand() == expected_np and random.random() == expected_py


@pytest.fixture
def fresh_mnist1d_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def fake_generate():
        calls.append(1)
        return (RNG.normal(size=(4000, 40)), np.arange(4000) % 10,
                RNG.normal(size=(1000, 40)), np.arange(1000) % 10)

    monkeypatch.setattr(data, "_generate_mnist1d", fake_generate)
    data._mnist1d_arrays.cache_clear()
    yield tmp_path / "sharpcli", calls
    data._mnist1d_arrays.cache_clear()  # later tests see the real data again


def test_mnist1d_disk_cache(fresh_mnist1d_cache):
    folder, calls = fresh_mnist1d_cache
    first = data._mnist1d_arrays()
    assert len(calls) == 1 and len(list(folder.glob("mnist1d-*.npz"))) == 1
    data._mnist1d_arrays.cache_clear()
    second = data._mnist1d_arrays()
    assert len(calls) == 1  # read back from disk, not generated again
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    # a damaged cache file is regenerated, not an error
    next(folder.glob("mnist1d-*.npz")).write_bytes(b"not an npz file")
    data._mnist1d_arrays.cache_clear()
    data._mnist1d_arrays()
    assert len(calls) == 2


# ---------------------------------------------------------------- digits, sizes, names

def test_digits():
    d = load_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert torch.bincount(d.y_test).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]  # stratified
    assert abs(d.x_train.mean().item()) < 1e-5 and abs(d.x_train.std(correction=0).item() - 1) < 1e-4
    assert torch.equal(load_dataset("digits", train_size=20).y_train, d.y_train[:20])


@pytest.mark.parametrize("kwargs,match", [
    (dict(train_size=4001), r"^train_size 4001: mnist1d has 4000 training examples; .* 1 to 4000"),
    (dict(train_size=0), "^train_size 0"),
    (dict(train_size=-5), "^train_size -5"),
    (dict(test_size=1001), r"^test_size 1001: mnist1d has 1000 test examples"),
    (dict(train_size="10"), "^train_size '10'"),
])
def test_bad_sizes(kwargs, match):
    with pytest.raises(SharpError, match=match):
        load_dataset("mnist1d", **kwargs)


def test_unknown_name_and_device():
    with pytest.raises(SharpError, match="unknown data set 'imagenet'; expected one of mnist1d"):
        load_dataset("imagenet")
    with pytest.raises(SharpError, match="unknown device 'gpu0'"):
        load_dataset("digits", device="gpu0")


def test_device_argument():
    d = load_dataset("digits", train_size=10, device=torch.device("cpu"))
    assert d.x_train.device.type == "cpu" and d.y_test.device.type == "cpu"


# ---------------------------------------------------------------- torchvision sets, tiny files

def _pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root, per_batch=2, n_test=3):
    folder = root / "cifar-10-batches-py"
    images = []
    for i in range(1, 6):
        x = RNG.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        _pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "data": x,
                                             "labels": [(i + j) % 10 for j in range(per_batch)],
                                             "filenames": [f"{i}_{j}.png" for j in range(per_batch)]})
        images.append(x)
    x_test = RNG.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": x_test,
                                    "labels": list(range(n_test)), "filenames": ["t.png"] * n_test})
    _pickle(folder / "batches.meta", {"label_names": [f"class{k}" for k in range(10)],
                                      "num_cases_per_batch": per_batch, "num_vis": 3072})
    return np.concatenate(images).reshape(-1, 3, 32, 32), x_test.reshape(-1, 3, 32, 32)


def unstandardise(x, raw_train):
    """Undo per-channel standardisation with the statistics of raw_train (uint8, N C H W)."""
    r = torch.tensor(raw_train, dtype=torch.float32) / 255
    mean = r.mean((0, 2, 3), keepdim=True)
    std = r.std((0, 2, 3), keepdim=True, correction=0)
    return x * std + mean


def test_cifar10_from_files_in_the_real_format(tmp_path):
    raw_train, raw_test = write_cifar10(tmp_path)
    d = load_dataset("cifar10", data_dir=tmp_path)
    assert d.input_shape == (3, 32, 32) and d.num_classes == 10
    assert d.x_train.shape == (10, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert d.y_train.tolist() == [(i + j) % 10 for i in range(1, 6) for j in range(2)]
    assert d.y_test.tolist() == [0, 1, 2]
    # per-channel standardisation, and the pixels in their places (C, H, W)
    assert d.x_train.mean((0, 2, 3)).abs().max() < 1e-5
    assert (d.x_train.std((0, 2, 3), correction=0) - 1).abs().max() < 1e-4
    assert torch.allclose(unstandardise(d.x_train, raw_train), torch.tensor(raw_train / 255.0,
                          dtype=torch.float32), atol=1e-5)
    assert torch.allclose(unstandardise(d.x_test, raw_train), torch.tensor(raw_test / 255.0,
                          dtype=torch.float32), atol=1e-5)
    sub = load_dataset("cifar10", data_dir=tmp_path, train_size=4, test_size=1)
    assert torch.equal(sub.y_train, d.y_train[:4]) and sub.x_test.shape == (1, 3, 32, 32)


def test_cifar100_from_files_in_the_real_format(tmp_path):
    folder = tmp_path / "cifar-100-python"
    x = RNG.integers(0, 256, size=(5, 3072), dtype=np.uint8)
    for split, n in (("train", 5), ("test", 2)):
        _pickle(folder / split, {"filenames": ["a.png"] * n, "batch_label": split,
                                 "fine_labels": [99 - k for k in range(n)],
                                 "coarse_labels": [k for k in range(n)], "data": x[:n]})
    _pickle(folder / "meta", {"fine_label_names": [str(k) for k in range(100)],
                              "coarse_label_names": [str(k) for k in range(20)]})
    d = load_dataset("cifar100", data_dir=tmp_path)
    assert d.num_classes == 100 and d.x_train.shape == (5, 3, 32, 32)
    assert d.y_train.tolist() == [99, 98, 97, 96, 95] and d.y_test.tolist() == [99, 98]


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    write_cifar10(tmp_path)
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {"data": np.zeros((1, 3072), np.uint8),
                                                             "labels": [random.Random(0)]})
    with pytest.raises(SharpError, match=r"could not read data set cifar10 .*random\.Random"):
        load_dataset("cifar10", data_dir=tmp_path)


def _idx(path, array):
    """The idx-ubyte format: magic (0, 0, type 0x08 = ubyte, ndim), big-endian sizes, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_and_fashion_mnist_from_idx_files(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    train = RNG.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    _idx(raw / "train-images-idx3-ubyte", train)
    _idx(raw / "train-labels-idx1-ubyte", np.array([3, 1, 4, 1, 5, 9]))
    _idx(raw / "t10k-images-idx3-ubyte", RNG.integers(0, 256, size=(2, 28, 28), dtype=np.uint8))
    _idx(raw / "t10k-labels-idx1-ubyte", np.array([2, 6]))
    d = load_dataset(name, data_dir=tmp_path)
    assert d.input_shape == (1, 28, 28) and d.x_train.shape == (6, 1, 28, 28)
    assert d.y_train.tolist() == [3, 1, 4, 1, 5, 9] and d.y_test.tolist() == [2, 6]
    assert torch.allclose(unstandardise(d.x_train, train[:, None]),
                          torch.tensor(train[:, None] / 255.0, dtype=torch.float32), atol=1e-5)


def test_svhn_from_mat_files(tmp_path):
    train = RNG.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)  # N C H W
    test = RNG.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8)
    # SVHN stores X as (H, W, C, N) and labels the digit 0 as 10
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": train.transpose(2, 3, 1, 0),
                                                     "y": np.array([[10], [1], [2], [10]], np.uint8)})
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": test.transpose(2, 3, 1, 0),
                                                    "y": np.array([[3], [10]], np.uint8)})
    d = load_dataset("svhn", data_dir=tmp_path)
    assert d.x_train.shape == (4, 3, 32, 32) and d.num_classes == 10
    assert d.y_train.tolist() == [0, 1, 2, 0] and d.y_test.tolist() == [3, 0]
    expected = torch.tensor(test / 255.0, dtype=torch.float32)
    assert torch.allclose(unstandardise(d.x_test, train), expected, atol=1e-5)


@pytest.mark.parametrize("name,folder", [
    ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("mnist", "MNIST/raw"),
    ("fashion-mnist", "FashionMNIST/raw"), ("svhn", ""),
])
def test_missing_set_names_the_folder_and_download(tmp_path, monkeypatch, name, folder):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SharpError) as err:
        load_dataset(name, data_dir="data")
    msg = str(err.value)
    assert "\n" not in msg
    assert f"data set {name} not found in {(tmp_path / 'data' / folder).resolve()}" in msg
    assert "pass download to fetch it" in msg and err.value.param == "download"  # the CLI: --download


def test_download_fetches_missing_files_then_reads_them(tmp_path, monkeypatch):
    fetched = []

    def fake_fetch(name, root):
        fetched.append(name)
        write_cifar10(root)

    monkeypatch.setattr(data, "_fetch", fake_fetch)
    d = load_dataset("cifar10", data_dir=tmp_path, download=True)
    assert fetched == ["cifar10"] and d.x_train.shape == (10, 3, 32, 32)
    load_dataset("cifar10", data_dir=tmp_path, download=True)
    assert fetched == ["cifar10"]  # files present: nothing fetched again
