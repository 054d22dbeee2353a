"""Memory budgets: sizes as users write them, and the vectors they hold."""

import pytest
import torch

from sharpcli.errors import SharpError
from sharpcli.linalg import LinalgInputError, MemoryBudget, human_bytes, parse_memory


@pytest.mark.parametrize("value, expected", [
    (1000, 1000), (2e9, 2_000_000_000), ("2e9", 2_000_000_000), ("800MB", 800_000_000),
    ("1.5GB", 1_500_000_000), ("1.5 gb", 1_500_000_000), ("512MiB", 512 * 2**20),
    ("2GiB", 2 * 2**30), ("10kB", 10_000), ("3KiB", 3072), ("1TB", 10**12), ("64B", 64),
    (" 7 ", 7),
])
def test_sizes_decimal_and_binary(value, expected):
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["", "GB", "1.5G", "2M", "-1MB", "0", 0, -5, "1e400", "lots",
                                   float("nan"), float("inf"), True, None, [1]])
def test_bad_sizes_name_the_value(value):
    with pytest.raises(LinalgInputError) as err:
        parse_memory(value, "max_memory")
    assert isinstance(err.value, SharpError) and isinstance(err.value, ValueError)
    message = str(err.value)
    assert message.startswith("max_memory must be a size") and repr(value) in message
    assert "\n" not in message


def test_human_bytes():
    assert human_bytes(1_500_000_000) == "1.5 GB"
    assert human_bytes(800_000_000) == "800 MB"
    assert human_bytes(12_345) == "12.3 kB"
    assert human_bytes(999) == "999 B"


def test_vectors_and_the_error_naming_the_minimum():
    budget = MemoryBudget.of("1MB")
    assert MemoryBudget.of(None) is None and MemoryBudget.of(budget) is budget
    assert budget.vectors(1000, torch.float64) == 125 and budget.vectors(1000, torch.float32) == 250
    assert budget.require(125, 1000, torch.float64, "why") == 125
    with pytest.raises(LinalgInputError) as err:
        budget.require(126, 1000, torch.float64, "what the minimum is made of")
    assert str(err.value) == ("a budget of 1 MB cannot hold the minimum of 126 vectors (1008000 "
                              "bytes, 1.01 MB) for this problem: what the minimum is made of")
    assert budget.less(25, 1000, torch.float64).vectors(1000, torch.float64) == 100
    assert budget.less(500, 1000, torch.float64).bytes == 0


def test_placement_off_cuda_is_the_operators_device():
    for where in ("auto", "device", "host"):
        assert MemoryBudget(10**9, where).place(torch.device("cpu"), 10**12) == torch.device("cpu")
    with pytest.raises(LinalgInputError, match="where must be one of"):
        MemoryBudget(10**9, "gpu")
