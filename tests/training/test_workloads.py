"""The CIFAR workloads' training paths on small image runs (digits, 8×8): augmentation
reaches the training passes and nothing else, resumes exactly; bf16 reaches the training
passes and nothing else; Eigen-SAM's --eig-mode matters with BatchNorm only; label smoothing
is the loss of the run and of its checkpoints; channels_last keeps the numbers."""

import pandas as pd
import pytest
import torch

import sharpcli
from sharpcli.config import TrainConfig
from sharpcli.formats.checkpoints import list_checkpoints
from sharpcli.hessian.sharpness import measure_sharpness
from sharpcli.training import setup
from sharpcli.training.loop import train
from tests.runners import sharp, train_args

DIGITS_SGD = ["--dataset", "digits", "--model", "cnn", "--optimizer", "sgd", "--batch-size", "32",
              "--momentum", "0.9", "--lr", "0.05"]
MEASURED = ["sharpness", "train_loss", "train_acc", "test_loss", "test_acc"]


def metrics(root, run):
    return pd.read_csv(root / "reports" / run / "metrics.csv").drop(columns="seconds")


def test_training_sees_the_augmentation_and_measurements_do_not(tmp_path):
    """At step 0 both runs hold the same weights: λ₁, losses and accuracies (of the
    un-augmented examples) agree to the bit, while ‖g‖ (of the augmented batch) does not."""
    flags = [*DIGITS_SGD, "--steps", "1", "--sharpness-every", "1"]
    sharp(*train_args(tmp_path, "plain", *flags, "--augment", "none")).ok()
    sharp(*train_args(tmp_path, "aug", *flags, "--augment", "flip-crop-cutout")).ok()
    plain, aug = metrics(tmp_path, "plain"), metrics(tmp_path, "aug")
    assert (plain.loc[0, MEASURED] == aug.loc[0, MEASURED]).all()
    assert plain.loc[0, "grad_norm"] != aug.loc[0, "grad_norm"]
    assert plain.loc[1, "train_loss"] != aug.loc[1, "train_loss"]  # and it trained on them


def test_resume_with_augmentation_is_exact(tmp_path):
    common = [*DIGITS_SGD, "--augment", "flip-crop-cutout", "--sharpness-every", "2",
              "--eval-every", "2", "--checkpoint-every", "4"]
    sharp(*train_args(tmp_path, "full", *common, "--steps", "8")).ok()
    sharp(*train_args(tmp_path, "part", *common, "--steps", "5")).ok()  # stops after step 4's checkpoint
    sharp(*train_args(tmp_path, "part", *common, "--steps", "8", "--resume")).ok()
    pd.testing.assert_frame_equal(metrics(tmp_path, "full"), metrics(tmp_path, "part"))


def test_bf16_training_leaves_lambda_1_in_fp32(tmp_path):
    flags = [*DIGITS_SGD, "--steps", "4", "--sharpness-every", "4", "--eval-every", "4",
             "--checkpoint-every", "4", "--sharpness-tol", "1e-7", "--sharpness-iters", "300"]
    sharp(*train_args(tmp_path, "fp32", *flags)).ok()
    sharp(*train_args(tmp_path, "bf16", *flags, "--precision", "bf16")).ok()
    fp32, bf16 = metrics(tmp_path, "fp32"), metrics(tmp_path, "bf16")
    # step 0, same weights: the fp32 measurements agree to the bit, the bf16 gradient does not
    assert (fp32.loc[0, MEASURED] == bf16.loc[0, MEASURED]).all()
    assert abs(bf16.loc[0, "grad_norm"] / fp32.loc[0, "grad_norm"] - 1) > 1e-5
    # step 4: λ₁ of the bf16-trained weights is the fp32 λ₁ of those weights
    ckpt = sharpcli.load_checkpoint(list_checkpoints(tmp_path / "checkpoints" / "bf16")[-1])
    assert ckpt.step == 4 and ckpt.config["precision"] == "bf16"
    x, y, _, _ = ckpt.data()
    fresh = measure_sharpness(ckpt.model, ckpt.loss_fn, x, y, tol=1e-7, max_iter=300, seed=99)
    assert abs(fresh.value / bf16.loc[1, "sharpness"] - 1) < 1e-5
    assert bf16.loc[1, "train_loss"] != fp32.loc[1, "train_loss"]


