"""One table from Python argument names to flags: library errors name Python arguments
(SharpError.param), the CLI prints the flags."""

import pytest

from sharpcli.cli.names import cli_message, flag
from sharpcli.edges import edge_calculator
from sharpcli.errors import SharpError
from tests.runners import assert_one_line_error, sharp


def test_an_error_names_python_arguments_and_the_cli_flags():
    err = SharpError("{grad_norm} only enters the SAM edge: give {rho} with it {not_a_param}",
                     param=("grad_norm", "rho"))
    assert err.param == "grad_norm"
    assert str(err) == "grad_norm only enters the SAM edge: give rho with it {not_a_param}"
    assert cli_message(err) == "--grad-norm only enters the SAM edge: give --rho with it {not_a_param}"
    plain = SharpError("no argument here {x}")
    assert str(plain) == cli_message(plain) == "no argument here {x}"


def test_the_table_renames_where_flag_and_name_differ():
    assert flag("top_k") == "--top-k"
    assert flag("chunk_size") == "--batch-size"
    assert flag("loss_fn") == "--loss"


def test_the_edge_calculator_speaks_python_and_the_cli_flags():
    with pytest.raises(SharpError, match="^unknown optimizer 'sgdx'") as info:
        edge_calculator(0.1, optimizer="sgdx")
    assert info.value.param == "optimizer"
    assert_one_line_error(sharp("eos", "--lr", "0.1", "--beta1", "0.5"), 2,
                          "--beta1 enters the adaptive edge of --optimizer adam or adamw only")
    assert_one_line_error(sharp("eos", "--lr", "0.1", "--rho", "0.05"), 2,
                          "give --grad-norm with --rho")


def _both(err: SharpError) -> tuple[str, str]:
    """What the library says (Python names) and what the CLI says (flags)."""
    return str(err), cli_message(err)


def test_train_settings_are_refused_by_their_field_names():
    """sharpcli.train's TrainConfig checks name its fields; sharp train says its flags."""
    from sharpcli.config import TrainConfig
    from sharpcli.training.restore import _check_resumable
    from sharpcli.training.setup import validate_config

    with pytest.raises(SharpError) as info:
        validate_config(TrainConfig(optimizer="gd", batch_size=8))
    assert info.value.param == "batch_size"
    assert _both(info.value) == (
        "optimizer=gd is full-batch; drop batch_size or use optimizer=sgd",
        "--optimizer gd is full-batch; drop --batch-size or use --optimizer sgd")
    with pytest.raises(SharpError) as info:
        validate_config(TrainConfig(sharpness_iters=0))
    assert info.value.param == "sharpness_iters"
    assert str(info.value).startswith("sharpness_iters must be positive")
    with pytest.raises(SharpError) as info:
        _check_resumable({"lr": 0.1}, TrainConfig(lr=0.2), "ckpt.pt")
    assert info.value.params == ("resume", "lr")
    assert _both(info.value) == (
        "resume with settings that differ from ckpt.pt: lr 0.2 (run has 0.1)",
        "--resume with settings that differ from ckpt.pt: --lr 0.2 (run has 0.1)")
    assert_one_line_error(sharp("train", "--optimizer", "adam", "--momentum", "0.5"), 2,
                          "--optimizer adam has no --momentum or --nesterov; its momentum is --beta1")


def test_model_source_and_loggers_are_refused_by_their_python_names():
    from sharpcli.spectra.config import ModelSource
    from sharpcli.training.loggers import parse_loggers

    with pytest.raises(SharpError) as info:
        ModelSource(weights="w.pt", check_deterministic=False).validate(1)
    assert info.value.param == "weights"
    assert _both(info.value)[0].startswith(
        "weights, check_deterministic=False apply with model_factory;")
    assert _both(info.value)[1].startswith(
        "--weights, --no-check-deterministic apply with --model-factory;")
    with pytest.raises(SharpError) as info:
        parse_loggers("tensorbored")
    assert info.value.param == "loggers" and str(info.value).startswith("loggers: unknown logger")
    assert_one_line_error(sharp("train", "--log", "tensorbored"), 2,
                          "--log: unknown logger 'tensorbored'")


def test_devices_and_edge_bands_are_refused_by_their_python_names(tmp_path):
    from tests.runners import train_args

    from sharpcli.analysis.eos import check_band
    from sharpcli.device import resolve_device

    with pytest.raises(SharpError) as info:
        resolve_device("tpu")
    assert info.value.param == "device" and str(info.value).startswith("unknown device 'tpu'")
    with pytest.raises(SharpError) as info:
        check_band(1.5)
    assert _both(info.value) == ("band must lie in (0, 1), got 1.5",
                                 "--band must lie in (0, 1), got 1.5")
    assert_one_line_error(sharp(*train_args(tmp_path, "d", "--device", "tpu")), 2,
                          "unknown --device 'tpu'")


def test_imported_objects_are_refused_by_the_argument_that_named_them():
    from sharpcli.workload.imports import build_user_model, resolve_call

    with pytest.raises(SharpError) as info:
        build_user_model("no_colon_here")
    assert info.value.param == "model_factory"
    assert _both(info.value) == (
        "model_factory 'no_colon_here': expected MODULE:CALLABLE, e.g. mymodels:make_net",
        "--model-factory 'no_colon_here': expected MODULE:CALLABLE, e.g. mymodels:make_net")
    with pytest.raises(SharpError) as info:
        resolve_call("ce", "mymodule:loss")
    assert _both(info.value) == ("loss ce and batch_loss: give one of them",
                                 "--loss ce and --batch-loss: give one of them")
