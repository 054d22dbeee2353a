"""`sharp train --recipe`, `--list-recipes` and the flags of the CIFAR workloads through the
real CLI: the recipe fills what the command line did not give, whatever the value given;
bad combinations are one line and exit 2."""

import json
import subprocess
import sys

import pytest

from sharpcli.recipes import RECIPES
from tests.fakes import write_cifar
from tests.runners import assert_one_line_error, sharp, subprocess_env, train_args


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("cifar"), "cifar10", 64, 32)


def config_of(root, run):
    return json.loads((root / "reports" / run / "config.json").read_text())


def test_recipe_fills_only_what_was_not_given(cifar, tmp_path):
    # --lr 0.3 is TrainConfig's own default: given on the command line, it still beats the
    # recipe's 0.01. --width 8 (from train_args) beats its 200, --steps its 100,000.
    sharp(*train_args(tmp_path, "r", "--recipe", "cohen-cifar5k-fc-tanh", "--data-dir", cifar,
                      "--steps", "1", "--lr", "0.3")).ok()
    c = config_of(tmp_path, "r")
    assert c["recipe"] == "cohen-cifar5k-fc-tanh"
    assert (c["lr"], c["width"], c["steps"], c["train_size"], c["test_size"]) == (0.3, 8, 1, 64, 32)
    assert (c["dataset"], c["model"], c["depth"], c["activation"], c["loss"]) == \
        ("cifar10", "mlp", 2, "tanh", "mse")
    assert (c["stop_acc"], c["sharpness_every"], c["eval_every"], c["augment"]) == \
        (0.99, 50, 50, "none")


def test_augment_auto_is_recorded_resolved(cifar, tmp_path):
    sharp(*train_args(tmp_path, "sgd", "--dataset", "cifar10", "--data-dir", cifar,
                      "--optimizer", "sgd", "--batch-size", "32", "--steps", "1",
                      "--sharpness-every", "0")).ok()
    sharp(*train_args(tmp_path, "gd", "--dataset", "cifar10", "--data-dir", cifar, "--steps", "1",
                      "--sharpness-every", "0")).ok()
    assert config_of(tmp_path, "sgd")["augment"] == "flip-crop"
    assert config_of(tmp_path, "gd")["augment"] == "none"  # full batch: never augmented


def test_list_recipes_prints_them_with_sources_without_torch():
    out = sharp("train", "--list-recipes").ok().stdout
    for name, recipe in RECIPES.items():
        assert name in out and recipe.source[:40] in out
    assert out.count("source:") == out.count("published:") == len(RECIPES)
    code = ("import sys\nfrom sharpcli.cli import main\n"
            "try:\n    main(['train', '--list-recipes'])\nexcept SystemExit:\n    pass\n"
            "print('torch imported:', 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip().endswith("torch imported: False"), done.stderr


BAD = [
    (["--recipe", "imagenet"], ["--recipe", "imagenet", "eigensam-cifar100-resnet18"]),
    (["--augment", "flip-crop"], ["--augment flip-crop", "full-batch"]),
    (["--optimizer", "sgd", "--batch-size", "8", "--augment", "crop"], ["--augment crop", "images", "(40,)"]),
    (["--label-smoothing", "0.1"], ["--label-smoothing", "--loss ce"]),
    (["--loss", "ce", "--label-smoothing", "1.5"], ["--label-smoothing", "[0, 1)"]),
    (["--precision", "fp16"], ["--precision", "fp16"]),
    (["--eig-mode", "test"], ["--eig-mode", "test"]),
]


@pytest.mark.parametrize("flags, words", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_workload_flags(tmp_path, flags, words):
    assert_one_line_error(sharp(*train_args(tmp_path, "x", *flags)), 2, *words)
    assert not (tmp_path / "checkpoints").exists()
