"""Data sets as whole tensors on the device: no DataLoader, batches are slices.

Every set comes back as a `DataSplits`: float32 inputs standardised with statistics of the
training subset, int64 labels. Preprocessing runs on the CPU and only the result moves to
the device, so a run's tensors are the same whatever device it used.

- mnist1d: generated offline by the `mnist1d` package with its default arguments (seed 42,
  4000 train / 1000 test, 40 features). Generating takes seconds, so the arrays are kept in
  memory and in `$XDG_CACHE_HOME/sharpcli` (default `~/.cache/sharpcli`), keyed by the
  package version; an unwritable or damaged cache is simply regenerated.
- digits: scikit-learn's bundled 8×8 digits, split 1437 / 360 by a stratified shuffle
  with seed 0 (`train_test_split(..., test_size=360, stratify=y, random_state=0)`).
- cifar10, cifar100, fashion-mnist, mnist, svhn: the standard files under `data_dir`, in
  the layout torchvision uses. `download=True` lets torchvision fetch missing files.
  MNIST and Fashion-MNIST are read by torchvision's classes. torchvision's CIFAR and SVHN
  classes refuse any file whose md5 differs from the official one (which rules out test
  fixtures), so we read those files ourselves: the CIFAR pickles through an unpickler that
  only admits numpy arrays, the SVHN .mat files with scipy.
"""

from __future__ import annotations

import functools
import os
import pickle
import random
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sharpcli.errors import SharpError

DATASETS = ("mnist1d", "digits", "cifar10", "cifar100", "fashion-mnist", "mnist", "svhn")


@dataclass
class DataSplits:
    x_train: Tensor  # float32, standardised, on the device
    y_train: Tensor  # int64
    x_test: Tensor
    y_test: Tensor
    input_shape: tuple[int, ...]  # one example: (40,) mnist1d, (1, 8, 8) digits, (3, 32, 32) cifar
    num_classes: int
    name: str

    def to_dtype(self, dtype: torch.dtype) -> "DataSplits":
        """The inputs in `dtype` (float64 for an fp64 run); labels stay int64."""
        self.x_train, self.x_test = self.x_train.to(dtype), self.x_test.to(dtype)
        return self


def load_dataset(name: str, *, data_dir: str | Path = "data", download: bool = False,
                 train_size: int | None = None, test_size: int | None = None,
                 device: str | torch.device = "cpu") -> DataSplits:
    """Load a data set whole, keep the FIRST `train_size` / `test_size` examples of each split
    (None: all), standardise inputs with the training subset's statistics (per feature for
    flat data, per channel for images) and move everything to `device`."""
    name = str(getattr(name, "value", name))  # accept the config's Dataset enum too
    if name not in DATASETS:
        raise SharpError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    dev = _device(device)
    if name == "mnist1d":
        x_train, y_train, x_test, y_test = _mnist1d_arrays()
        num_classes = 10
    elif name == "digits":
        x_train, y_train, x_test, y_test = _digits_arrays()
        num_classes = 10
    else:
        x_train, y_train, x_test, y_test = _read_torchvision_set(name, Path(data_dir), download)
        num_classes = 100 if name == "cifar100" else 10

    n_train = _subset_size(train_size, len(y_train), "train_size", name, "training")
    n_test = _subset_size(test_size, len(y_test), "test_size", name, "test")
    x_train, x_test = _to_float(x_train[:n_train]), _to_float(x_test[:n_test])
    mean, std = _statistics(x_train)
    return DataSplits(
        x_train=x_train.sub_(mean).div_(std).to(dev),  # in place: our own copies, full CIFAR is 600 MB
        y_train=torch.tensor(y_train[:n_train], dtype=torch.int64).to(dev),
        x_test=x_test.sub_(mean).div_(std).to(dev),
        y_test=torch.tensor(y_test[:n_test], dtype=torch.int64).to(dev),
        input_shape=tuple(int(s) for s in x_train.shape[1:]),
        num_classes=num_classes,
        name=name,
    )


# ---------------------------------------------------------------- shared steps

