"""Stand-ins for data sets this machine does not hold: random images written in the data
set's own file format, so that the real reading code runs on them."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

# name -> (folder, training files, test files, label key, classes), as torchvision lays them out
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def write_cifar(root: Path, name: str, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random uint8 CIFAR-10 or CIFAR-100 images and labels under root, in CIFAR's pickles
    (the training examples spread over the training files as evenly as they go)."""
    folder_name, train_files, test_files, key, classes = _CIFAR[name]
    folder = Path(root) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(seed)
    k = len(train_files)
    sizes = [n_train * (i + 1) // k - n_train * i // k for i in range(k)] + [n_test]
    for file, n in zip(train_files + test_files, sizes):
        batch = {"data": gen.integers(0, 256, (n, 3072), dtype=np.uint8),
                 key: gen.integers(0, classes, n).tolist()}
        with open(folder / file, "wb") as f:
            pickle.dump(batch, f)
    return Path(root)