def test_eig_mode_changes_batchnorm_nets_only(tmp_path):
    eigen = ["--optimizer", "eigen-sam", "--batch-size", "32", "--rho", "0.05", "--steps", "2",
             "--sharpness-every", "1", "--eval-every", "1"]
    for net, model in [("mlp", ["--dataset", "digits"]),
                       ("bn", ["--dataset", "digits", "--model", "resnet18", "--width", "2"])]:
        for mode in ("eval", "train"):
            sharp(*train_args(tmp_path, f"{net}-{mode}", *model, *eigen, "--eig-mode", mode)).ok()
    pd.testing.assert_frame_equal(metrics(tmp_path, "mlp-eval"), metrics(tmp_path, "mlp-train"))
    bn_eval, bn_train = metrics(tmp_path, "bn-eval"), metrics(tmp_path, "bn-train")
    # step 0 measures the same weights; Eigen-SAM's v, and so ε, come from different Hessians
    assert bn_eval.loc[0, "sharpness"] == bn_train.loc[0, "sharpness"]
    assert bn_eval.loc[0, "alignment"] != bn_train.loc[0, "alignment"]
    assert bn_eval.loc[2, "train_loss"] != bn_train.loc[2, "train_loss"]


def test_label_smoothing_is_the_runs_loss(tmp_path):
    sharp(*train_args(tmp_path, "ls", *DIGITS_SGD, "--loss", "ce", "--label-smoothing", "0.2",
                      "--steps", "1", "--checkpoint-every", "1")).ok()
    ckpt = sharpcli.load_checkpoint(list_checkpoints(tmp_path / "checkpoints" / "ls")[-1])
    out = torch.tensor([[2.0, -1.0, 0.5] + [0.0] * 7])
    log_p = out.log_softmax(-1)
    expected = -(0.8 * log_p[0, 2] + 0.2 * log_p[0].mean())  # (1 − ε)·onehot + ε/C
    assert ckpt.config["label_smoothing"] == 0.2
    assert torch.allclose(ckpt.loss_fn(out, torch.tensor([2])), expected)
    assert not torch.allclose(ckpt.loss_fn(out, torch.tensor([2])),
                              torch.nn.functional.cross_entropy(out, torch.tensor([2])))


def test_channels_last_keeps_the_numbers(tmp_path, monkeypatch):
    """The NHWC layout CUDA runs use, forced on the CPU: the same run to rounding, the same
    checkpoint format (its logic is tested here; the CUDA test below runs it for real)."""
    config = dict(dataset="digits", model="cnn", optimizer="sgd", batch_size=32, lr=0.05,
                  momentum=0.9, train_size=64, test_size=32, width=8, steps=4, sharpness_every=2,
                  eval_every=2, checkpoint_every=4, augment="flip-crop", device="cpu", quiet=True,
                  reports_dir=str(tmp_path / "reports"), checkpoints_dir=str(tmp_path / "checkpoints"))
    train(TrainConfig(**config, run_name="nchw"))
    monkeypatch.setattr(setup, "uses_channels_last", lambda model, device: True)
    train(TrainConfig(**config, run_name="nhwc"))
    nchw, nhwc = metrics(tmp_path, "nchw"), metrics(tmp_path, "nhwc")
    for col in ["grad_norm", *MEASURED]:
        assert ((nchw[col] - nhwc[col]).abs() <= 1e-4 * nchw[col].abs() + 1e-6).all(), col
    ckpt = sharpcli.load_checkpoint(list_checkpoints(tmp_path / "checkpoints" / "nhwc")[-1])
    assert ckpt.config["memory_format"] == "channels_last"
    assert ckpt.model.conv1.weight.is_contiguous()  # rebuilt in the default layout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_channels_last_measures_as_the_cpu_does(tmp_path):
    """On a GPU (channels_last, bf16 training, TF32 allowed by default for convolutions),
    step 0's λ₁ and losses are the CPU's fp32 ones to fp32 rounding: measurements run with
    TF32 off. ResNet-18 of width 4 has BatchNorm and 20 convolutions."""
    flags = ["--dataset", "digits", "--model", "resnet18", "--width", "4", "--optimizer", "sgd",
             "--batch-size", "32", "--steps", "1", "--sharpness-every", "1",
             "--sharpness-tol", "1e-6"]
    sharp(*train_args(tmp_path, "cpu", *flags, "--device", "cpu")).ok()
    sharp(*train_args(tmp_path, "cuda", *flags, "--device", "cuda", "--precision", "bf16")).ok()
    cpu, cuda = metrics(tmp_path, "cpu"), metrics(tmp_path, "cuda")
    for col in MEASURED:
        assert abs(cuda.loc[0, col] - cpu.loc[0, col]) <= 1e-4 * abs(cpu.loc[0, col]) + 1e-6, col