def _device(device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise SharpError(f"unknown device {device!r}; expected cpu, cuda, cuda:N or mps") from None


def _subset_size(n, available: int, param: str, name: str, split: str) -> int:
    if n is None:
        return available
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= available:
        raise SharpError(f"{{{param}}} {n!r}: {name} has {available} {split} examples; "
                         f"expected a whole number from 1 to {available}", param=param)
    return int(n)


def _to_float(x: np.ndarray) -> Tensor:
    """uint8 images become float32 in [0, 1]; anything else is just cast to float32."""
    t = torch.tensor(x)  # a copy: the caller may modify what we return
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def _statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std (population) per feature of flat data, per channel of images (N, C, ...).
    A constant feature gets std 1, so it is only centred, never divided by zero."""
    dims = (0,) if x.ndim == 2 else (0, *range(2, x.ndim))
    var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    std = var.sqrt()
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


# ---------------------------------------------------------------- mnist1d and digits

@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) of MNIST-1D, from the disk cache or generated."""
    path = _mnist1d_cache_path()
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = tuple(f[k] for k in ("x", "y", "x_test", "y_test"))
        if arrays[0].shape == (4000, 40) and arrays[2].shape == (1000, 40):
            return _read_only(arrays)
    except (OSError, KeyError, ValueError, EOFError):
        pass  # no cache yet, or a damaged one: generate
    arrays = _generate_mnist1d()
    try:
        from sharpcli.formats.atomic import atomic_write

        atomic_write(path, lambda f: np.savez(f, **dict(zip(("x", "y", "x_test", "y_test"), arrays))))
    except (OSError, SharpError):
        pass  # a read-only home only costs the next run a few seconds
    return _read_only(arrays)


def _mnist1d_cache_path() -> Path:
    try:
        version = metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "sharpcli" / f"mnist1d-{version}-default.npz"


def _generate_mnist1d() -> tuple[np.ndarray, ...]:
    # Imported here: importing mnist1d alone takes ~2 s (it pulls in matplotlib and requests).
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset seeds numpy's and Python's global generators; put them back afterwards so
    # that loading data never changes the caller's random streams.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())  # never get_dataset(): that one may download
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return d["x"], d["y"].astype(np.int64), d["x_test"], d["y_test"].astype(np.int64)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).reshape(-1, 1, 8, 8)  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=360, stratify=y,
                                                        random_state=0)
    return _read_only((x_train, y_train, x_test, y_test))


def _read_only(arrays):
    for a in arrays:
        a.setflags(write=False)  # these are cached: nobody may modify them in place
    return tuple(arrays)


# ---------------------------------------------------------------- torchvision sets

# name -> (folder under data_dir, training files, test files), the layout torchvision uses
_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    "cifar100": ("cifar-100-python", ["train"], ["test"]),
    "mnist": ("MNIST/raw", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
              ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "fashion-mnist": ("FashionMNIST/raw", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
                      ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "svhn": (".", ["train_32x32.mat"], ["test_32x32.mat"]),
}


def _read_torchvision_set(name: str, root: Path, download: bool):
    """uint8 images (N, C, H, W) and int64 labels of both splits, read from `root`."""
    folder_name, train_files, test_files = _FILES[name]
    folder = (root / folder_name).resolve()
    missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing and download:
        _fetch(name, root)
        missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing:
        raise SharpError(f"data set {name} not found in {folder} (missing {', '.join(missing)}); "
                         "put its files there, or pass {download} to fetch it", param="download")
    try:
        if name in ("cifar10", "cifar100"):
            key = "labels" if name == "cifar10" else "fine_labels"
            return (*_read_cifar(folder, train_files, key), *_read_cifar(folder, test_files, key))
        if name == "svhn":
            return (*_read_svhn(folder / train_files[0]), *_read_svhn(folder / test_files[0]))
        return (*_read_mnist(name, root, train=True), *_read_mnist(name, root, train=False))
    except (OSError, EOFError, KeyError, ValueError, TypeError, RuntimeError,
            pickle.UnpicklingError) as err:
        raise SharpError(f"could not read data set {name} in {folder}: {err}; replace the "
                         "damaged files (delete them and pass {download})", param="download") from None


def _fetch(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    try:
        if name == "svhn":
            tvd.SVHN(root, split="train", download=True)
            tvd.SVHN(root, split="test", download=True)
        else:
            cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST,
                   "fashion-mnist": tvd.FashionMNIST}[name]
            cls(root, train=True, download=True)  # fetches both splits
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        msg = " ".join(str(err).split())[:200]
        raise SharpError(f"could not download data set {name} into {root.resolve()}: {msg}") from None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; admit only what they hold (dicts, lists, numpy arrays) so a
    planted file cannot run code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):
            module = "numpy._core.multiarray"  # files written under numpy 1 (the official ones)
        return super().find_class(module, name)


def _read_cifar(folder: Path, files: list[str], label_key: str):
    images, labels = [], []
    for f in files:
        with open(folder / f, "rb") as fh:
            batch = _NumpyOnlyUnpickler(fh, encoding="latin1").load()
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _read_svhn(path: Path):
    import scipy.io

    mat = scipy.io.loadmat(path)
    x = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    y = mat["y"].astype(np.int64).reshape(-1) % 10  # SVHN labels the digit 0 as 10
    return x, y


def _read_mnist(name: str, root: Path, train: bool):
    import torchvision.datasets as tvd

    cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
    ds = cls(root, train=train, download=False)  # only checks that the files exist
    return ds.data.numpy()[:, None], ds.targets.numpy().astype(np.int64)
