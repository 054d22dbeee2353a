"""Bad input, one test per case, through the real CLI (`sharpcli.cli.main`, the function behind
`sharp`, run in this process for speed; test_interrupt.py checks the stderr of real processes):
exit code 2, one line on stderr that starts with `error:` and names the problem, no traceback
(docs/reference/formats.md#exit-codes)."""

import json
import shutil

import pytest
import torch

from sharpcli.formats.checkpoints import list_checkpoints
from tests.runners import assert_one_line_error, sharp, train_args

STEPS = ["--steps", "4", "--sharpness-every", "2", "--eval-every", "2", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished tiny run: reports/r and checkpoints/r (steps 0, 2, 4). Read-only: tests
    that damage it work on a copy."""
    root = tmp_path_factory.mktemp("run")
    assert sharp(*train_args(root, "r", *STEPS)).code == 0
    return root


@pytest.fixture
def run_copy(run, tmp_path):
    """A copy of the run whose config.json points at the copy's own checkpoints."""
    shutil.copytree(run, tmp_path, dirs_exist_ok=True)
    config_json = tmp_path / "reports" / "r" / "config.json"
    config = json.loads(config_json.read_text())
    config.update(reports_dir=str(tmp_path / "reports"), checkpoints_dir=str(tmp_path / "checkpoints"))
    config_json.write_text(json.dumps(config))
    return tmp_path


def ckpt(root):
    return list_checkpoints(root / "checkpoints" / "r")[-1]


# ---------------------------------------------------------------- sharp train: flags

BAD_TRAIN_FLAGS = [
    (["--dataset", "imagenet"], ["--dataset", "imagenet", "mnist1d"]),
    (["--model", "vgg16"], ["--model", "vgg16", "resnet18"]),
    (["--optimizer", "lbfgs"], ["--optimizer", "lbfgs", "eigen-sam", "rmsprop"]),
    (["--loss", "hinge"], ["--loss", "hinge"]),
    (["--lr", "0"], ["--lr", "positive"]),
    (["--lr", "-0.1"], ["--lr", "positive"]),
    (["--lr", "nan"], ["--lr", "nan"]),
    (["--lr", "inf"], ["--lr", "finite"]),
    (["--lr", "fast"], ["--lr", "number"]),
    (["--steps", "0"], ["--steps", "positive"]),
    (["--steps", "-5"], ["--steps", "positive"]),
    (["--steps", "ten"], ["--steps", "integer"]),
    (["--epochs", "0"], ["--epochs", "positive"]),
    (["--optimizer", "sam", "--rho", "0"], ["--rho", "positive"]),
    (["--rho", "-0.05"], ["--rho", "zero or more"]),
    (["--train-size", "-1"], ["--train-size", "positive"]),
    (["--test-size", "-3"], ["--test-size", "positive"]),
    (["--train-size", "100000"], ["--train-size", "100000", "4000"]),
    (["--optimizer", "sgd", "--batch-size", "0"], ["--batch-size", "positive"]),
    (["--width", "0"], ["--width", "positive"]),
    (["--momentum", "1.5"], ["--momentum", "[0, 1)"]),
    (["--optimizer", "adam", "--momentum", "0.9"], ["adam", "--momentum", "--beta1"]),
    (["--optimizer", "rmsprop", "--momentum", "0.5", "--nesterov"], ["rmsprop", "--nesterov"]),
    (["--beta1", "1"], ["--beta1", "[0, 1)"]),
    (["--beta2", "-0.1"], ["--beta2", "zero or more"]),
    (["--eps", "0"], ["--eps", "positive"]),
    (["--optimizer", "adam", "--batch-sharpness"], ["--batch-sharpness", "--batch-size"]),
    (["--sharpness-k", "100000"], ["--sharpness-k", "100000", "parameters"]),
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--no-such-flag"], ["--no-such-flag"]),
]


@pytest.mark.parametrize("flags, words", BAD_TRAIN_FLAGS,
                         ids=[" ".join(flags) for flags, _ in BAD_TRAIN_FLAGS])
def test_bad_train_flag(tmp_path, flags, words):
    assert_one_line_error(sharp(*train_args(tmp_path, "x", *flags)), 2, *words)
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_command():
    assert_one_line_error(sharp("trian"), 2, "trian")


def test_torchvision_set_missing_from_data_dir(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    line = assert_one_line_error(
        sharp(*train_args(tmp_path, "x", "--dataset", "cifar10", "--data-dir", empty)), 2,
        "cifar10", str(empty), "--download")
    assert "not found" in line


def test_run_exists_without_resume(run_copy):
    assert_one_line_error(sharp(*train_args(run_copy, "r", *STEPS)), 2, "already exists",
                          "--resume")


def test_resume_with_other_settings(run_copy):
    """The run was moved (other folders: fine) and --lr changed (not fine)."""
    line = assert_one_line_error(sharp(*train_args(run_copy, "r", *STEPS, "--lr", "0.1",
                                                   "--resume")), 2, "--resume", "--lr 0.1")
    assert "--reports-dir" not in line and "--checkpoints-dir" not in line


# ---------------------------------------------------------------- missing files and runs

@pytest.mark.parametrize("command", ["spectrum", "eos", "plot", "summarize"])
def test_missing_file(tmp_path, command):
    missing = tmp_path / "no-such-run"
    assert_one_line_error(sharp(command, missing), 2, str(missing))


def test_missing_checkpoint_file(tmp_path):
    assert_one_line_error(sharp("spectrum", tmp_path / "step-00000100.pt"), 2,
                          "step-00000100.pt")


def test_run_without_checkpoints_spectrum(run_copy):
    shutil.rmtree(run_copy / "checkpoints")
    assert_one_line_error(sharp("spectrum", run_copy / "reports" / "r", "--quiet"), 2,
                          "no checkpoints")


def test_run_without_checkpoints_eos(run_copy):
    shutil.rmtree(run_copy / "checkpoints")
    assert_one_line_error(sharp("eos", run_copy / "reports" / "r", "--from-checkpoints"), 2,
                          "no checkpoints")


@pytest.mark.parametrize("command", ["eos", "plot", "summarize"])
def test_metrics_csv_with_missing_columns(run_copy, command):
    metrics = run_copy / "reports" / "r" / "metrics.csv"
    metrics.write_text("step,phase,lr\n0,gd,0.3\n2,gd,0.3\n")
    assert_one_line_error(sharp(command, run_copy / "reports" / "r"), 2, "metrics.csv",
                          "sharpness")


# ---------------------------------------------------------------- bad checkpoint files

def plant(path, kind: str, good_ckpt) -> None:
    data = good_ckpt.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupted":  # the zip's directory intact, the tensors' bytes scrambled
        middle = len(data) // 3
        path.write_bytes(data[:middle] + bytes(256) + data[middle + 256:])
    elif kind == "random-bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    elif kind == "other-program-state-dict":  # loads with weights_only, but is not ours
        torch.save({"linear.weight": torch.zeros(3, 4)}, path)
    elif kind == "other-program-module":  # a pickled nn.Module: needs code to load
        torch.save(torch.nn.Linear(4, 3), path)
    elif kind == "wrong-field-types":
        payload = torch.load(good_ckpt, weights_only=True)
        payload["model"] = "not a state dict"
        torch.save(payload, path)
    else:
        raise ValueError(kind)


BAD_CHECKPOINTS = {
    "truncated": "truncated or corrupted",
    "empty": "truncated or corrupted",
    "corrupted": "fail their checksum",
    "random-bytes": "not a readable checkpoint",
    "other-program-state-dict": "not a sharpcli checkpoint",
    "other-program-module": "torch.nn.modules.linear.Linear",
    "wrong-field-types": "damaged sharpcli checkpoint",
}


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_bad_checkpoint_spectrum(run, tmp_path, kind):
    bad = tmp_path / "step-00000004.pt"
    plant(bad, kind, ckpt(run))
    assert_one_line_error(sharp("spectrum", bad, "--quiet", "--out", tmp_path / "s.csv"), 2,
                          str(bad), BAD_CHECKPOINTS[kind])


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_bad_checkpoint_resume(run_copy, kind):
    """--resume reads the newest checkpoint: a damaged one is named, and nothing is changed."""
    newest = ckpt(run_copy)
    plant(newest, kind, ckpt(run_copy))
    metrics = run_copy / "reports" / "r" / "metrics.csv"
    before = metrics.read_text()
    assert_one_line_error(sharp(*train_args(run_copy, "r", *STEPS, "--resume")), 2,
                          str(newest), BAD_CHECKPOINTS[kind])
    assert metrics.read_text() == before


def test_top_k_above_parameter_count(run):
    assert_one_line_error(sharp("spectrum", ckpt(run), "--top-k", "100000", "--quiet"), 2,
                          "--top-k", "100000")


def test_top_k_above_parameter_count_within_max_iter(run):
    assert_one_line_error(sharp("spectrum", ckpt(run), "--top-k", "1000", "--max-iter", "2000",
                                "--quiet"), 2, "--top-k 1000", "parameters")
