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
